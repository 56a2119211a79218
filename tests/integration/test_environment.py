"""The VMs run your environment: real uv, real PyPI, real installs, the sandbox's VMs in the replicated venv.

One "developer" virtualenv (numpy, pandas, dask[distributed], vmguard and an editable local package, at this
interpreter's versions of everything the two share) and one cache are made once per test session and shared by
the parallel test processes, so a warm run resolves, builds and downloads nothing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from guard.sandbox import SandboxServer, VmRunner, sandbox_client
from guard.sandbox.images import image_for
from sdk.bootstrap import user_data
from sdk.environment import (
    CapturedEnvironment,
    Package,
    build_bundle,
    capture,
    check_versions,
    install,
    prepare_environment,
    ship,
)
from sdk.environment.lock import uv_binary
from sdk.environment.ship import lifecycle_rule, s3_client
from sdk.environment.wheels import source_files
from sdk.errors import SdkError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCAL_PACKAGE = "vmg_localpkg"
PLATFORM_TAG = re.compile(r"^(?:any|(?:manylinux|musllinux)_(\d+)_(\d+)_(\w+)|manylinux(?:1|2010|2014)_(\w+)"
                          r"|linux_(\w+))$")


@dataclass(frozen=True)
class Developer:
    """The developer's environment the tests replicate."""

    python: Path
    workdir: Path
    env: CapturedEnvironment
    cache: Path
    venvs: Path


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every test process of this session shares (pytest-xdist workers have one basetemp each)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "vmguard-environment"


def _write_local_package(source: Path) -> None:
    (source / LOCAL_PACKAGE).mkdir(parents=True, exist_ok=True)
    (source / LOCAL_PACKAGE / "__init__.py").write_text("VALUE = 'from the editable source'\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{LOCAL_PACKAGE.replace("_", "-")}"\nversion = "0.2.0"\n'
        'dependencies = ["six"]\n\n[tool.setuptools]\npackages = ["vmg_localpkg"]\n')


@pytest.fixture(scope="session")
def developer(tmp_path_factory: pytest.TempPathFactory) -> Developer:
    shared = _shared_dir(tmp_path_factory)
    venv, workdir, source = shared / "developer-venv", shared / "work", shared / "src" / "vmg-localpkg"
    with _exclusive(shared / "developer.lock"):
        if not (venv / "ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            _write_local_package(source)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "helpers.py").write_text("VALUE = 'helpers from the working directory'\n")
            (workdir / "mypkg" / "sub").mkdir(parents=True, exist_ok=True)
            (workdir / "mypkg" / "__init__.py").write_text("")
            (workdir / "mypkg" / "sub" / "__init__.py").write_text("VALUE = 'a package of the working directory'\n")
            # this interpreter's versions of everything the two environments share (dask, cloudpickle, vmguard's
            # dependencies): the client here and the VMs replicated from that venv must match
            pins = shared / "this-interpreter.txt"
            pins.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in importlib.metadata.distributions()
                                    if d.metadata["Name"] and d.metadata["Name"].lower() != "vmguard"))
            uv = uv_binary()
            subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
            # vmguard editable from a copy of this checkout, so that edits made while the tests run do not change
            # the environment under them
            vmguard_source = shared / "src" / "vmguard"
            shutil.rmtree(vmguard_source, ignore_errors=True)
            for relative in source_files(ROOT):
                (vmguard_source / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, vmguard_source / relative)
            subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                            "--constraint", str(pins), "numpy", "pandas", "dask[distributed]", "-e",
                            str(vmguard_source), "-e", str(source)], check=True, cwd=shared)
            (venv / "ready").write_text("")
    python = venv / "bin" / "python"
    return Developer(python=python, workdir=workdir, env=capture(python, workdir), cache=shared / "cache",
                     venvs=shared / "venvs")


def _version_in(python: Path, package: str) -> str:
    return subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_developer_environment_is_captured_and_classified(developer: Developer) -> None:
    env = developer.env
    assert env.python_minor == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert env.get("vmguard").kind == "editable" and env.get("vmg-localpkg").kind == "editable"
    assert {env.get(name).kind for name in ("numpy", "pandas", "dask", "distributed")} == {"index"}
    assert [m.relative_to(developer.workdir).as_posix() for m in env.modules] == [
        "helpers.py", "mypkg/__init__.py", "mypkg/sub/__init__.py"]
    assert env.get("numpy").version == _version_in(developer.python, "numpy")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_a_lock_for_each_architecture_pins_only_that_platforms_wheels(developer: Developer, arch: str) -> None:
    bundle = build_bundle(developer.env, arch, cache=developer.cache)
    manifest = json.loads((bundle.path.parent / "bundle.json").read_text())
    assert manifest["platform"] == f"{arch}-manylinux_2_28" and manifest["python"] == developer.env.python_minor

    # exact: every installed version that the VMs get is the installed one; nothing widened
    for package in developer.env.of_kind("index"):
        if package.name in bundle.packages:
            assert bundle.packages[package.name] == package.version, package.name
    assert {"numpy", "pandas", "dask", "distributed", "vmguard", "vmg-localpkg", "vmguard-workdir"} <= \
        set(bundle.packages)
    for line in bundle.requirements.splitlines():
        if line and not line.startswith(("#", "--index-url ", "--extra-index-url ")):
            assert "==" in line or " @ ./wheels/" in line, line

    # every pinned package has a wheel, and every wheel is for the target (or for any platform)
    compiled = 0
    for name, files in manifest["files"].items():
        assert files, f"{name} has no wheel for {arch}"
        for file in files:
            platforms = file[:-len(".whl")].split("-")[-1].split(".")
            for tag in platforms:
                match = PLATFORM_TAG.match(tag)
                assert match, f"{file}: unexpected platform tag {tag}"
                if tag != "any":
                    compiled += 1
                    assert tag.endswith(arch), f"{file} is not for {arch}"
                    if match.group(1):
                        assert (int(match.group(1)), int(match.group(2))) <= (2, 28), file
    assert compiled >= 2  # numpy and pandas at least
    assert any("numpy" in f and arch in f for f in manifest["files"]["numpy"])

    # an unchanged environment is not resolved or built again
    started = time.monotonic()
    again = build_bundle(developer.env, arch, cache=developer.cache)
    assert again.reused and again.hash == bundle.hash and time.monotonic() - started < 5


def test_a_captured_environment_installs_into_a_brand_new_venv(developer: Developer, tmp_path: Path) -> None:
    bundle = build_bundle(developer.env, "x86_64", cache=developer.cache)
    python = install(bundle.path, tmp_path / "vm-venv", developer.env.python_minor, expected_hash=bundle.hash)
    assert not list((tmp_path / "vm-venv").rglob("*.pyc"))  # no bytecode compiled at install
    probe = ("import json, sys, importlib.metadata as m, numpy, pandas, dask, distributed, vmg_localpkg, helpers, "
             "mypkg.sub, sdk.vm; print(json.dumps({'prefix': sys.prefix, 'numpy': numpy.__version__, 'pandas': "
             "pandas.__version__, 'dask': dask.__version__, 'local': vmg_localpkg.VALUE, 'local_file': "
             "vmg_localpkg.__file__, 'helpers': helpers.VALUE, 'sdk': sdk.vm.__file__, 'mypkg': mypkg.sub.VALUE}))")
    seen = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                                     cwd=tmp_path, env={"PATH": os.environ["PATH"]}).stdout)
    assert Path(seen["prefix"]) == tmp_path / "vm-venv"
    assert seen["numpy"] == developer.env.get("numpy").version
    assert seen["pandas"] == developer.env.get("pandas").version
    assert seen["dask"] == developer.env.get("dask").version
    # the editable package and the SDK came as wheels: installed in the venv, not imported from their sources
    assert seen["local"] == "from the editable source" and seen["local_file"].startswith(str(tmp_path / "vm-venv"))
    assert seen["sdk"].startswith(str(tmp_path / "vm-venv")) and seen["helpers"].startswith("helpers from")
    assert seen["mypkg"] == "a package of the working directory"
    # installing the same bundle again keeps the finished venv
    started = time.monotonic()
    assert install(bundle.path, tmp_path / "vm-venv", developer.env.python_minor, expected_hash=bundle.hash) == python
    assert time.monotonic() - started < 2


def _compiled_package(source: Path) -> Package:
    (source / "fastmod.c").parent.mkdir(parents=True, exist_ok=True)
    (source / "fastmod.c").write_text(
        '#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "fastmod", NULL, -1, NULL};\n'
        "PyMODINIT_FUNC PyInit_fastmod(void) { return PyModule_Create(&m); }\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "fastmod"\nversion = "1.0"\n')
    (source / "setup.py").write_text(
        "from setuptools import Extension, setup\nsetup(ext_modules=[Extension('fastmod', ['fastmod.c'])])\n")
    return Package("fastmod", "1.0", "editable", source=str(source))


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler to build the compiled local package")
def test_a_compiled_local_package_is_refused_for_another_architecture(tmp_path: Path) -> None:
    env = CapturedEnvironment(python=".".join(map(str, sys.version_info[:3])), workdir=tmp_path,
                              packages=(_compiled_package(tmp_path / "fastmod"),))
    with pytest.raises(SdkError) as caught:
        build_bundle(env, "aarch64", cache=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("local wheel(s) that cannot run on the Linux aarch64 VMs: fastmod (fastmod-1.0-")
    assert "linux_x86_64.whl" in message and "is built for Linux x86_64, not aarch64" in message
    assert "cibuildwheel" in message and "launch x86_64 VMs (arm=False)" in message


def test_a_package_without_a_wheel_for_the_target_is_reported_before_launch(tmp_path: Path) -> None:
    # intel-openmp publishes wheels for x86_64 Linux and Windows only, and no sdist
    env = CapturedEnvironment(python=".".join(map(str, sys.version_info[:3])), workdir=tmp_path,
                              packages=(Package("intel-openmp", "2026.2.0", "index"),
                                        Package("six", "1.17.0", "index")))
    with pytest.raises(SdkError) as caught:
        build_bundle(env, "aarch64", cache=tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith("no wheel for Linux aarch64 (manylinux_2_28, Python 3.")
    assert "intel-openmp==2026.2.0 (wheels only for manylinux" in message
    assert "launch x86_64 VMs (arm=False)" in message and "six" not in message
    # the same environment for x86_64 VMs is fine
    assert build_bundle(env, "x86_64", cache=tmp_path / "cache").packages["intel-openmp"] == "2026.2.0"
    # a conda build of a version PyPI never had
    conda = CapturedEnvironment(python=env.python, workdir=tmp_path, packages=(Package("six", "0.0.1", "conda"),))
    with pytest.raises(SdkError, match=r"^six==0.0.1 came from conda and PyPI does not have it"):
        build_bundle(conda, "x86_64", cache=tmp_path / "cache")


def test_a_critical_version_mismatch_names_the_package_and_both_versions(tmp_path: Path) -> None:
    """A real worker from a venv with another cloudpickle joins a real scheduler of this interpreter."""
    uv = uv_binary()
    other = tmp_path / "other"
    here = {name: importlib.metadata.version(name) for name in ("dask", "distributed", "msgpack", "cloudpickle")}
    older = "3.0.0" if here["cloudpickle"] != "3.0.0" else "3.1.0"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(other)], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(other / "bin" / "python"),
                    f"dask=={here['dask']}", f"distributed=={here['distributed']}", f"msgpack=={here['msgpack']}",
                    f"cloudpickle=={older}"], check=True)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster, \
            Client(cluster) as client:
        check_versions(client)  # this interpreter everywhere: nothing to say
        worker = subprocess.Popen([str(other / "bin" / "python"), "-m", "distributed.cli.dask_worker",
                                   cluster.scheduler_address, "--nthreads", "1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            with pytest.raises(SdkError) as caught:
                check_versions(client)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(rf"cloudpickle is {re.escape(here['cloudpickle'])} here but {re.escape(older)} on worker "
                    r"tcp://127\.0\.0\.1:\d+: the client and the VMs must run the same cloudpickle; install "
                    rf"cloudpickle=={re.escape(older)} here, or close this cluster and launch it again", message)


def test_a_small_environment_goes_inline_and_the_user_data_installs_it(tmp_path: Path) -> None:
    """The user-data's own install steps, run by bash (the VM's paths moved into a temporary directory)."""
    env = CapturedEnvironment(python=".".join(map(str, sys.version_info[:3])), workdir=tmp_path,
                              packages=(Package("six", "1.17.0", "index"),))
    ref = ship(build_bundle(env, "x86_64", cache=tmp_path / "cache"), owner="alice")
    assert ref.inline is not None and ref.url is None and ref.size < 2048
    config = {"role": "scheduler", "cluster_id": "vmg-inline", "keepalive_seconds": 60,
              "max_lifetime_seconds": 3600}
    script = user_data(config | {"environment": ref.to_config()}, None)
    lines = script.splitlines()
    steps = lines[next(i for i, line in enumerate(lines) if line.startswith("# the environment")):
                  lines.index("cd /") + 1]
    root = tmp_path / "vm"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "uv").symlink_to(uv_binary())  # an image with uv already there: nothing downloaded
    body = "\n".join(steps).replace("/opt/vmguard", str(root))
    program = ("set -u\nshutdown() { echo \"shutdown $*\"; }\n" + body +
               f"\n{root}/env/bin/python -c 'import six, sys; print(six.__version__, sys.prefix)'\n")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_CACHE_DIR")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shutdown" not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"1.17.0 {root / 'env'}"


def test_a_large_environment_is_shipped_to_s3_encrypted_tagged_and_expiring(developer: Developer,
                                                                          sandbox: SandboxServer) -> None:
    sandbox.reset()
    s3 = s3_client("us-east-1")
    s3.create_bucket(Bucket="team-bucket")
    others = {"ID": "logs-expire", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    s3.put_bucket_lifecycle_configuration(Bucket="team-bucket", LifecycleConfiguration={"Rules": [others]})

    ref = prepare_environment(arch="x86_64", owner="alice@example.com", s3=s3, location="s3://team-bucket/envs/",
                              boot_timeout_seconds=300, environment=developer.env, cache=developer.cache)
    assert ref.inline is None and ref.uploaded and ref.s3_uri == f"s3://team-bucket/envs/env-{ref.hash}.tar.gz"
    key = ref.s3_uri.split("/", 3)[3]
    head = s3.head_object(Bucket="team-bucket", Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="team-bucket", Key=key)["TagSet"]}
    assert tags == {"guard:managed": "true", "owner": "alice@example.com", "vmguard:env-hash": ref.hash}
    rules = s3.get_bucket_lifecycle_configuration(Bucket="team-bucket")["Rules"]
    assert {r["ID"] for r in rules} == {"logs-expire", lifecycle_rule("envs/")["ID"]}
    ours = next(r for r in rules if r["ID"] != "logs-expire")
    assert ours["Expiration"] == {"Days": 7} and ours["Filter"]["And"]["Prefix"] == "envs/"

    # the VM's way in: a presigned GET that expires (2 × boot timeout), no credentials needed
    assert "X-Amz-Expires=600" in ref.url
    with urllib.request.urlopen(ref.url, timeout=30) as response:
        assert hashlib.sha256(response.read()).hexdigest() == ref.hash
    # unchanged: not uploaded again
    again = prepare_environment(arch="x86_64", owner="alice@example.com", s3=s3,
                                location="s3://team-bucket/envs/", environment=developer.env, cache=developer.cache)
    assert again.reused and not again.uploaded and again.hash == ref.hash
    with pytest.raises(SdkError, match="VMGUARD_ENV_S3"):
        ship(build_bundle(developer.env, "x86_64", cache=developer.cache), owner="alice")


@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")  # numpy: on the VMs, not here
def test_sandbox_vms_run_in_the_replicated_environment(developer: Developer, sandbox: SandboxServer,
                                                       tmp_path: Path) -> None:
    sandbox.reset()
    region, vm_type = "us-east-1", "m7g.large"
    s3 = s3_client(region)
    s3.create_bucket(Bucket="team-bucket")
    ref = prepare_environment(arch="aarch64", owner="alice", s3=s3, location="s3://team-bucket/vmguard-envs/",
                              environment=developer.env, cache=developer.cache)
    config = {"role": "scheduler", "cluster_id": "vmg-replicated", "scheduler_port": 8786, "dashboard_port": None,
              "keepalive_seconds": 120, "idle_timeout_seconds": None, "max_lifetime_seconds": 900,
              "log_level": "INFO", "nthreads": 1, "memory_limit": "auto", "environment": ref.to_config()}
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", region)

    def launch(script: str) -> str:
        return ec2.run_instances(ImageId=image_for(vm_type), InstanceType=vm_type, MinCount=1, MaxCount=1,
                                 UserData=script)["Instances"][0]["InstanceId"]

    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path, env_dir=developer.venvs) as runner:
        scheduler_id = launch(user_data(config, None))
        private = ec2.describe_instances(InstanceIds=[scheduler_id])["Reservations"][0]["Instances"][0]
        worker_id = launch(user_data(config | {"role": "worker"}, f"{private['PrivateIpAddress']}:8786"))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(
                p.alive for p in runner.processes().values()) or len(runner.processes()) < 2:
            assert time.monotonic() < deadline, "the VMs did not start: " + "".join(
                path.read_text()[-2000:] for path in tmp_path.glob("*.log"))
            time.sleep(0.25)
        address = ec2.describe_instances(InstanceIds=[scheduler_id])["Reservations"][0]["Instances"][0]
        try:
            with Client(f"tcp://{address['PublicIpAddress']}:8786", timeout=30) as client:
                client.wait_for_workers(1, timeout=60)
                versions = check_versions(client)  # the same Python minor, Dask, cloudpickle, msgpack, vmguard

                def where() -> tuple[str, str, str, str, str]:
                    import importlib.metadata as metadata
                    import sys

                    import helpers
                    import mypkg.sub
                    import vmg_localpkg

                    return sys.prefix, metadata.version("numpy"), vmg_localpkg.VALUE, helpers.VALUE, mypkg.sub.VALUE

                prefix, numpy_version, local, helper, package = client.submit(where, pure=False).result(timeout=60)
                scheduler_prefix = client.run_on_scheduler(lambda: __import__("sys").prefix)
        finally:
            ec2.terminate_instances(InstanceIds=[scheduler_id, worker_id])
    venv = developer.venvs / ref.hash[:32]
    assert Path(prefix) == venv and Path(scheduler_prefix) == venv and prefix != sys.prefix
    assert numpy_version == developer.env.get("numpy").version
    assert local == "from the editable source" and helper.startswith("helpers from")
    assert package == "a package of the working directory"
    worker_versions = next(iter(versions["workers"].values()))["packages"]
    assert worker_versions["vmguard"] == "0.1.0" and worker_versions["numpy"] == numpy_version


def test_a_sandbox_vm_whose_environment_cannot_be_installed_powers_off(sandbox: SandboxServer,
                                                                       tmp_path: Path) -> None:
    sandbox.reset()
    s3 = s3_client("us-east-1")
    s3.create_bucket(Bucket="team-bucket")
    s3.put_object(Bucket="team-bucket", Key="envs/env-other.tar.gz", Body=b"not the bundle the VM expects")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "team-bucket", "Key": "envs/env-other.tar.gz"})
    environment = {"hash": "0" * 64, "python": "3.11", "arch": "x86_64", "platform": "x86_64-manylinux_2_28",
                   "uv": "0.13.9", "url": url}
    config = {"role": "scheduler", "cluster_id": "vmg-badenv", "keepalive_seconds": 60, "max_lifetime_seconds": 600,
              "environment": environment}
    ec2 = sandbox_client(sandbox.endpoint_url, "ec2", "us-east-1")
    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path, env_dir=tmp_path / "venvs"):
        instance_id = ec2.run_instances(ImageId=image_for("m5.large"), InstanceType="m5.large", MinCount=1,
                                        MaxCount=1, UserData=user_data(config, None))["Instances"][0]["InstanceId"]
        deadline = time.monotonic() + 60
        while ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"][
                "Name"] != "terminated":
            assert time.monotonic() < deadline, "the VM whose install failed was not terminated"
            time.sleep(0.2)
    log = (tmp_path / f"{instance_id}.log").read_text()
    assert "installing the environment 000000000000 failed" in log and "sha256" in log and "powering off" in log

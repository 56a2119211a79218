"""The environment module's pure parts: classification of installed distributions (PEP 610), lock-file detection,
user-data with an environment, the bundle's format, the critical packages comparison. No network here."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from sdk.bootstrap import MAX_USER_DATA_BYTES, agent_config, read_config, read_inline_bundle, user_data
from sdk.environment.bundle import _write_archive
from sdk.environment.capture import canonical, capture, find_lock_file, is_pinned
from sdk.environment.lock import _platform_problems, python_platform
from sdk.environment.ship import lifecycle_rule, object_tags, parse_location
from sdk.environment.versions import compare_versions
from sdk.environment.wheels import LocalWheel, modules_wheel, normalize_arch, source_files
from sdk.errors import SdkError

CONFIG = {"role": "scheduler", "cluster_id": "vmg-envtest", "scheduler_port": 8786, "dashboard_port": 8787,
          "keepalive_seconds": 120, "idle_timeout_seconds": None, "max_lifetime_seconds": 3600,
          "log_level": "INFO", "nthreads": None, "memory_limit": "auto"}


def _dist(site: Path, name: str, version: str, *, requires: tuple[str, ...] = (), installer: str = "uv",
          direct_url: dict | None = None) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "INSTALLER").write_text(installer + "\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def test_installed_distributions_are_classified_by_where_they_came_from(tmp_path: Path) -> None:
    site = tmp_path / "prefix" / "site-packages"
    source = tmp_path / "src" / "mylib"
    source.mkdir(parents=True)
    _dist(site, "pandas", "2.2.3", requires=("numpy>=1.26", "tzdata>=2022.7",
                                             "pyarrow>=10; extra == 'parquet'", "appnope; sys_platform == 'nt'"))
    _dist(site, "numpy", "2.1.0")
    _dist(site, "tzdata", "2025.1")
    _dist(site, "My_Lib", "0.3.0", direct_url={"url": source.as_uri(), "dir_info": {"editable": True}})
    _dist(site, "plain-local", "1.0", direct_url={"url": source.as_uri(), "dir_info": {}})
    _dist(site, "fromgit", "0.1", direct_url={"url": "https://github.com/example/fromgit.git",
                                              "vcs_info": {"vcs": "git", "commit_id": "a" * 40}})
    _dist(site, "wheelfile", "1.2", direct_url={"url": (tmp_path / "wheelfile-1.2-py3-none-any.whl").as_uri(),
                                                "archive_info": {}})
    _dist(site, "remote", "3.0", direct_url={"url": "https://example.com/remote-3.0.tar.gz", "archive_info": {}})
    _dist(site, "scipy", "1.14.0", installer="conda")
    (tmp_path / "prefix" / "conda-meta").mkdir()
    for name in ("libgdal", "scipy", "python"):
        (tmp_path / "prefix" / "conda-meta" / f"{name}-1.0-0.json").write_text(json.dumps({"name": name}))

    env = capture(workdir=tmp_path, paths=[str(site)])

    kinds = {p.name: p.kind for p in env.packages}
    assert kinds == {"pandas": "index", "numpy": "index", "tzdata": "index", "my-lib": "editable",
                     "plain-local": "local", "fromgit": "vcs", "wheelfile": "archive", "remote": "archive",
                     "scipy": "conda"}
    assert env.get("My_Lib").source == str(source)
    assert env.get("fromgit").requirement() == f"fromgit @ git+https://github.com/example/fromgit.git@{'a' * 40}"
    assert env.get("remote").requirement() == "remote @ https://example.com/remote-3.0.tar.gz"
    assert env.get("wheelfile").is_local_file and not env.get("remote").is_local_file
    assert env.get("numpy").requirement() == "numpy==2.1.0"
    # pandas' dependencies are not asked for (they come with it); an extra-only or other-platform one is no edge
    assert env.get("pandas").requires == ("numpy", "tzdata")
    assert {p.name for p in env.leaves()} == set(kinds) - {"numpy", "tzdata"}
    assert env.conda_system == ("libgdal",)
    assert env.notes and "libgdal" in env.notes[0]


def test_the_running_interpreter_is_captured_with_vmguard_as_an_editable_install(tmp_path: Path) -> None:
    env = capture(workdir=tmp_path)
    vmguard = env.get("vmguard")
    assert vmguard is not None and vmguard.kind == "editable"
    assert Path(vmguard.source, "sdk", "environment", "capture.py").is_file()
    assert env.python_minor.count(".") == 1 and env.get("distributed").kind == "index"


def test_working_directory_modules_and_lock_files(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("VALUE = 42\n")
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "not-a-module.py").write_text("")
    (tmp_path / "requirements.txt").write_text("numpy>=2\n")
    env = capture(workdir=tmp_path, paths=[])
    assert [m.name for m in env.modules] == ["helpers.py"]
    assert env.lock_file is None  # a requirements file with ranges is not a lock

    (tmp_path / "requirements.txt").write_text("# pinned\nnumpy==2.1.0  # the math\npandas[parquet]==2.2.3 ; "
                                               "python_version >= '3.10'\n-e ./mylib\nsix @ https://x/six.whl\n")
    assert find_lock_file(tmp_path) == tmp_path / "requirements.txt"
    (tmp_path / "uv.lock").write_text("version = 1\n")
    assert find_lock_file(tmp_path) == tmp_path / "uv.lock"
    assert not is_pinned("numpy\n") and not is_pinned("") and is_pinned("numpy===2.1.0\n")


def test_the_modules_wheel_is_a_valid_pure_wheel(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("VALUE = 42\n")
    wheel = modules_wheel((tmp_path / "helpers.py",), tmp_path, tmp_path)
    assert wheel.pure and wheel.name == "vmguard-workdir"
    with zipfile.ZipFile(wheel.path) as archive:
        names = archive.namelist()
        record = archive.read(next(n for n in names if n.endswith("RECORD"))).decode()
        data = archive.read("helpers.py")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert f"helpers.py,sha256={digest},{len(data)}" in record
    (tmp_path / "again").mkdir()
    again = modules_wheel((tmp_path / "helpers.py",), tmp_path / "again", tmp_path)
    assert again.path.read_bytes() == wheel.path.read_bytes()  # same modules, same wheel, same hash


def test_a_wheel_tells_pure_from_compiled() -> None:
    assert LocalWheel("a", "1", Path("a-1-py3-none-any.whl"), "").pure
    compiled = LocalWheel("b", "1", Path("b-1-cp311-cp311-linux_x86_64.whl"), "")
    assert not compiled.pure and compiled.tags == ("cp311", "cp311", "linux_x86_64")


def test_architectures_and_platforms() -> None:
    assert normalize_arch("arm64") == "aarch64" and normalize_arch("AMD64") == "x86_64"
    assert python_platform("arm64") == "aarch64-manylinux_2_28"
    with pytest.raises(SdkError, match="x86_64 or aarch64"):
        normalize_arch("riscv64")


def test_source_files_leave_out_caches_and_virtualenvs(tmp_path: Path) -> None:
    for relative in ("pkg/__init__.py", "pyproject.toml", ".venv/lib/x.py", "pkg/__pycache__/a.pyc",
                     "build/lib/pkg/__init__.py", "pkg.egg-info/PKG-INFO"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    assert [str(p) for p in source_files(tmp_path)] == ["pkg/__init__.py", "pyproject.toml"]


def test_the_bundle_archive_is_reproducible(tmp_path: Path) -> None:
    wheel = tmp_path / "w-1-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    _write_archive(first, "six==1.17.0\n", {"k": 1}, [wheel])
    _write_archive(second, "six==1.17.0\n", {"k": 1}, [wheel])
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["requirements.txt", "manifest.json", "wheels/w-1-py3-none-any.whl"]
        assert all(member.mtime == 0 and member.uid == 0 for member in tar.getmembers())


def _environment(**overrides) -> dict:
    return {"hash": "ab" * 32, "python": "3.11", "arch": "x86_64", "platform": "x86_64-manylinux_2_28",
            "uv": "0.13.9"} | overrides


def test_user_data_with_an_inline_environment(tmp_path: Path) -> None:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        info = tarfile.TarInfo("requirements.txt")
        info.size = 12
        tar.addfile(info, io.BytesIO(b"six==1.17.0\n"))
    environment = _environment(inline=base64.b64encode(payload.getvalue()).decode())
    script = user_data(CONFIG | {"environment": environment}, None)

    assert read_inline_bundle(script) == payload.getvalue()
    config = read_config(script)
    assert config["environment"]["inline"] is True and config["environment"]["hash"] == "ab" * 32
    assert script.count(environment["inline"][:60]) == 1  # the payload once, not in the config line or the agent's
    agent_line = next(line for line in script.splitlines() if " -m sdk.vm " in line)
    assert agent_line.startswith("/opt/vmguard/env/bin/python -m sdk.vm")
    assert json.loads(agent_line.split("--config ", 1)[1].split("' --host", 1)[0].strip("'"))["environment"] == \
        {"hash": "ab" * 32}
    assert "uv venv --quiet --no-project --clear --python 3.11 /opt/vmguard/env" in script
    assert "uv pip sync --quiet --python /opt/vmguard/env/bin/python requirements.txt" in script
    assert "--compile-bytecode" not in script
    assert f"echo '{'ab' * 32}  bundle.tar.gz' | sha256sum -c -" in script
    if shutil.which("bash"):
        (tmp_path / "ud.sh").write_text(script)
        assert subprocess.run(["bash", "-n", str(tmp_path / "ud.sh")]).returncode == 0


def test_user_data_with_an_s3_environment_and_without_one() -> None:
    url = "https://team-bucket.s3.amazonaws.com/envs/env-x.tar.gz?X-Amz-Expires=1200&X-Amz-Signature=abc"
    script = user_data(CONFIG | {"environment": _environment(url=url)}, None)
    assert f"-o bundle.tar.gz '{url}'" in script
    assert read_inline_bundle(script) is None and read_config(script)["environment"]["url"] == url
    assert script.count(url) == 2  # the config line and the download, not the agent's command
    plain = user_data(CONFIG, None)
    assert "python3 -m sdk.vm" in plain and "uv" not in plain
    assert agent_config(CONFIG) == CONFIG
    with pytest.raises(ValueError, match="hash"):
        user_data(CONFIG | {"environment": {"python": "3.11", "uv": "0.13.9", "url": url}}, None)
    with pytest.raises(ValueError, match="presigned 'url' or an 'inline'"):
        user_data(CONFIG | {"environment": _environment()}, None)
    with pytest.raises(ValueError, match="above EC2"):
        user_data(CONFIG | {"environment": _environment(inline="A" * MAX_USER_DATA_BYTES)}, None)


def test_s3_locations_tags_and_the_lifecycle_rule() -> None:
    assert parse_location("s3://team-bucket/vmguard-envs") == ("team-bucket", "vmguard-envs/")
    assert parse_location("s3://team-bucket") == ("team-bucket", "")
    with pytest.raises(SdkError, match="s3://bucket/prefix/"):
        parse_location("team-bucket/envs")
    assert object_tags("Alice <a@x.org>", "h") == {"guard:managed": "true", "owner": "Alice _a@x.org_",
                                                   "vmguard:env-hash": "h"}
    rule = lifecycle_rule("vmguard-envs/")
    assert rule["Filter"]["And"]["Prefix"] == "vmguard-envs/" and rule["Expiration"] == {"Days": 7}


def test_uv_errors_name_the_packages_without_a_wheel_for_the_target() -> None:
    stderr = ("error: No solution found when resolving dependencies\n  cause: Because intel-openmp==2026.2.0 has no "
              "wheels with a matching platform tag (e.g., `manylinux_2_28_aarch64`) and you require "
              "intel-openmp==2026.2.0, we can conclude that your requirements are unsatisfiable.\n\nhint: Wheels are "
              "available for `intel-openmp` (v2026.2.0) on the following platforms: `manylinux_2_28_x86_64`, "
              "`win_amd64`\n")
    assert _platform_problems(stderr) == {"intel-openmp": ("2026.2.0", "manylinux_2_28_x86_64, win_amd64")}
    assert _platform_problems("error: something else") == {}


def _versions(**worker_packages) -> dict:
    packages = {"python": "3.11.7.final.0", "dask": "2026.8.0", "distributed": "2026.8.0", "msgpack": "1.2.4",
                "cloudpickle": "3.1.3", "vmguard": "0.1.0"}
    return {"client": {"packages": packages}, "scheduler": {"packages": packages},
            "workers": {"tcp://10.0.0.5:40000": {"packages": packages | worker_packages},
                        "tcp://10.0.0.6:40000": {"packages": packages | worker_packages}}}


def test_critical_packages_must_match_exactly() -> None:
    compare_versions(_versions())
    compare_versions(_versions(python="3.11.9.final.0", tornado="1.0"))  # same minor; others do not count
    with pytest.raises(SdkError) as caught:
        compare_versions(_versions(cloudpickle="3.0.0"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cloudpickle is 3.1.3 here but 3.0.0 on worker tcp://10.0.0.5:40000 (and 1 more VM(s))")
    assert "install cloudpickle==3.0.0 here" in message
    with pytest.raises(SdkError, match=r"^Python is 3.11 here but 3.12 on worker .*use a Python 3.12 environment"):
        compare_versions(_versions(python="3.12.1.final.0"))
    with pytest.raises(SdkError, match=r"^vmguard is 0.1.0 here but missing on worker"):
        compare_versions(_versions(vmguard=None))


def test_canonical_names() -> None:
    assert canonical("My_Lib.Extra") == "my-lib-extra"


def test_the_benchmark_replaces_only_its_own_results_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # bench/ is not an installed package
    from bench.env_bench import HEADING, table, write_section

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\nintro\n\n## Scan\n\nscan numbers\n\n## Launch\n\nlaunch numbers\n")
    body = table([("install into a new venv", "uv", 12.34, 1.5), ("unchanged environment", "vmguard", None, 0.2)])
    assert "| install into a new venv | uv | 12.3 | 1.5 |" in body
    assert "| unchanged environment | vmguard | — | 0.2 |" in body
    write_section(results, HEADING, "first\n\n" + body)
    write_section(results, HEADING, "second")
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n## Scan\n\nscan numbers\n\n## Launch\n\nlaunch numbers\n")
    assert text.count(HEADING) == 1 and text.endswith(f"{HEADING}\n\nsecond\n") and "first" not in text
    # in the middle of the file, too
    results.write_text(f"# B\n\n## Scan\n\nscan\n\n{HEADING}\n\nold\n\n## Launch\n\nlaunch\n")
    write_section(results, HEADING, "new")
    assert results.read_text() == f"# B\n\n## Scan\n\nscan\n\n{HEADING}\n\nnew\n\n## Launch\n\nlaunch\n"

"""What the environment refuses before launch, and what it carries: local wheels for another platform, the working
directory's packages, the package index the lock was resolved against. No network here (a local HTTP server
stands in for a private index)."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sdk.environment.bundle import build_bundle
from sdk.environment.capture import MAX_MODULE_BYTES, CapturedEnvironment, Package, capture
from sdk.environment.indexes import VARIABLES, check_indexes, client_indexes
from sdk.environment.install import install
from sdk.environment.lock import uv_binary
from sdk.environment.wheels import build_local_wheels, modules_wheel
from sdk.errors import SdkError

PYTHON = ".".join(map(str, sys.version_info[:3]))


def _local_wheel_env(tmp_path: Path, file_name: str) -> CapturedEnvironment:
    """An environment with one package installed from a wheel file on this machine."""
    wheel = tmp_path / "dist" / file_name
    wheel.parent.mkdir(parents=True, exist_ok=True)
    wheel.write_bytes(b"a wheel")
    package = Package(file_name.split("-")[0], file_name.split("-")[1], "archive", source=str(wheel))
    return CapturedEnvironment(python=PYTHON, workdir=tmp_path, packages=(package,))


def _refusal(tmp_path: Path, file_name: str, arch: str) -> str:
    env = _local_wheel_env(tmp_path, file_name)
    with pytest.raises(SdkError) as caught:
        build_local_wheels(env, arch, tmp_path / "out", "uv")
    message = str(caught.value)
    assert "\n" not in message and file_name in message
    return message


@pytest.mark.parametrize("file_name", ["fastmod-1.0-cp311-cp311-macosx_14_0_arm64.whl",
                                       "fastmod-1.0-cp311-cp311-win_amd64.whl",
                                       "fastmod-1.0-cp311-cp311-macosx_10_9_x86_64.macosx_11_0_arm64.whl"])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_a_local_wheel_for_another_os_is_refused_whatever_this_machine_is(tmp_path: Path, file_name: str,
                                                                        arch: str) -> None:
    message = _refusal(tmp_path, file_name, arch)
    assert f"cannot run on the Linux {arch} VMs" in message and "not Linux" in message
    assert "cibuildwheel" in message and "publish" in message


@pytest.mark.parametrize(("file_name", "arch", "reason"), [
    ("fastmod-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", "x86_64",
     "built for Linux aarch64, not x86_64"),
    ("fastmod-1.0-cp311-cp311-linux_x86_64.whl", "aarch64", "built for Linux x86_64, not aarch64"),
    ("fastmod-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "x86_64", "musl"),
    ("fastmod-1.0-cp311-cp311-manylinux_2_39_x86_64.whl", "x86_64", "needs glibc 2.39"),
])
def test_a_local_linux_wheel_for_other_vms_is_refused(tmp_path: Path, file_name: str, arch: str,
                                                      reason: str) -> None:
    message = _refusal(tmp_path, file_name, arch)
    assert reason in message
    if "not " in reason:  # the other architecture runs it
        other = "x86_64" if arch == "aarch64" else "aarch64"
        assert f"launch {other} VMs (arm={other == 'aarch64'})" in message


@pytest.mark.parametrize(("file_name", "arch"), [
    ("fastmod-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "x86_64"),
    ("fastmod-1.0-cp311-cp311-manylinux2014_aarch64.whl", "aarch64"),
    ("fastmod-1.0-cp311-cp311-linux_aarch64.whl", "arm64"),
    ("fastmod-1.0-cp311-cp311-macosx_14_0_arm64.manylinux_2_28_x86_64.whl", "x86_64"),
    ("purelib-1.0-py3-none-any.whl", "aarch64"),
])
def test_a_local_wheel_for_the_vms_is_carried(tmp_path: Path, file_name: str, arch: str) -> None:
    wheels = build_local_wheels(_local_wheel_env(tmp_path, file_name), arch, tmp_path / "out", "uv")
    assert [w.path.name for w in wheels] == [file_name]


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_the_working_directorys_packages_travel_with_its_modules(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _write(work, {"helpers.py": "VALUE = 1\n",
                  "mypkg/__init__.py": "", "mypkg/sub/__init__.py": "from mypkg.sub.deep import VALUE\n",
                  "mypkg/sub/deep.py": "VALUE = 'deep'\n", "mypkg/sub/not-importable.py": "",
                  "mypkg/__pycache__/stale.py": "", "mypkg/.git/hook.py": "", "mypkg/venv/lib.py": "",
                  "mypkg/data.json": "{}", "mypkg/big.py": "#" * (MAX_MODULE_BYTES + 1),
                  "notapkg/script.py": "", ".venv/lib/site/__init__.py": "", "dist/built/__init__.py": "",
                  "my-folder/__init__.py": "", "otherenv/__init__.py": "", "otherenv/pyvenv.cfg": "",
                  "tests/conftest.py": ""})

    env = capture(workdir=work, paths=[])
    assert [str(m.relative_to(work)) for m in env.modules] == [
        "helpers.py", "mypkg/__init__.py", "mypkg/sub/__init__.py", "mypkg/sub/deep.py"]

    # the modules wheel installs them where a task on a VM imports them
    (tmp_path / "out").mkdir()
    wheel = modules_wheel(env.modules, tmp_path / "out", env.workdir)
    uv = uv_binary()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([uv, "pip", "install", "--quiet", "--offline", "--python", str(python), str(wheel.path)],
                   check=True)
    seen = subprocess.run([str(python), "-c", "import helpers, mypkg.sub; print(mypkg.sub.VALUE, helpers.VALUE)"],
                          capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert seen.split() == ["deep", "1"]


def test_a_package_inside_an_installed_projects_source_is_not_carried_twice(tmp_path: Path) -> None:
    _write(tmp_path, {"pyproject.toml": "", "proj/__init__.py": "", "helpers.py": ""})
    site = tmp_path / "site"
    info = site / "proj-1.0.dist-info"
    _write(info, {"METADATA": "Metadata-Version: 2.1\nName: proj\nVersion: 1.0\n",
                  "direct_url.json": f'{{"url": "{tmp_path.as_uri()}", "dir_info": {{"editable": true}}}}'})
    env = capture(workdir=tmp_path, paths=[str(site)])
    assert env.get("proj").kind == "editable"
    assert [m.name for m in env.modules] == ["helpers.py"]


# -- the package index ----------------------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Locked(_Quiet):
    """An index that wants credentials."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.end_headers()


@contextmanager
def _serve(root: Path, handler: type[http.server.BaseHTTPRequestHandler] = _Quiet) -> Iterator[str]:
    """An HTTP server of ``root`` on localhost; its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _private_index(root: Path, name: str = "vmg-private-pkg", version: str = "1.0") -> None:
    """A PEP 503 index at ``root/simple`` with one pure wheel that PyPI does not have."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {f"{module}.py": b"VALUE = 'from the private index'\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]).encode()
    wheel = root / "files" / f"{module}-{version}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for arcname, data in files.items():
            archive.writestr(arcname, data)
    _write(root, {f"simple/{name}/index.html": f'<a href="../../files/{wheel.name}">{wheel.name}</a>\n'})


def _index_variables(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_lock_names_the_index_it_was_resolved_against_and_the_vm_installs_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _private_index(tmp_path / "index")
    env = CapturedEnvironment(python=PYTHON, workdir=tmp_path, packages=(Package("vmg-private-pkg", "1.0", "index"),))
    with _serve(tmp_path / "index") as base:
        _index_variables(monkeypatch, UV_INDEX_URL=f"{base}/simple")
        bundle = build_bundle(env, "x86_64", cache=tmp_path / "cache")
        assert bundle.requirements.splitlines()[2:] == [f"--index-url {base}/simple", "vmg-private-pkg==1.0"]
        _index_variables(monkeypatch)  # the VM has none of this machine's settings
        python = install(bundle.path, tmp_path / "vm-venv", env.python_minor, expected_hash=bundle.hash)
        seen = subprocess.run([str(python), "-c", "import vmg_private_pkg; print(vmg_private_pkg.VALUE)"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "from the private index"


def test_index_variables_uv_first_then_pip() -> None:
    uv = client_indexes({"UV_INDEX_URL": "https://old.example/simple", "UV_DEFAULT_INDEX": "https://new.example/simple",
                         "UV_INDEX": "team=https://team.example/simple https://more.example/simple",
                         "UV_EXTRA_INDEX_URL": "https://extra.example/simple", "PIP_INDEX_URL": "https://pip.example"})
    assert uv.requirement_lines() == ["--index-url https://new.example/simple",
                                      "--extra-index-url https://team.example/simple",
                                      "--extra-index-url https://more.example/simple",
                                      "--extra-index-url https://extra.example/simple"]
    assert uv.extra[0].name == "team" and uv.extra[0].variable == "UV_INDEX"
    pip = client_indexes({"PIP_INDEX_URL": "https://pip.example/simple", "PIP_EXTRA_INDEX_URL": "https://a/ https://b/"})
    assert pip.arguments() == ["--index-url", "https://pip.example/simple", "--extra-index-url", "https://a/",
                               "--extra-index-url", "https://b/"]
    assert client_indexes({}).arguments() == []


@pytest.mark.parametrize(("variables", "reason"), [
    ({"UV_INDEX_URL": "https://alice:s3cret@pypi.corp.example/simple"}, "carries credentials"),
    ({"PIP_EXTRA_INDEX_URL": "https://__token__:s3cret@pypi.corp.example/simple"}, "carries credentials"),
    ({"UV_EXTRA_INDEX_URL": "https://s3cret@pypi.corp.example/simple"}, "carries credentials"),
    ({"UV_DEFAULT_INDEX": "https://pypi.corp.example/simple?token=s3cret"}, "query string"),
    ({"UV_INDEX": "file:///home/alice/wheels/simple"}, "not an http(s) URL"),
    ({"UV_INDEX": "corp-main=https://pypi.corp.example/simple", "UV_INDEX_CORP_MAIN_PASSWORD": "s3cret"},
     "UV_INDEX_CORP_MAIN_USERNAME/_PASSWORD are set"),
])
def test_an_index_with_credentials_is_refused_before_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            variables: dict[str, str], reason: str) -> None:
    _index_variables(monkeypatch, **variables)
    env = CapturedEnvironment(python=PYTHON, workdir=tmp_path, packages=(Package("six", "1.17.0", "index"),))
    with pytest.raises(SdkError) as caught:
        build_bundle(env, "x86_64", cache=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message and reason in message
    assert message.startswith("the package index ") and "without credentials" in message
    assert "wheel files" in message and f"unset {next(iter(variables))}" in message


def test_an_index_that_answers_401_without_credentials_is_refused(tmp_path: Path) -> None:
    with _serve(tmp_path, _Locked) as locked, _serve(tmp_path) as open_index:
        with pytest.raises(SdkError, match=r"^the package index http://127\.0\.0\.1:\d+/simple \(from UV_INDEX_URL\) "
                                           r"needs credentials \(it answers 401 without them\)"):
            check_indexes(client_indexes({"UV_INDEX_URL": f"{locked}/simple"}), {})
        check_indexes(client_indexes({"UV_INDEX_URL": f"{open_index}/simple"}), {})  # a 404 is not a refusal

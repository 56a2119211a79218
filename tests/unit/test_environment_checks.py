"""What the environment refuses before launch, and what it carries: local wheels for another platform, the working
directory's packages, the package index the lock was resolved against. No network here (a local HTTP server
stands in for a private index)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdk.environment.capture import MAX_MODULE_BYTES, CapturedEnvironment, Package, capture
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

"""What the environment refuses before launch, and what it carries: local wheels for another platform, the working
directory's packages, the package index the lock was resolved against. No network here (a local HTTP server
stands in for a private index)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sdk.environment.capture import CapturedEnvironment, Package
from sdk.environment.wheels import build_local_wheels
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

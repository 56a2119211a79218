"""Install: a fresh virtualenv with exactly the bundle's lock, made by uv, no bytecode compiled.

``install_commands(into, python, uv)`` is the whole recipe, run from the unpacked bundle's directory (the lock
names its local wheels as ``./wheels/…``):

    uv venv --python <minor> <into>                    # uv finds that Python, or downloads it
    uv pip sync --python <into>/bin/python requirements.txt

The EC2 user-data (``sdk.bootstrap``) runs these same commands in bash on the VM; the sandbox's VM runner and
``python -m sdk.environment install`` run them through ``install()``. Nothing is compiled to bytecode (uv's
default): a VM imports a module once or twice, and compiling all of them would add seconds to every boot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from sdk.environment.bundle import REQUIREMENTS
from sdk.environment.lock import uv_binary
from sdk.errors import SdkError

VM_ROOT = "/opt/vmguard"
"""Where a VM keeps uv, its cache, the Python uv fetched, the bundle and the venv."""
VM_VENV = f"{VM_ROOT}/env"
VM_UV = f"{VM_ROOT}/bin/uv"
MARKER = ".vmguard-env"
"""A file in a finished venv holding the bundle's hash."""
FETCH_ATTEMPTS = 5


class InstallError(SdkError):
    """The environment could not be installed."""


def install_commands(into: str, python: str, uv: str = "uv") -> list[list[str]]:
    """The commands that create the venv ``into`` and sync it to ``requirements.txt`` of the current directory."""
    return [
        [uv, "venv", "--quiet", "--no-project", "--clear", "--python", python, into],
        [uv, "pip", "sync", "--quiet", "--python", f"{into}/bin/python", REQUIREMENTS],
    ]


def venv_python(into: str | os.PathLike[str]) -> Path:
    return Path(into) / "bin" / "python"


def installed_hash(into: str | os.PathLike[str]) -> str | None:
    """The hash of the bundle a finished venv was installed from (None if unfinished or not one)."""
    marker = Path(into) / MARKER
    python = venv_python(into)
    if marker.is_file() and python.exists():
        return marker.read_text().strip() or None
    return None


def fetch(url: str, target: Path, expected_hash: str | None = None, timeout: float = 120.0) -> Path:
    """Download ``url`` to ``target`` (retrying), checking its sha256 if given."""
    last: Exception | None = None
    for attempt in range(FETCH_ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
            break
        except OSError as exc:
            last = exc
            time.sleep(min(2 ** attempt, 10))
    else:
        raise InstallError(f"cannot download the environment bundle: {last}")
    if expected_hash:
        check_hash(target, expected_hash)
    return target


def check_hash(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise InstallError(f"the environment bundle {path.name} has sha256 {digest[:16]}…, not {expected[:16]}…: "
                           "it changed since it was built; launch again")


def install(bundle: str | os.PathLike[str], into: str | os.PathLike[str], python: str, *,
            expected_hash: str | None = None, uv: str | None = None, log: Path | None = None) -> Path:
    """Install the bundle (a ``.tar.gz`` path or an http(s) URL) into a new venv at ``into``; its python's path.

    A venv already finished from the same bundle (same hash) is kept as it is.
    """
    uv = uv or uv_binary()
    target = Path(into)
    with tempfile.TemporaryDirectory(prefix="vmguard-bundle-") as tmp:
        work = Path(tmp)
        source = str(bundle)
        if source.startswith(("http://", "https://")):
            archive = fetch(source, work / "bundle.tar.gz", expected_hash)
        else:
            archive = Path(source)
            if expected_hash:
                check_hash(archive, expected_hash)
        digest = expected_hash or hashlib.sha256(archive.read_bytes()).hexdigest()
        if installed_hash(target) == digest:
            return venv_python(target)
        unpacked = work / "bundle"
        unpacked.mkdir()
        _extract(archive, unpacked)
        (target / MARKER).unlink(missing_ok=True)
        for command in install_commands(str(target), python, uv):
            done = subprocess.run(command, cwd=unpacked, capture_output=True, text=True, timeout=3600,
                                  env=_clean_env())
            if log is not None:
                with log.open("a") as out:
                    out.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
            if done.returncode != 0:
                lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
                raise InstallError(f"installing the environment failed at `{' '.join(command[:3])}`: "
                                   f"{' '.join(lines[-3:])[:500]}")
        (target / MARKER).write_text(digest + "\n")
    return venv_python(target)


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # a Python without extraction filters: the bundle is ours, its names are plain
            tar.extractall(into)  # noqa: S202


def _clean_env() -> dict[str, str]:
    """This process's environment without the active virtualenv (uv must not install into it)."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "PYTHONPATH", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)
    return env

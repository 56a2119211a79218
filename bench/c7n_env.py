"""Cloud Custodian in a virtualenv of its own under the cache directory (``.bench/`` by default), pinned.

Its own environment so that neither its dependencies nor its boto3 mix with vmguard's. Made with ``uv`` when the
project's environment has it (seconds), else with ``venv`` and ``pip``; made once, kept until the pin changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

C7N_VERSION = "0.9.53"
"""The Cloud Custodian release compared against (pinned: its call pattern is what the benchmark measures)."""


def _uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def ensure(cache: Path, log: Path | None = None) -> Path:
    """The interpreter of a virtualenv with c7n==C7N_VERSION installed (created if missing)."""
    venv = cache / f"c7n-{C7N_VERSION}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == C7N_VERSION:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        uv = _uv()
        if uv:
            steps = [[uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                     [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python),
                      f"c7n=={C7N_VERSION}"]]
        else:
            steps = [[sys.executable, "-m", "venv", str(venv)],
                     [str(python), "-m", "pip", "install", "--quiet", f"c7n=={C7N_VERSION}"]]
        for step in steps:
            subprocess.run(step, check=True, stdout=out, stderr=out)
    finally:
        if log:
            out.close()
    stamp.write_text(C7N_VERSION)
    return python


def compile_bytecode(python: Path, *paths: Path, log: Path | None = None) -> None:
    """Byte-compile ``python``'s installed packages (and ``paths``) as pip does at install time, so that no measured
    process spends its start compiling sources (``PYTHONDONTWRITEBYTECODE`` environments, ``uv`` installs)."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    out = log.open("ab") if log else subprocess.DEVNULL
    try:  # a file that does not compile (a package's Python 2 example, say) is not our concern: no check
        subprocess.run([str(python), "-m", "compileall", "-q", "-j0", purelib, *map(str, paths)], stdout=out,
                       stderr=out, check=False)
    finally:
        if log:
            out.close()


def versions(python: Path) -> dict[str, str]:
    """c7n's, and the boto3/botocore it runs with (its own, not vmguard's)."""
    code = ("import json, boto3, botocore, c7n.version;"
            "print(json.dumps({'c7n': c7n.version.version, 'boto3': boto3.__version__,"
            " 'botocore': botocore.__version__}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)

"""Environment replication, uv against pip: capture + lock, and install, for a 30+ package data-science
environment, each with a cold cache (an empty cache directory: everything comes from the package index) and a
warm one (the same cache, used again).

    python -m bench.env_bench            # writes the "## Environment replication" section of bench/RESULTS.md

- capture + lock, uv: what ``sdk.environment`` does before a launch: read the environment's distributions,
  resolve the exact lock for ``x86_64-manylinux_2_28`` with ``uv pip compile`` (every version pinned ``==``);
- capture + lock, pip: the same with pip: ``pip freeze``, then ``pip install --dry-run --report`` for the
  manylinux_2_28 x86_64 platform (``--only-binary :all:``), the same pins as constraints;
- install, uv: ``sdk.environment.install``: ``uv venv`` + ``uv pip sync`` of the lock into a brand-new venv;
- install, pip: ``python -m venv`` + ``pip install --no-deps --no-compile -r lock`` into a brand-new venv (no
  bytecode compiled, as with uv);
- and a cached environment: the second ``build_bundle`` of an unchanged environment (content-hash hit).

Cold numbers include the downloads, so they depend on the network as much as on the tool.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from sdk.environment.bundle import build_bundle
from sdk.environment.capture import capture
from sdk.environment.install import install
from sdk.environment.lock import uv_binary, uv_version

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Environment replication"
PACKAGES = ["numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "seaborn", "statsmodels", "pyarrow",
            "dask[distributed]"]
"""What a data scientist installs; with their dependencies, 40-odd distributions."""
PIP_PLATFORM = "manylinux_2_28_x86_64"
PIP_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + \
    ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
"""pip takes ``--platform`` literally: every older manylinux tag a manylinux_2_28 machine accepts is listed."""


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} … failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PIP_CACHE_DIR", "UV_CACHE_DIR")}
    return env | extra


def make_source_environment(work: Path, uv: str) -> Path:
    """The developer's environment the benchmark replicates (made with uv and the usual cache; not timed)."""
    venv = work / "source-venv"
    run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *PACKAGES])
    return venv / "bin" / "python"


def uv_capture_and_lock(python: Path, workdir: Path, uv: str, uv_cache: Path, vmguard_cache: Path) -> tuple:
    os.environ["UV_CACHE_DIR"] = str(uv_cache)
    try:
        env = capture(python, workdir)
        bundle = build_bundle(env, "x86_64", cache=vmguard_cache, uv=uv)
    finally:
        os.environ.pop("UV_CACHE_DIR", None)
    return env, bundle


def pip_capture_and_lock(python: Path, pip_python: Path, work: Path, cache: Path) -> Path:
    """pip freeze, then pip's own resolution for the target platform, with the same pins as constraints."""
    frozen = run([str(pip_python), "-m", "pip", "freeze", "--path", _site_packages(python)]).stdout
    pins = [line for line in frozen.splitlines() if "==" in line]
    (work / "constraints.txt").write_text("\n".join(pins) + "\n")
    (work / "requirements.in").write_text("\n".join(PACKAGES) + "\n")
    report = work / "report.json"
    run([str(pip_python), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report",
         str(report), "--only-binary", ":all:", *(f"--platform={tag}" for tag in PIP_PLATFORMS), "--python-version",
         f"{sys.version_info[0]}.{sys.version_info[1]}", "--implementation", "cp", "--target", str(work / "t"),
         "-r", str(work / "requirements.in"), "-c", str(work / "constraints.txt"), "--cache-dir", str(cache)],
        env=clean_env())
    installed = json.loads(report.read_text())["install"]
    lock = work / "pip-lock.txt"
    lock.write_text("".join(f"{i['metadata']['name']}=={i['metadata']['version']}\n" for i in installed))
    return lock


def _site_packages(python: Path) -> str:
    return run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()


def uv_install(bundle: Path, into: Path, python_minor: str, uv: str, uv_cache: Path) -> None:
    os.environ["UV_CACHE_DIR"] = str(uv_cache)
    try:
        install(bundle, into, python_minor, uv=uv)
    finally:
        os.environ.pop("UV_CACHE_DIR", None)


def pip_install(lock: Path, into: Path, cache: Path) -> None:
    run([sys.executable, "-m", "venv", "--clear", str(into)])
    run([str(into / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
         "--cache-dir", str(cache), "-r", str(lock)], env=clean_env())


def pip_version(python: Path) -> str:
    return run([str(python), "-m", "pip", "--version"]).stdout.split()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace ``heading``'s section of the markdown file at ``path`` (up to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def table(rows: list[tuple[str, str, float | None, float | None]]) -> str:
    lines = ["| step | tool | cold cache (s) | warm cache (s) |", "|---|---|---:|---:|"]
    for step, tool, cold, warm in rows:
        lines.append(f"| {step} | {tool} | {_seconds(cold)} | {_seconds(warm)} |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    uv = uv_binary()
    with tempfile.TemporaryDirectory(prefix="vmguard-env-bench-") as tmp:
        work = Path(tmp)
        print("making the source environment …", flush=True)
        source = make_source_environment(work, uv)
        workdir = work / "project"
        workdir.mkdir()
        uv_cache, pip_cache = work / "uv-cache", work / "pip-cache"
        timings: dict[str, float] = {}
        result: dict = {}

        for phase in ("cold", "warm"):
            print(f"capture + lock ({phase}) …", flush=True)
            vmguard_cache = work / f"vmguard-{phase}"  # a new one each time: measure the resolution, not the hit
            timings[f"uv-lock-{phase}"] = timed(lambda c=vmguard_cache: result.__setitem__(
                "uv", uv_capture_and_lock(source, workdir, uv, uv_cache, c)))
            pip_work = work / f"pip-{phase}"
            pip_work.mkdir()
            timings[f"pip-lock-{phase}"] = timed(lambda w=pip_work: result.__setitem__(
                "pip", pip_capture_and_lock(source, Path(sys.executable), w, pip_cache)))
        env, bundle = result["uv"]
        pip_lock = result["pip"]
        timings["uv-hit"] = timed(lambda: build_bundle(capture(source, workdir), "x86_64",
                                                       cache=work / "vmguard-warm", uv=uv))
        uv_packages, pip_packages = len(bundle.packages), len(pip_lock.read_text().splitlines())
        for phase in ("cold", "warm"):
            if phase == "cold":
                shutil.rmtree(uv_cache, ignore_errors=True)
                shutil.rmtree(pip_cache, ignore_errors=True)
            print(f"install ({phase}) …", flush=True)
            timings[f"uv-install-{phase}"] = timed(lambda p=phase: uv_install(
                bundle.path, work / f"uv-venv-{p}", env.python_minor, uv, uv_cache))
            timings[f"pip-install-{phase}"] = timed(lambda p=phase: pip_install(
                pip_lock, work / f"pip-venv-{p}", pip_cache))

        rows = [
            ("capture + lock (x86_64 manylinux_2_28)", "uv", timings["uv-lock-cold"], timings["uv-lock-warm"]),
            ("capture + lock (x86_64 manylinux_2_28)", "pip", timings["pip-lock-cold"], timings["pip-lock-warm"]),
            ("install into a new venv", "uv", timings["uv-install-cold"], timings["uv-install-warm"]),
            ("install into a new venv", "pip", timings["pip-install-cold"], timings["pip-install-warm"]),
            ("unchanged environment (content-hash hit)", "vmguard", None, timings["uv-hit"]),
        ]
        command = ".venv/bin/python -m bench.env_bench"
        about = (
            f"The environment: `{' '.join(PACKAGES)}` and their dependencies: {uv_packages} distributions in "
            f"uv's lock, {pip_packages} in pip's. Cold: an empty cache directory (every file downloaded from the "
            "package index); warm: the same cache again. capture + lock reads the installed distributions and "
            "resolves an exact lock for x86_64 Linux VMs (uv: `uv pip compile --python-platform "
            "x86_64-manylinux_2_28`, what `sdk.environment` runs; pip: `pip freeze`, then `pip install --dry-run "
            f"--report --only-binary :all: --platform {PIP_PLATFORM}` and each older manylinux tag, which pip "
            "does not infer). install creates a brand-new venv and installs the lock without compiling bytecode "
            "(uv: `uv venv` + `uv pip sync`, what the VMs run; pip: `python -m venv` + `pip install --no-deps "
            "--no-compile -r lock`). One run each. Cold numbers include the downloads: they depend on how close "
            "the package index is (here it answers quickly, so they are mostly the tools' own time)."
        )
        body = "\n".join([
            f"`{command}` on {datetime.date.today().isoformat()}: {os.cpu_count()} cores ({cpu_model()}), "
            f"Python {platform.python_version()}, uv {uv_version(uv)}, pip {pip_version(Path(sys.executable))}.",
            "",
            textwrap.fill(about, width=118, break_on_hyphens=False, break_long_words=False),
            "",
            table(rows),
        ])
    write_section(args.results, HEADING, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resolve for the VMs, not for this machine: an exact lock for Linux on the VMs' architecture and Python minor.

``resolve()`` asks uv for a resolution for ``<arch>-manylinux_2_28`` (glibc 2.28 or newer: Amazon Linux 2023
has 2.34) and this interpreter's Python minor. What was asked for is what nothing else here depends on, each
pinned ``==`` to its installed version; every other installed version is a constraint, so a version is never
widened: it is the one installed here, or the resolution fails. A package that only this machine's platform
needs (``appnope`` on a Mac) drops out; one the target needs (and this machine does not) is added.

The resolution is written as a PEP 751 ``pylock.toml``, which names, for each package, the wheel files of the
target platform: a package pinned to a version with no wheel for the target (only an sdist, or wheels for other
platforms) is reported before anything launches, with its name and the alternatives: the other architecture,
or another version that has a wheel. The lock the VMs install is a requirements file: the package indexes it was
resolved against (:mod:`~sdk.environment.indexes`, ``--index-url``/``--extra-index-url`` lines), ``name==version``
lines, local wheels as ``name @ ./wheels/<file>``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sdk.environment.capture import CapturedEnvironment, canonical
from sdk.environment.indexes import Indexes, client_indexes, uv_environment
from sdk.environment.wheels import MANYLINUX, LocalWheel, normalize_arch
from sdk.errors import SdkError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CRITICAL = ("dask", "distributed", "cloudpickle", "msgpack", "vmguard")
"""Packages whose versions must be equal on the client and the VMs (with the Python minor)."""
UV_ENV = "VMGUARD_UV"
MAX_PROBLEM_ROUNDS = 8
WHEELS_DIR = "wheels"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HINT = re.compile(rf"Wheels are available for `({_NAME})` \(v([^)\s]+)\) on the following platforms?: (.+)")
_NO_PLATFORM = re.compile(rf"({_NAME})==([^\s,]+) has no wheels with a matching platform tag")
_NO_PLATFORM_ANY = re.compile(rf"({_NAME})(?:[<>=!~]=?[^\s,]*)? have no wheels with a matching platform tag")
_NOT_FOUND = re.compile(rf"Because ({_NAME}) was not found in the package registry")
_NO_VERSION = re.compile(rf"there is no version of ({_NAME})==([^\s,]+)")


def python_platform(arch: str) -> str:
    """uv's ``--python-platform`` for Linux VMs of ``arch``."""
    return f"{normalize_arch(arch)}-manylinux_{MANYLINUX}"


def other_arch(arch: str) -> str:
    return "x86_64" if normalize_arch(arch) == "aarch64" else "aarch64"


def arm_flag(arch: str) -> str:
    return f"arm={normalize_arch(arch) == 'aarch64'}"


def uv_binary() -> str:
    """The uv executable: ``$VMGUARD_UV``, the ``uv`` package's, the one next to this Python, or on PATH."""
    explicit = os.environ.get(UV_ENV)
    if explicit:
        return explicit
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found:
        return found
    raise SdkError("the SDK replicates your environment with uv, which is not installed: pip install uv")


def uv_version(uv: str) -> str:
    out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=60)
    match = re.search(r"uv (\d+\.\d+\.\d+)", out.stdout)
    if out.returncode != 0 or not match:
        raise SdkError(f"{uv} --version failed: {out.stderr.strip() or out.stdout.strip()}")
    return match.group(1)


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    requirement: str
    """Its line in the VMs' requirements file."""
    wheels: tuple[str, ...]
    """The file names of its wheels for the target platform (local wheels: the one carried)."""
    local: bool = False


@dataclass(frozen=True)
class Lock:
    """An exact resolution for Linux VMs of one architecture and Python minor."""

    arch: str
    python: str
    packages: tuple[LockedPackage, ...]
    wheels: tuple[LocalWheel, ...] = ()
    dropped: tuple[str, ...] = ()
    """Installed here, not needed on the target platform."""
    built_on_vm: tuple[str, ...] = ()
    """Pure-Python packages published as an sdist only: the VMs build them (no compiler needed)."""
    notes: tuple[str, ...] = field(default=())
    indexes: Indexes = Indexes()
    """The package indexes it was resolved against: the VMs install from the same."""

    @property
    def platform(self) -> str:
        return python_platform(self.arch)

    @property
    def pins(self) -> dict[str, str]:
        return {p.name: p.version for p in self.packages}

    def requirements_text(self) -> str:
        header = (f"# vmguard: the environment of the VMs, for {self.platform} and Python {self.python}.\n"
                  "# Installed with `uv pip sync` from this file's directory (local wheels are in ./wheels).\n")
        lines = self.indexes.requirement_lines() + [p.requirement for p in sorted(self.packages, key=lambda p: p.name)]
        return header + "".join(f"{line}\n" for line in lines)


def resolve(env: CapturedEnvironment, arch: str, wheels: list[LocalWheel], work: Path, *, uv: str) -> Lock:
    """The lock of ``env`` for Linux VMs of ``arch`` (see the module's doc); ``wheels``: the local ones."""
    arch = normalize_arch(arch)
    work.mkdir(parents=True, exist_ok=True)
    local = {w.name: w for w in wheels}
    inputs, constraints = _requested(env, local, uv)
    problems: dict[str, tuple[str, str]] = {}
    for _ in range(MAX_PROBLEM_ROUNDS):
        done = _compile(uv, inputs, constraints, arch, env.python_minor, work)
        if done.returncode == 0:
            break
        found = _platform_problems(done.stderr)
        if not found:
            _raise_resolution_error(env, arch, done.stderr)
        problems.update(found)
        inputs = [line for line in inputs if _line_name(line) not in found]
        constraints = [line for line in constraints if _line_name(line) not in found]
        if not inputs:
            break
    if problems:
        _raise_no_wheels(problems, arch, env.python_minor, uv, work)
    lock_data = tomllib.loads((work / "pylock.toml").read_text())
    packages, sdist_only = _locked(lock_data, local)
    if sdist_only:
        compiled = _compiled_elsewhere(sdist_only, arch, env.python_minor, uv, work)
        if compiled:
            _raise_no_wheels({name: (sdist_only[name], platforms) for name, platforms in compiled.items()}, arch,
                             env.python_minor, uv, work)
    lock = Lock(arch=arch, python=env.python_minor, packages=packages, wheels=tuple(wheels),
                dropped=_dropped(env, packages, local), built_on_vm=tuple(sorted(sdist_only)),
                indexes=client_indexes())
    _check_exact(env, lock)
    return lock


# -- what is asked for -------------------------------------------------------------------------------------------

def _requested(env: CapturedEnvironment, local: dict[str, LocalWheel], uv: str) -> tuple[list[str], list[str]]:
    """(requirements, constraints) for the resolver."""
    direct = [f"{w.name} @ {w.path.resolve().as_uri()}" for w in local.values()]
    if env.lock_file is not None:
        lines = [line for line in lock_file_requirements(env.lock_file, uv) if _line_name(line) not in local]
        named = {_line_name(line) for line in lines}
        # the cluster cannot run without the SDK and Dask at this machine's versions: add what the file lacks
        extra = [p.requirement() for p in env.packages
                 if p.name in CRITICAL and p.name not in named and p.name not in local]
        return direct + lines + extra, []
    leaves = {p.name for p in env.leaves()}
    inputs = [p.requirement() for p in env.packages if p.name in leaves and p.name not in local]
    constraints = [p.pin for p in env.packages if p.kind in ("index", "conda") and p.name not in local]
    return direct + inputs, constraints


def lock_file_requirements(path: Path, uv: str) -> list[str]:
    """The exact requirements of a ``uv.lock`` (exported by uv) or of a pinned requirements file.

    Editable entries (``-e <dir>``) are left out: they are built into wheels (``lock_file_sources``).
    """
    if path.name == "uv.lock":
        done = subprocess.run([uv, "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate",
                               "--format", "requirements-txt", "--directory", str(path.parent)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SdkError(f"cannot read {path}: {done.stderr.strip().splitlines()[-1:] or 'uv export failed'}")
        text = done.stdout
    else:
        text = path.read_text(encoding="utf-8")
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        lines.append(line)
    return lines


def lock_file_sources(path: Path, uv: str) -> tuple[Path, ...]:
    """The project directories a lock file installs editable (``-e <dir>``), to build into wheels."""
    if path.name == "uv.lock":
        done = subprocess.run([uv, "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate",
                               "--format", "requirements-txt", "--directory", str(path.parent)],
                              capture_output=True, text=True, timeout=600)
        text = done.stdout if done.returncode == 0 else ""
    else:
        text = path.read_text(encoding="utf-8")
    sources = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("-e ", "--editable ")):
            target = line.split(None, 1)[1].strip()
            sources.append((path.parent / target).resolve())
    return tuple(sources)


def _line_name(line: str) -> str:
    match = re.match(_NAME, line.strip())
    return canonical(match.group(0)) if match else ""


# -- running uv ----------------------------------------------------------------------------------------------------

def _compile(uv: str, inputs: list[str], constraints: list[str], arch: str, python: str, work: Path,
             *extra: str, output: str = "pylock.toml") -> subprocess.CompletedProcess[str]:
    """``uv pip compile`` for the target, against this machine's package indexes given as flags (the VMs get the
    same flags in their lock), not through uv's variables."""
    requirements = work / "requirements.in"
    requirements.write_text("".join(f"{line}\n" for line in inputs))
    command = [uv, "pip", "compile", str(requirements), "--python-platform", python_platform(arch),
               "--python-version", python, "--format", "pylock.toml", "--output-file", str(work / output),
               "--no-header", "--quiet", *client_indexes().arguments(), *extra]
    if constraints:
        (work / "constraints.txt").write_text("".join(f"{line}\n" for line in constraints))
        command += ["--constraint", str(work / "constraints.txt")]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=work, env=uv_environment())


def _locked(data: dict, local: dict[str, LocalWheel]) -> tuple[tuple[LockedPackage, ...], dict[str, str]]:
    packages = []
    sdist_only: dict[str, str] = {}
    for entry in data.get("packages", []):
        name, version = canonical(entry["name"]), str(entry.get("version", ""))
        marker = f" ; {entry['marker']}" if entry.get("marker") else ""
        if name in local:
            wheel = local[name]
            packages.append(LockedPackage(name, wheel.version, f"{name} @ ./{WHEELS_DIR}/{wheel.path.name}{marker}",
                                          (wheel.path.name,), local=True))
            continue
        files = tuple(_file_name(w) for w in entry.get("wheels", []))
        archive = entry.get("archive") or {}
        vcs = entry.get("vcs") or {}
        if vcs:
            requirement = f"{name} @ git+{vcs.get('url')}@{vcs.get('commit-id')}"
        elif archive.get("url"):
            requirement = f"{name} @ {archive['url']}"
        else:
            requirement = f"{name}=={version}"
            if not files:
                sdist_only[name] = version
        packages.append(LockedPackage(name, version or "", requirement + marker, files))
    return tuple(packages), sdist_only


def _file_name(wheel: dict) -> str:
    if wheel.get("name"):
        return str(wheel["name"])
    location = str(wheel.get("url") or wheel.get("path") or "")
    return location.rsplit("/", 1)[-1]


def _platform_problems(stderr: str) -> dict[str, tuple[str, str]]:
    """name → (version, the platforms it has wheels for) of every 'no wheel for this platform' in uv's error."""
    found: dict[str, tuple[str, str]] = {}
    for match in _HINT.finditer(stderr):
        platforms = match.group(3).replace("`", "").strip()
        found[canonical(match.group(1))] = (match.group(2), platforms)
    for match in _NO_PLATFORM.finditer(stderr):
        found.setdefault(canonical(match.group(1)), (match.group(2), ""))
    for match in _NO_PLATFORM_ANY.finditer(stderr):
        found.setdefault(canonical(match.group(1)), ("", ""))
    return found


def _compiled_elsewhere(sdist_only: dict[str, str], arch: str, python: str, uv: str,
                        work: Path) -> dict[str, str]:
    """Of packages with only an sdist for ``arch``: those that have wheels for the other architecture (compiled
    code a VM would have to build without a compiler), with those platforms."""
    other = other_arch(arch)
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    done = _compile(uv, [f"{n}=={v}" for n, v in sorted(sdist_only.items())], [], other, python, probe,
                    "--no-deps", output="pylock.other.toml")
    if done.returncode != 0:
        return {}
    data = tomllib.loads((probe / "pylock.other.toml").read_text())
    return {canonical(e["name"]): python_platform(other) for e in data.get("packages", []) if e.get("wheels")}


def _alternative_version(name: str, arch: str, python: str, uv: str, work: Path) -> str | None:
    """The newest version of ``name`` with a wheel for ``arch``, if any."""
    probe = work / f"probe-{name}"
    probe.mkdir(exist_ok=True)
    done = _compile(uv, [name], [], arch, python, probe, "--no-deps", "--only-binary", name)
    if done.returncode != 0:
        return None
    data = tomllib.loads((probe / "pylock.toml").read_text())
    versions = [str(e.get("version")) for e in data.get("packages", []) if canonical(e["name"]) == name]
    return versions[0] if versions else None


def _raise_no_wheels(problems: dict[str, tuple[str, str]], arch: str, python: str, uv: str, work: Path) -> None:
    parts = []
    for name, (version, platforms) in sorted(problems.items()):
        pinned = f"{name}=={version}" if version else name
        other = other_arch(arch)
        options = []
        if other in platforms or (not platforms and _has_wheel(name, version, other, python, uv, work)):
            options.append(f"launch {other} VMs ({arm_flag(other)})")
        alternative = _alternative_version(name, arch, python, uv, work)
        if alternative and alternative != version:
            options.append(f"install {name}=={alternative} here (it has one)")
        options.append(f"or uninstall {name}")
        where = f" (wheels only for {platforms})" if platforms else ""
        parts.append(f"{pinned}{where}: " + ", ".join(options))
    raise SdkError(f"no wheel for Linux {arch} (manylinux_{MANYLINUX}, Python {python}) of "
                   f"{len(parts)} package(s): " + "; ".join(parts))


def _has_wheel(name: str, version: str, arch: str, python: str, uv: str, work: Path) -> bool:
    probe = work / f"probe-{name}-{arch}"
    probe.mkdir(exist_ok=True)
    requirement = f"{name}=={version}" if version else name
    done = _compile(uv, [requirement], [], arch, python, probe, "--no-deps", "--only-binary", name)
    return done.returncode == 0


def _raise_resolution_error(env: CapturedEnvironment, arch: str, stderr: str) -> None:
    conda = {p.name: p.version for p in env.of_kind("conda")}
    missing = [canonical(m.group(1)) for m in _NOT_FOUND.finditer(stderr)]
    missing += [canonical(m.group(1)) for m in _NO_VERSION.finditer(stderr)]
    from_conda = [name for name in missing if name in conda]
    if from_conda:
        names = ", ".join(f"{name}=={conda[name]}" for name in from_conda)
        raise SdkError(f"{names} came from conda and PyPI does not have it (at that version): the VMs install "
                       f"from PyPI; pip-install a version PyPI has in this environment, or uninstall it")
    if missing:
        raise SdkError(f"the package index has no {', '.join(sorted(set(missing)))} at the installed version: "
                       "the VMs cannot install it; reinstall it from the index or uninstall it")
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    detail = " ".join(lines[:6])[:600]
    raise SdkError(f"uv could not resolve this environment for Linux {arch}: {detail}")


# -- checking the result -------------------------------------------------------------------------------------------

def _dropped(env: CapturedEnvironment, packages: tuple[LockedPackage, ...],
             local: dict[str, LocalWheel]) -> tuple[str, ...]:
    locked = {p.name for p in packages}
    return tuple(sorted(p.name for p in env.packages if p.name not in locked and p.name not in local))


def _check_exact(env: CapturedEnvironment, lock: Lock) -> None:
    """Every package installed here that the lock holds has the installed version (never widened)."""
    pins = lock.pins
    for package in env.packages:
        locked = pins.get(package.name)
        if locked is None or package.kind not in ("index", "conda"):
            continue
        if env.lock_file is None and locked != package.version:
            raise SdkError(f"the lock for {lock.arch} has {package.name}=={locked}, not the installed "
                           f"{package.version}; report this (versions must never change)")
        if env.lock_file is not None and package.name in CRITICAL and locked != package.version:
            raise SdkError(f"{env.lock_file.name} pins {package.name}=={locked} but this machine runs "
                           f"{package.version}; the client and the VMs must match: install {package.name}=="
                           f"{locked} here or update {env.lock_file.name}")

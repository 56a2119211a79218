"""Local code as wheels: editable and local installs, git installs, local archives and the working directory's
modules become wheel files the VMs install like any other.

A local package is built from a snapshot of its source (the files git tracks or would track, or, outside git,
every file but caches, virtualenvs and build output) so the build never writes into the developer's tree, and
the same file list gives the source's content hash (an unchanged package is not rebuilt). A local wheel whose
platform tag (PEP 425/600/656) is not ``any`` must be one the VMs run: glibc Linux (``manylinux_*`` up to the
VMs' baseline, or ``linux_*`` as built on a Linux machine) of their architecture. Any other (``macosx_…``,
``win_amd64``, ``musllinux_…``, another architecture) is refused before launch: it would fail the VMs' install.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sdk.environment.capture import SKIPPED_DIRS, CapturedEnvironment, Package, canonical
from sdk.errors import SdkError

MODULES_DISTRIBUTION = "vmguard-workdir"
"""The name of the wheel that carries the working directory's top-level modules and packages."""
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
MANYLINUX = "2_28"
"""The glibc baseline of the VMs' wheels: Amazon Linux 2023 has glibc 2.34, Ubuntu 22.04 2.35."""
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_LINUX_TAG = re.compile(r"^(?P<libc>manylinux|musllinux)_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>\w+)$"
                        r"|^(?P<legacy>manylinux1|manylinux2010|manylinux2014)_(?P<legacy_arch>\w+)$"
                        r"|^linux_(?P<plain_arch>\w+)$")


def normalize_arch(arch: str) -> str:
    """``x86_64``/``amd64`` → ``x86_64``; ``aarch64``/``arm64`` → ``aarch64``."""
    try:
        return _ARCHES[arch.lower()]
    except KeyError:
        raise SdkError(f"architecture {arch!r} is not one vmguard launches; use x86_64 or aarch64") from None


@dataclass(frozen=True)
class LocalWheel:
    """A wheel built (or copied) here for a package the VMs cannot get from an index."""

    name: str
    version: str
    path: Path
    origin: str
    """Where it came from, for messages: the source directory, archive or git URL."""

    @property
    def tags(self) -> tuple[str, str, str]:
        """(python, abi, platform) tags of the wheel's file name (the last three dash-separated fields)."""
        parts = self.path.name[:-len(".whl")].split("-")
        return parts[-3], parts[-2], parts[-1]

    @property
    def pure(self) -> bool:
        return self.tags[2] == "any"


# -- what goes into the build: the file list and its content hash ------------------------------------------------

def source_files(source: Path) -> list[Path]:
    """The project's files, relative to ``source``: what git tracks or would track, else every file but caches."""
    try:
        out = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout:
        files = [Path(p) for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
        return sorted(p for p in files if (source / p).is_file() and not _skipped(p))
    found = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in names:
            if name.endswith((".pyc", ".pyo")):
                continue
            found.append((Path(root) / name).relative_to(source))
    return sorted(found)


def _skipped(path: Path) -> bool:
    return any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in path.parts[:-1])


def source_hash(source: Path) -> str:
    """sha256 over the project's file names and contents."""
    digest = hashlib.sha256()
    for relative in source_files(source):
        digest.update(str(relative).encode() + b"\0")
        with (source / relative).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def package_fingerprint(package: Package) -> str:
    """What identifies a package's content: its pin, its commit, or its source's hash."""
    if package.kind in ("editable", "local") and package.source and Path(package.source).is_dir():
        return f"{package.name} src:{source_hash(Path(package.source))}"
    if package.is_local_file and package.source and Path(package.source).is_file():
        return f"{package.name} file:{file_hash(Path(package.source))}"
    return f"{package.name} {package.kind} {package.requirement()}"


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def modules_hash(modules: tuple[Path, ...], root: Path) -> str:
    """sha256 over the modules' paths (relative to ``root``, the working directory) and contents."""
    digest = hashlib.sha256()
    for path in modules:
        digest.update(module_name(path, root).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def module_name(path: Path, root: Path) -> str:
    """The module file's path in the wheel: relative to the working directory (``mypkg/sub/__init__.py``)."""
    return path.relative_to(root).as_posix()


# -- building -------------------------------------------------------------------------------------------------------

def build_local_wheels(env: CapturedEnvironment, arch: str, out: Path, uv: str,
                       extra_sources: tuple[Path, ...] = ()) -> list[LocalWheel]:
    """A wheel in ``out`` for every package of ``env`` that no index has, plus the working directory's modules.

    ``extra_sources``: more project directories to build (the ``-e`` entries of a lock file).
    A compiled local package cannot go to VMs of another architecture: that is an ``SdkError`` naming it.
    """
    out.mkdir(parents=True, exist_ok=True)
    wheels: list[LocalWheel] = []
    for package in env.packages:
        if package.kind in ("editable", "local"):
            wheels.append(_build_source(package.name, Path(package.source or ""), out, uv))
        elif package.kind == "vcs":
            wheels.append(_build_git(package, out, uv))
        elif package.is_local_file:
            wheels.append(_from_archive(package, out, uv))
    for source in extra_sources:
        wheels.append(_build_source(None, source, out, uv))
    if env.modules:
        wheels.append(modules_wheel(env.modules, out, env.workdir))
    check_platforms(wheels, normalize_arch(arch))
    return wheels


# -- the platform check ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinuxTag:
    """A Linux platform tag: ``glibc`` (manylinux, or ``linux_*`` as built here) or ``musl``, its arch and, for
    manylinux, the glibc it needs."""

    libc: str
    arch: str
    glibc: tuple[int, int] | None = None


def linux_tag(tag: str) -> LinuxTag | None:
    """The Linux platform tag ``tag`` (PEP 600 ``manylinux_2_28_x86_64``, its legacy aliases, PEP 656
    ``musllinux_1_2_aarch64``, ``linux_x86_64``), or None when it is not Linux (``macosx_14_0_arm64``)."""
    match = _LINUX_TAG.match(tag)
    if match is None:
        return None
    if match["legacy"]:
        return LinuxTag("glibc", _arch_name(match["legacy_arch"]), _LEGACY_MANYLINUX[match["legacy"]])
    if match["plain_arch"]:
        return LinuxTag("glibc", _arch_name(match["plain_arch"]))
    if match["libc"] == "musllinux":
        return LinuxTag("musl", _arch_name(match["arch"]))
    return LinuxTag("glibc", _arch_name(match["arch"]), (int(match["major"]), int(match["minor"])))


def _arch_name(arch: str) -> str:
    return _ARCHES.get(arch.lower(), arch.lower())


def check_platforms(wheels: list[LocalWheel], target: str) -> None:
    """``SdkError`` (one line, naming each wheel and the fix) when a local wheel cannot run on Linux ``target`` VMs.

    Checked before launch because the VMs' ``uv pip sync`` would refuse it and the VM would power off.
    """
    refused = [(wheel, reason) for wheel in wheels if (reason := platform_problem(wheel, target))]
    if not refused:
        return
    listed = "; ".join(f"{w.name} ({w.path.name}, from {w.origin}) {reason}" for w, reason in refused)
    fix = (f"build it for Linux {target} (e.g. with cibuildwheel, or `uv build` in a manylinux_{MANYLINUX} "
           "container), publish that wheel to the package index and install it here from the index")
    other = _other_vms(refused, target)
    if other:
        fix += f", or launch {other} VMs (arm={other == 'aarch64'})"
    raise SdkError(f"local wheel(s) that cannot run on the Linux {target} VMs: {listed}: {fix}")


def _other_vms(refused: list[tuple[LocalWheel, str]], target: str) -> str | None:
    """The other architecture vmguard launches when every refused wheel is glibc Linux for it (and only it)."""
    arches = {t.arch for wheel, _ in refused for t in _linux_tags(wheel) if t.libc == "glibc"}
    glibc_only = all(t.libc == "glibc" for wheel, _ in refused for t in _linux_tags(wheel))
    every_linux = all(_linux_tags(wheel) for wheel, _ in refused)
    if len(arches) == 1 and glibc_only and every_linux and target not in arches and arches <= set(_ARCHES.values()):
        return arches.pop()
    return None


def platform_problem(wheel: LocalWheel, target: str) -> str | None:
    """Why the VMs (glibc Linux ``target``, manylinux baseline ``MANYLINUX``) cannot run ``wheel``; None if they can."""
    if wheel.pure:
        return None
    tags = _linux_tags(wheel)
    baseline = tuple(int(part) for part in MANYLINUX.split("_"))
    if any(t.libc == "glibc" and t.arch == target and (t.glibc or (0, 0)) <= baseline for t in tags):
        return None
    if not tags:
        return f"is built for {wheel.tags[2]}, not Linux"
    if not any(t.libc == "glibc" for t in tags):
        return "is built for musl libc (musllinux); the VMs run glibc Linux"
    if not any(t.arch == target for t in tags if t.libc == "glibc"):
        return f"is built for Linux {'/'.join(sorted({t.arch for t in tags}))}, not {target}"
    needed = min(t.glibc for t in tags if t.libc == "glibc" and t.arch == target and t.glibc)
    return f"needs glibc {needed[0]}.{needed[1]}, newer than the VMs' manylinux_{MANYLINUX}"


def _linux_tags(wheel: LocalWheel) -> list[LinuxTag]:
    """The Linux tags among the wheel's platform tags (a compressed tag set like ``a.b`` has several)."""
    return [tag for name in wheel.tags[2].split(".") if (tag := linux_tag(name)) is not None]


def _build_source(name: str | None, source: Path, out: Path, uv: str) -> LocalWheel:
    if not source.is_dir():
        raise SdkError(f"{name or source}: its source directory {source} is gone; reinstall it or uninstall it")
    with tempfile.TemporaryDirectory(prefix="vmguard-src-") as tmp:
        copy = Path(tmp) / source.name
        for relative in source_files(source):
            target = copy / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target)
        return _uv_build(name, copy, out, uv, origin=str(source))


def _build_git(package: Package, out: Path, uv: str) -> LocalWheel:
    with tempfile.TemporaryDirectory(prefix="vmguard-git-") as tmp:
        checkout = Path(tmp) / package.name
        for command in (["git", "clone", "--quiet", str(package.source), str(checkout)],
                        ["git", "-C", str(checkout), "checkout", "--quiet", str(package.commit)]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise SdkError(f"{package.name} was installed from git ({package.source}@{package.commit}) and "
                               f"cannot be fetched again here: {_last_line(done.stderr)}")
        source = checkout / package.subdirectory if package.subdirectory else checkout
        return _uv_build(package.name, source, out, uv, origin=f"{package.source}@{package.commit}")


def _from_archive(package: Package, out: Path, uv: str) -> LocalWheel:
    path = Path(package.source or "")
    if not path.is_file():
        raise SdkError(f"{package.name} was installed from {path}, which is gone; reinstall it from an index")
    if path.name.endswith(".whl"):
        target = out / path.name
        shutil.copy2(path, target)
        return LocalWheel(package.name, package.version, target, str(path))
    return _uv_build(package.name, path, out, uv, origin=str(path))


def _uv_build(name: str | None, source: Path, out: Path, uv: str, origin: str) -> LocalWheel:
    with tempfile.TemporaryDirectory(prefix="vmguard-wheel-") as tmp:
        done = subprocess.run([uv, "build", "--wheel", "--quiet", "--out-dir", tmp, str(source)],
                              capture_output=True, text=True, timeout=1800)
        built = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(built) != 1:
            raise SdkError(f"cannot build a wheel of {name or source} from {origin}: {_last_line(done.stderr)}")
        target = out / built[0].name
        shutil.move(str(built[0]), target)
    fields = target.name.split("-")
    wheel_name = canonical(fields[0])
    if name is not None and wheel_name != canonical(name):
        raise SdkError(f"building {name} from {origin} made a wheel of {wheel_name}; reinstall {name}")
    return LocalWheel(wheel_name, fields[1], target, origin)


def modules_wheel(modules: tuple[Path, ...], out: Path, root: Path) -> LocalWheel:
    """A pure wheel of the working directory ``root``'s modules and packages' files (named ``vmguard-workdir``,
    versioned by their content), each at its path relative to ``root``."""
    version = f"0+{modules_hash(modules, root)[:12]}"
    stem = f"{MODULES_DISTRIBUTION.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files: dict[str, bytes] = {module_name(path, root): path.read_bytes() for path in modules}
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {MODULES_DISTRIBUTION}\nVersion: {version}\n"
                                 "Summary: the working directory's modules and packages, carried to the VMs\n"
                                 ).encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: vmguard\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    record = io.StringIO()
    for arcname, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{arcname},sha256={digest},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files[f"{info}/RECORD"] = record.getvalue().encode()
    target = out / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in files.items():
            entry = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return LocalWheel(MODULES_DISTRIBUTION, version, target, "the working directory's modules")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"

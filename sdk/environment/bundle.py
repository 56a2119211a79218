"""The bundle: the lock and the local wheels in one deterministic ``.tar.gz``, keyed by content, built once.

``build_bundle(env, arch)`` looks the environment up by its *input key* (a hash of the Python minor, the target
platform, the uv version, the package indexes, every package's pin, commit or source hash, the lock file and the
modules): a known key reuses the bundle built before, with no resolution and no build. The bundle's own sha256
(``hash``) names it everywhere after: the S3 object, its ``vmguard:env-hash`` tag, the VMs' check of what they
downloaded, the sandbox's venv cache.

Cache: ``$VMGUARD_CACHE_DIR`` or ``~/.cache/vmguard`` (``bundles/<input key>/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdk.environment.capture import CapturedEnvironment
from sdk.environment.indexes import check_indexes, client_indexes
from sdk.environment.lock import (
    CRITICAL,
    WHEELS_DIR,
    lock_file_sources,
    python_platform,
    resolve,
    uv_binary,
    uv_version,
)
from sdk.environment.wheels import (
    build_local_wheels,
    file_hash,
    modules_hash,
    normalize_arch,
    package_fingerprint,
    source_hash,
)

CACHE_ENV = "VMGUARD_CACHE_DIR"
FORMAT = 1
"""Bumped when the bundle's layout changes, so old cache entries are not reused."""
REQUIREMENTS = "requirements.txt"
MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """``$VMGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmguard`` or ``~/.cache/vmguard``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmguard"


@dataclass(frozen=True)
class Bundle:
    """A built environment for Linux VMs of one architecture."""

    path: Path
    """The ``.tar.gz``: ``requirements.txt``, ``manifest.json``, ``wheels/*.whl``."""
    hash: str
    """sha256 of the file."""
    key: str
    """The input key it was built for."""
    arch: str
    python: str
    """The Python minor."""
    uv: str
    """The uv version that resolved it (the VMs install the same)."""
    requirements: str
    packages: dict[str, str]
    """name → version of everything the VMs get."""
    reused: bool = False
    """True when it came from the cache (nothing resolved or built this time)."""
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def environment_key(env: CapturedEnvironment, arch: str, uv: str) -> str:
    """The input key (see the module's doc)."""
    uv_ver = uv_version(uv)
    parts = {
        "format": FORMAT,
        "python": env.python_minor,
        "platform": python_platform(arch),
        "uv": uv_ver,
        "indexes": client_indexes().arguments(),
        "packages": sorted(package_fingerprint(p) for p in _packages_to_carry(env, uv)),
        "modules": modules_hash(env.modules, env.workdir) if env.modules else None,
        "lock_file": (env.lock_file.name, env.lock_file.read_text(errors="replace")) if env.lock_file else None,
        "lock_sources": ([source_hash(path) for path in lock_file_sources(env.lock_file, uv)]
                         if env.lock_file else None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_bundle(env: CapturedEnvironment, arch: str, *, cache: Path | None = None, uv: str | None = None) -> Bundle:
    """The bundle of ``env`` for Linux VMs of ``arch``: from the cache when the inputs are unchanged.

    The package indexes are checked first, even for a cached bundle: one that now needs credentials is refused.
    """
    arch = normalize_arch(arch)
    check_indexes(client_indexes())
    uv = uv or uv_binary()
    key = environment_key(env, arch, uv)
    home = (cache or cache_dir()) / "bundles" / key
    cached = _load(home, key)
    if cached is not None:
        return cached
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmguard-env-", dir=home.parent) as tmp:
        work = Path(tmp)
        carried = dataclasses.replace(env, packages=_packages_to_carry(env, uv))
        sources = lock_file_sources(env.lock_file, uv) if env.lock_file else ()
        known = {str(Path(p.source).resolve()) for p in carried.packages if p.source}
        sources = tuple(s for s in sources if str(s) not in known)
        wheels = build_local_wheels(carried, arch, work / WHEELS_DIR, uv, extra_sources=sources)
        lock = resolve(env, arch, wheels, work / "resolve", uv=uv)
        notes = list(env.notes)
        if lock.built_on_vm:
            notes.append(f"published as source only, built on the VMs: {', '.join(lock.built_on_vm)}")
        manifest = {
            "format": FORMAT, "key": key, "arch": arch, "python": lock.python, "platform": lock.platform,
            "uv": uv_version(uv), "packages": lock.pins, "dropped": list(lock.dropped), "notes": notes,
            "wheels": sorted(w.path.name for w in wheels),
            "files": {p.name: list(p.wheels) for p in lock.packages},
        }
        requirements = lock.requirements_text()
        archive = work / "bundle.tar.gz"
        _write_archive(archive, requirements, manifest, [w.path for w in wheels])
        digest = file_hash(archive)
        staged = work / "done"
        staged.mkdir()
        shutil.move(str(archive), staged / "bundle.tar.gz")
        (staged / "bundle.json").write_text(json.dumps(manifest | {"hash": digest, "requirements": requirements},
                                                       indent=1, sort_keys=True))
        if home.exists():  # another process built the same key meanwhile: keep theirs
            shutil.rmtree(staged)
        else:
            with contextlib.suppress(OSError):
                staged.rename(home)
    built = _load(home, key)
    assert built is not None
    return dataclasses.replace(built, reused=False)


def _packages_to_carry(env: CapturedEnvironment, uv: str) -> tuple:
    """The packages whose content goes into the bundle's key and wheels: with a lock file, only its editable
    projects (built separately) and the SDK and Dask; without one, all of them."""
    if env.lock_file is None:
        return env.packages
    return tuple(p for p in env.packages if p.name in CRITICAL)


def _load(home: Path, key: str) -> Bundle | None:
    meta_path, archive = home / "bundle.json", home / "bundle.tar.gz"
    if not (meta_path.is_file() and archive.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("format") != FORMAT or meta.get("key") != key or file_hash(archive) != meta.get("hash"):
        return None
    return Bundle(path=archive, hash=meta["hash"], key=key, arch=meta["arch"], python=meta["python"],
                  uv=meta["uv"], requirements=meta["requirements"], packages=meta["packages"], reused=True,
                  notes=tuple(meta.get("notes", ())))


def _write_archive(target: Path, requirements: str, manifest: dict, wheels: list[Path]) -> None:
    """A reproducible tar.gz: sorted entries, no timestamps, no owners."""
    members: list[tuple[str, bytes | Path]] = [(REQUIREMENTS, requirements.encode()),
                                                (MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())]
    members += [(f"{WHEELS_DIR}/{path.name}", path) for path in sorted(wheels, key=lambda p: p.name)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with target.open("wb") as out, gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())


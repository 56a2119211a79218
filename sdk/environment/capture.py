"""Capture: which Python this is and every distribution it has installed, each classified by where it came from.

``capture()`` reads the running interpreter (or, with ``python=``, another one, through its ``sys.path``) with
``importlib.metadata`` and sorts each distribution by its origin:

- ``index``: installed from a package index (no ``direct_url.json``, or an ``archive_info`` pointing at an index);
- ``editable``: ``pip install -e`` / ``uv pip install -e`` (PEP 610 ``dir_info.editable``, or an old-style
  ``.egg-info`` in a source tree);
- ``local``: installed (not editable) from a local directory (``dir_info``);
- ``archive``: installed from a wheel or sdist file or URL (``archive_info``);
- ``vcs``: installed from git (``vcs_info``: its exact commit is kept);
- ``conda``: installed by conda (``INSTALLER`` says ``conda``): replicated from PyPI at the same version, if PyPI
  has it.

Also captured: the working directory's importable top-level ``.py`` modules and packages (folders with an
``__init__.py``: their ``.py`` files, recursively; a function that imports ``helpers`` or ``mypkg.sub`` runs on
the VMs too), the conda packages that are not Python distributions at all (system
libraries a VM will not have; reported), and a ``uv.lock`` or fully pinned requirements file in the working
directory, which, when present, is the source of truth instead of what is installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from sdk.errors import SdkError

Kind = Literal["index", "editable", "local", "archive", "vcs", "conda"]
LOCAL_KINDS = frozenset({"editable", "local"})
LOCK_FILES = ("uv.lock", "requirements.lock", "requirements-lock.txt", "requirements.txt")
"""Looked for in the working directory, in this order; a requirements file counts only when fully pinned."""
SKIPPED_MODULES = frozenset({"setup.py", "conftest.py", "noxfile.py", "fabfile.py"})
MAX_MODULE_BYTES = 1024 * 1024
"""A working directory's .py file larger than this is data, not a module: it is not carried."""
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "venv", "env", "build", "dist", "__pycache__",
                          "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".nox",
                          ".ipynb_checkpoints", ".hypothesis"})
"""Folders that are never code to carry: version control, virtualenvs, caches, build output."""

_NAME_NORMALIZE = re.compile(r"[-_.]+")
_PINNED_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*(===?\s*[^\s;,]+|@\s*\S+)\s*(;.*)?$")


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``Foo_Bar.baz`` → ``foo-bar-baz``."""
    return _NAME_NORMALIZE.sub("-", name).lower()


@dataclass(frozen=True)
class Package:
    """One installed distribution."""

    name: str
    """Canonical (PEP 503) name."""
    version: str
    kind: Kind
    source: str | None = None
    """editable/local: the source directory; archive: the file path or URL; vcs: the repository URL."""
    commit: str | None = None
    """vcs: the exact commit installed."""
    subdirectory: str | None = None
    """vcs/local: the project's subdirectory within the source, if any."""
    requires: tuple[str, ...] = ()
    """Canonical names this distribution depends on here (requirements whose marker holds, extras left out)."""

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def is_local_file(self) -> bool:
        """An archive that is a file on this machine (a VM cannot reach it: it is carried)."""
        return self.kind == "archive" and bool(self.source) and not _is_remote(self.source or "")

    def requirement(self) -> str:
        """How the resolver is asked for exactly this distribution (local ones are built into wheels first)."""
        if self.kind == "vcs":
            sub = f"#subdirectory={self.subdirectory}" if self.subdirectory else ""
            return f"{self.name} @ git+{self.source}@{self.commit}{sub}"
        if self.kind == "archive" and self.source and _is_remote(self.source):
            return f"{self.name} @ {self.source}"
        return self.pin


@dataclass(frozen=True)
class CapturedEnvironment:
    """What ``capture()`` found."""

    python: str
    """The full interpreter version, e.g. ``3.11.7``."""
    packages: tuple[Package, ...]
    workdir: Path
    modules: tuple[Path, ...] = ()
    """The working directory's top-level .py modules and the .py files of its packages (paths under ``workdir``)."""
    lock_file: Path | None = None
    """A uv.lock or fully pinned requirements file in the working directory: the source of truth when set."""
    conda_system: tuple[str, ...] = ()
    """conda packages with no Python distribution (libraries like ``libgdal``): a VM gets none of them."""
    notes: tuple[str, ...] = field(default=())

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def get(self, name: str) -> Package | None:
        wanted = canonical(name)
        return next((p for p in self.packages if p.name == wanted), None)

    def of_kind(self, *kinds: Kind) -> tuple[Package, ...]:
        return tuple(p for p in self.packages if p.kind in kinds)

    def leaves(self) -> tuple[Package, ...]:
        """The distributions nothing else here depends on: what was asked for; the rest comes with them."""
        required = {name for p in self.packages for name in p.requires if name != p.name}
        return tuple(p for p in self.packages if p.name not in required)


def capture(python: str | os.PathLike[str] | None = None, workdir: str | os.PathLike[str] | None = None,
            *, use_lock_file: bool = True, paths: list[str] | None = None) -> CapturedEnvironment:
    """The environment of the running interpreter (or of the interpreter at ``python``) and of ``workdir``.

    ``workdir`` (default: the current directory) is where top-level modules and a lock file are looked for.
    ``paths``: read the distributions of these directories instead of the interpreter's ``sys.path``.
    """
    work = Path(workdir or os.getcwd()).resolve()
    if python is None:
        version = ".".join(str(part) for part in sys.version_info[:3])
        found_paths, prefix = list(sys.path), sys.prefix
    else:
        version, found_paths, prefix = _describe_interpreter(str(python))
    if paths is not None:
        found_paths, prefix = list(paths), str(Path(paths[0]).parent) if paths else prefix
    paths = found_paths
    paths = [p for p in paths if p and Path(p).resolve() != work]
    found = _distributions(paths)
    environment_markers = _marker_environment(python)
    packages = tuple(sorted((_package(dist, environment_markers) for dist in found), key=lambda p: p.name))
    lock_file = find_lock_file(work) if use_lock_file else None
    conda_system = _conda_system_packages(Path(prefix), {p.name for p in packages})
    notes: list[str] = []
    if conda_system:
        notes.append(f"conda packages that are not Python distributions are not replicated on the VMs: "
                     f"{', '.join(conda_system[:10])}{' …' if len(conda_system) > 10 else ''}")
    return CapturedEnvironment(python=version, packages=packages, workdir=work, modules=_modules(work, packages),
                               lock_file=lock_file, conda_system=conda_system, notes=tuple(notes))


def find_lock_file(workdir: Path) -> Path | None:
    """``uv.lock``, or the first fully pinned requirements file, in ``workdir``."""
    for name in LOCK_FILES:
        path = workdir / name
        if not path.is_file():
            continue
        if name == "uv.lock" or is_pinned(path.read_text(encoding="utf-8", errors="replace")):
            return path
    return None


def is_pinned(text: str) -> bool:
    """Every requirement of a requirements file is exact (``==``/``===`` or a direct ``@`` reference)."""
    seen = False
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("--hash", "--index-url", "--extra-index-url", "-i ", "--find-links", "-f ")):
            continue
        if line.startswith(("-e ", "--editable ")):
            seen = True
            continue
        if line.startswith("-") or not _PINNED_LINE.match(line.rstrip("\\").strip()):
            return False
        seen = True
    return seen


# -- reading distributions --------------------------------------------------------------------------------------------

def _describe_interpreter(python: str) -> tuple[str, list[str], str]:
    code = "import json, sys; print(json.dumps(['%d.%d.%d' % sys.version_info[:3], sys.path, sys.prefix]))"
    try:
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SdkError(f"cannot read the Python environment of {python}: {exc}") from exc
    version, paths, prefix = json.loads(out.stdout)
    return version, paths, prefix


def _marker_environment(python: str | os.PathLike[str] | None) -> dict[str, str] | None:
    """The PEP 508 marker values of that interpreter (None: this one's)."""
    if python is None:
        return None
    code = ("import json; from packaging.markers import default_environment as d; print(json.dumps(d()))")
    try:
        out = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode == 0:
        return json.loads(out.stdout)
    # no ``packaging`` there: the values that differ between two interpreters of one machine
    code = ("import json, platform, sys; print(json.dumps({'python_version': '%d.%d' % sys.version_info[:2], "
            "'python_full_version': platform.python_version(), 'implementation_name': sys.implementation.name}))")
    out = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    from packaging.markers import default_environment

    return default_environment() | json.loads(out.stdout)


def _distributions(paths: list[str]) -> list[metadata.Distribution]:
    """One distribution per name, the first on the path winning (as an import would)."""
    seen: set[str] = set()
    found = []
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"] if dist.metadata else None
        if not name or canonical(name) in seen:
            continue
        seen.add(canonical(name))
        found.append(dist)
    return found


def _package(dist: metadata.Distribution, markers: dict[str, str] | None) -> Package:
    name, version = canonical(dist.metadata["Name"]), dist.version
    requires = _requires(dist, markers)
    direct = _direct_url(dist)
    installer = (dist.read_text("INSTALLER") or "").strip().lower()
    if direct is not None:
        url = str(direct.get("url", ""))
        sub = direct.get("subdirectory")
        if "vcs_info" in direct:
            vcs = direct["vcs_info"]
            commit = vcs.get("commit_id") or vcs.get("requested_revision")
            if vcs.get("vcs", "git") != "git":
                raise SdkError(f"{name} was installed from {vcs.get('vcs')} ({url}); only git installs can be "
                               f"replicated: install it from an index or a git URL")
            return Package(name, version, "vcs", source=url, commit=commit, subdirectory=sub, requires=requires)
        if "dir_info" in direct:
            kind: Kind = "editable" if direct["dir_info"].get("editable") else "local"
            path = _file_path(url)
            if sub and path:
                path = str(Path(path) / sub)
            return Package(name, version, kind, source=path or url, requires=requires)
        if "archive_info" in direct:
            source = _file_path(url) or url
            return Package(name, version, "archive", source=source, subdirectory=sub, requires=requires)
    egg_source = _egg_link_source(dist)
    if egg_source is not None:
        return Package(name, version, "editable", source=str(egg_source), requires=requires)
    if installer == "conda":
        return Package(name, version, "conda", requires=requires)
    return Package(name, version, "index", requires=requires)


def _direct_url(dist: metadata.Distribution) -> dict | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _egg_link_source(dist: metadata.Distribution) -> Path | None:
    """An old-style editable install: the ``.egg-info`` sits in the project's own source tree."""
    base = dist.locate_file("")
    try:
        base_path = Path(str(base)).resolve()
    except OSError:
        return None
    if "site-packages" in base_path.parts or "dist-packages" in base_path.parts:
        return None
    if (base_path / "pyproject.toml").is_file() or (base_path / "setup.py").is_file():
        return base_path
    return None


def _requires(dist: metadata.Distribution, markers: dict[str, str] | None) -> tuple[str, ...]:
    from packaging.requirements import InvalidRequirement, Requirement

    names = []
    for text in dist.requires or ():
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None:
            values = dict(markers or {}) | {"extra": ""}
            try:
                if not requirement.marker.evaluate(values):
                    continue
            except Exception:  # noqa: BLE001 - an unknown marker variable: count the edge, to be safe
                pass
        names.append(canonical(requirement.name))
    return tuple(sorted(set(names)))


def _file_path(url: str) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return unquote(parsed.path)


def _is_remote(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _modules(workdir: Path, packages: tuple[Package, ...]) -> tuple[Path, ...]:
    """The working directory's top-level modules, then the .py files of its packages.

    A package inside the source of an installed local project is left out: that project's wheel carries it.
    """
    found = [path for path in sorted(workdir.glob("*.py")) if path.name not in SKIPPED_MODULES and _is_module(path)]
    installed = [Path(p.source).resolve() for p in packages if p.kind in LOCAL_KINDS and p.source]
    for folder in sorted(workdir.iterdir()):
        if _is_package(folder) and not any(source == folder or source in folder.parents for source in installed):
            found += _package_files(folder)
    return tuple(found)


def _is_module(path: Path) -> bool:
    """An importable .py file small enough to be code."""
    return (path.suffix == ".py" and path.stem.isidentifier() and path.is_file()
            and path.stat().st_size <= MAX_MODULE_BYTES)


def _is_package(folder: Path) -> bool:
    """An importable folder with an ``__init__.py`` that is not a cache, a build output or a virtualenv."""
    return (folder.is_dir() and folder.name.isidentifier() and folder.name not in SKIPPED_DIRS
            and (folder / "__init__.py").is_file() and not (folder / "pyvenv.cfg").exists())


def _package_files(package: Path) -> list[Path]:
    """The package's modules and those of its subpackages (importable subfolders), recursively, sorted."""
    found = []
    for root, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d.isidentifier() and d not in SKIPPED_DIRS
                         and not (Path(root) / d / "pyvenv.cfg").exists())
        found += [Path(root) / name for name in sorted(names) if _is_module(Path(root) / name)]
    return found


def _conda_system_packages(prefix: Path, python_names: set[str]) -> tuple[str, ...]:
    """conda packages of the environment at ``prefix`` that are not Python distributions (and not Python)."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return ()
    names = set()
    for record in meta.glob("*.json"):
        try:
            name = json.loads(record.read_text()).get("name")
        except (OSError, ValueError):
            continue
        if not name:
            continue
        if canonical(name) in python_names or name in ("python", "pip", "setuptools", "wheel"):
            continue
        names.add(name)
    return tuple(sorted(names))

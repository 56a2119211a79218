"""The package indexes: the ones this machine resolves against are the ones the VMs install from, credential-free.

``client_indexes()`` reads uv's index variables (``UV_DEFAULT_INDEX``, else the older ``UV_INDEX_URL``; ``UV_INDEX``
and ``UV_EXTRA_INDEX_URL``, space-separated, ``name=url`` allowed) or, when none is set, pip's
(``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``): uv ignores pip's, so an environment pip installed from a private
index would otherwise be resolved against PyPI. The lock is resolved with exactly these indexes (uv's own
variables removed, the flags given instead), and the VMs' ``requirements.txt`` names them (``--index-url``,
``--extra-index-url``), which their ``uv pip sync`` reads: the same index, the same files.

The lock travels in the user-data or in S3, so it must hold no secret, and stripping one would leave VMs that
cannot install: an index URL with credentials (``https://user:token@…``, a query string), one on this machine
(``file://``), or one that needs credentials (``UV_INDEX_<NAME>_USERNAME``/``_PASSWORD``, or an answer 401/403
to a request without any) is refused before launch (``check_indexes``). uv.toml and pip.conf are not read.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from sdk.errors import SdkError

UV_DEFAULTS = ("UV_DEFAULT_INDEX", "UV_INDEX_URL")
"""uv's default-index variables, the first set winning."""
UV_EXTRAS = ("UV_INDEX", "UV_EXTRA_INDEX_URL")
PIP_DEFAULT, PIP_EXTRA = "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"
VARIABLES = (*UV_DEFAULTS, *UV_EXTRAS, PIP_DEFAULT, PIP_EXTRA)
PROBE_TIMEOUT = 10.0
_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)=(?P<url>.+)$")


@dataclass(frozen=True)
class Index:
    """One index URL, where it was configured and, for uv's ``name=url``, its name."""

    url: str
    variable: str
    name: str | None = None

    @property
    def shown(self) -> str:
        """The URL without any credentials or query, for messages."""
        parsed = urlparse(self.url)
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}" if parsed.scheme else self.url


@dataclass(frozen=True)
class Indexes:
    """The default index (None: PyPI) and the extra ones, in uv's order of priority."""

    default: Index | None = None
    extra: tuple[Index, ...] = ()

    @property
    def all(self) -> tuple[Index, ...]:
        return ((self.default,) if self.default else ()) + self.extra

    def arguments(self) -> list[str]:
        """The flags of ``uv pip compile``, and of the lines of the VMs' requirements file."""
        flags = ["--index-url", self.default.url] if self.default else []
        for index in self.extra:
            flags += ["--extra-index-url", index.url]
        return flags

    def requirement_lines(self) -> list[str]:
        flags = self.arguments()
        return [f"{flag} {value}" for flag, value in zip(flags[::2], flags[1::2], strict=True)]


def client_indexes(environ: Mapping[str, str] | None = None) -> Indexes:
    """The indexes of this machine's uv variables, else of its pip variables (see the module's doc)."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name, "").strip() for name in (*UV_DEFAULTS, *UV_EXTRAS)):
        default = next((_parse(name, environ[name].split()[0]) for name in UV_DEFAULTS
                        if environ.get(name, "").strip()), None)
        extra = tuple(_parse(name, value) for name in UV_EXTRAS for value in environ.get(name, "").split())
    else:
        default = _parse(PIP_DEFAULT, environ[PIP_DEFAULT].strip()) if environ.get(PIP_DEFAULT, "").strip() else None
        extra = tuple(_parse(PIP_EXTRA, value) for value in environ.get(PIP_EXTRA, "").split())
    return Indexes(default, extra)


def _parse(variable: str, value: str) -> Index:
    """``url`` or uv's ``name=url``."""
    named = _NAMED.match(value)
    if named and "://" not in named["name"]:
        return Index(named["url"], variable, named["name"])
    return Index(value, variable)


def uv_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without the index variables: uv is given ``Indexes.arguments()`` instead."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k not in VARIABLES}


# -- the check ------------------------------------------------------------------------------------------------------

def check_indexes(indexes: Indexes, environ: Mapping[str, str] | None = None, probe: bool = True) -> None:
    """``SdkError`` (one line) for the first index the VMs could not use without this machine's credentials."""
    environ = os.environ if environ is None else environ
    for index in indexes.all:
        reason = credential_problem(index, environ) or (_probe_problem(index) if probe else None)
        if reason:
            raise SdkError(f"the package index {index.shown} (from {index.variable}) {reason}: the VMs install "
                           f"from the index this machine resolves against, and their lock holds no secret; make "
                           f"it reachable from the VMs without credentials (e.g. inside the VPC), or install "
                           f"those packages here from wheel files (they travel with the environment) and unset "
                           f"{index.variable}")


def credential_problem(index: Index, environ: Mapping[str, str]) -> str | None:
    """Why ``index`` is not a credential-free URL the VMs can reach, from its text alone; None if it is."""
    parsed = urlparse(index.url)
    if parsed.scheme not in ("http", "https"):
        return "is not an http(s) URL (the VMs cannot read this machine's files)"
    if parsed.username or parsed.password:
        return "carries credentials in its URL"
    if parsed.query or parsed.fragment:
        return "carries a query string (a token?) in its URL"
    if index.name:
        variable = f"UV_INDEX_{re.sub(r'[^A-Z0-9]', '_', index.name.upper())}"
        if environ.get(f"{variable}_USERNAME") or environ.get(f"{variable}_PASSWORD"):
            return f"needs credentials ({variable}_USERNAME/_PASSWORD are set)"
    return None


def _probe_problem(index: Index) -> str | None:
    """``needs credentials`` when the index answers 401/403 to a request without any; anything else is left to
    the resolution (an index this machine cannot reach fails it, with uv's message)."""
    url = index.url if index.url.endswith("/") else index.url + "/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html"})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT):  # noqa: S310 - http(s) only, checked above
            return None
    except urllib.error.HTTPError as exc:
        return f"needs credentials (it answers {exc.code} without them)" if exc.code in (401, 403) else None
    except (OSError, ValueError):
        return None

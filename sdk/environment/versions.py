"""The critical packages check: the client and every VM run the same Python minor, Dask, distributed,
cloudpickle, msgpack and vmguard, or the client says exactly which differs and what to do.

Functions travel pickled by cloudpickle, messages by msgpack, and Dask's protocol changes between releases: a
mismatch fails later in confusing ways (a task that cannot be unpickled, a hung handshake). ``check_versions``
asks Dask for the versions of the scheduler and every worker (``Client.get_versions``) and raises one line.
"""

from __future__ import annotations

from typing import Any

from sdk.errors import SdkError

CRITICAL_PACKAGES = ("python", "dask", "distributed", "cloudpickle", "msgpack", "vmguard")


def check_versions(client: Any) -> dict[str, Any]:
    """Compare the client's critical versions with the scheduler's and every worker's; ``SdkError`` on a mismatch.

    Returns Dask's versions dictionary (``client.get_versions(packages=["vmguard"])``).
    """
    versions = client.get_versions(check=False, packages=["vmguard"])
    compare_versions(versions)
    return versions


def compare_versions(versions: dict[str, Any]) -> None:
    """The check of :func:`check_versions` on a ``get_versions()`` dictionary."""
    mine = versions.get("client", {}).get("packages", {})
    remotes = [("the scheduler", versions.get("scheduler") or {})]
    remotes += [(f"worker {address}", info or {}) for address, info in sorted((versions.get("workers") or {}).items())]
    for package in CRITICAL_PACKAGES:
        here = _version(mine, package)
        differing = [(where, _version(info.get("packages", {}), package)) for where, info in remotes]
        differing = [(where, there) for where, there in differing if there != here]
        if not differing:
            continue
        where, there = differing[0]
        more = f" (and {len(differing) - 1} more VM(s))" if len(differing) > 1 else ""
        label = "Python" if package == "python" else package
        raise SdkError(f"{label} is {here or 'missing'} here but {there or 'missing'} on {where}{more}: the client "
                       f"and the VMs must run the same {label}; {_advice(package, there)}")


def _version(packages: dict[str, Any], name: str) -> str | None:
    value = packages.get(name)
    if value is None:
        return None
    if name == "python":  # "3.11.7.final.0" → the minor
        return ".".join(str(value).split(".")[:2])
    return str(value)


def _advice(package: str, there: str | None) -> str:
    relaunch = "or close this cluster and launch it again from this environment (the VMs then get it)"
    if package == "python":
        return f"use a Python {there} environment here, {relaunch}" if there else relaunch
    if there:
        return f"install {package}=={there} here, {relaunch}"
    return relaunch

"""The VMs run your environment: the local Python environment, replicated exactly on Linux VMs, without Docker.

    ref = prepare_environment(arch="aarch64", owner="alice")                          # before launch
    config["environment"] = ref.to_config()                                           # each VM's config
    ...
    check_versions(client)                                                            # once connected

Four steps, one module each:

- :mod:`~sdk.environment.capture`: this interpreter's Python and every installed distribution, classified (index,
  editable, local, archive, git, conda), the working directory's modules and packages, a ``uv.lock`` or pinned
  requirements;
- :mod:`~sdk.environment.lock` (with :mod:`~sdk.environment.wheels` and :mod:`~sdk.environment.indexes`): an exact
  lock for the VMs' platform by uv against this machine's package indexes, local code as wheels, a package with no
  wheel for the target, a local wheel for another platform, an index with credentials reported before launch;
- :mod:`~sdk.environment.bundle` and :mod:`~sdk.environment.ship`: lock + wheels in one archive keyed by content
  (cached: an unchanged environment is not resolved, built or uploaded again), inline in the user-data or in S3;
- :mod:`~sdk.environment.install`: uv and a fresh venv on the VM (``sdk.bootstrap`` writes the steps), and
  :mod:`~sdk.environment.versions`: the critical packages check once the client is connected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk.environment.bundle import Bundle, build_bundle, cache_dir
from sdk.environment.capture import CapturedEnvironment, Package, capture
from sdk.environment.install import install, install_commands
from sdk.environment.lock import Lock, python_platform, uv_binary
from sdk.environment.ship import EnvironmentRef, refresh_url, s3_client, ship
from sdk.environment.versions import CRITICAL_PACKAGES, check_versions, compare_versions
from sdk.environment.wheels import normalize_arch

__all__ = [
    "CRITICAL_PACKAGES",
    "Bundle",
    "CapturedEnvironment",
    "EnvironmentRef",
    "Lock",
    "Package",
    "build_bundle",
    "cache_dir",
    "capture",
    "check_versions",
    "compare_versions",
    "install",
    "install_commands",
    "normalize_arch",
    "prepare_environment",
    "python_platform",
    "refresh_url",
    "s3_client",
    "ship",
    "uv_binary",
]


def prepare_environment(*, arch: str, owner: str, s3: Any = None, location: str | None = None,
                        boot_timeout_seconds: float | None = None, python: str | None = None,
                        workdir: str | Path | None = None, cache: Path | None = None,
                        environment: CapturedEnvironment | None = None) -> EnvironmentRef:
    """Capture, lock, bundle and ship this environment for Linux VMs of ``arch`` (``x86_64``/``aarch64``).

    ``owner`` tags the S3 object; ``location`` (``s3://bucket/prefix/``, default ``$VMGUARD_ENV_S3``) is needed
    only when the bundle is too large to go inline, and ``s3`` is the client it is shipped with (default:
    ``ship.s3_client()``, which presigns with SigV4 as the VMs' download needs); the presigned URL lives
    ``2 × boot_timeout_seconds``. ``python``: another interpreter's environment
    instead of this one's; ``environment``: an already captured one. Raises ``SdkError`` (one line) for what
    cannot be replicated: a local wheel for another platform or architecture, a package with no wheel for the
    target, a conda-only package, a package index that needs credentials.
    """
    env = environment or capture(python, workdir)
    bundle = build_bundle(env, arch, cache=cache)
    expires = int(2 * boot_timeout_seconds) if boot_timeout_seconds else None
    return ship(bundle, owner=owner, s3=s3, location=location, url_expires_seconds=expires)

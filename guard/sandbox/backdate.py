"""Creation times in the past: the one part of seeding done on moto's objects rather than over HTTP.

Neither AWS nor moto can create a resource in the past, but a forgotten volume is by definition old.
So after a resource is created over HTTP, its ``create_time`` / ``launch_time`` is moved back on the
in-process backend (moto keeps them as naive UTC datetimes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from guard.sandbox.server import SandboxError, in_this_process, sandbox_client


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(timezone.utc).replace(tzinfo=None)


def backdate(endpoint_url: str, region: str, *, instances: Mapping[str, datetime] | None = None,
             volumes: Mapping[str, datetime] | None = None) -> None:
    """Set instances' launch times and volumes' creation times of a sandbox served by this process."""
    if not in_this_process(endpoint_url):
        raise SandboxError(f"{endpoint_url} is not a SandboxServer of this process: creation times cannot be "
                           "backdated there")
    from moto.ec2.models import ec2_backends

    account_id = sandbox_client(endpoint_url, "sts", region).get_caller_identity()["Account"]
    backend = ec2_backends[account_id][region]
    for instance_id, launched_at in (instances or {}).items():
        backend.get_instance(instance_id).launch_time = _naive_utc(launched_at)
    for volume_id, created_at in (volumes or {}).items():
        backend.get_volume(volume_id).create_time = _naive_utc(created_at)

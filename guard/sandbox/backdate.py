"""Creation times in the past: the one part of seeding done on moto's objects rather than over HTTP.

Neither AWS nor moto can create a resource in the past, but a forgotten volume is by definition old.
So after a resource is created over HTTP, its ``create_time`` / ``launch_time`` / ``start_time`` is moved
back on the in-process backend (moto keeps them as naive UTC datetimes), and a stopped instance's
state transition reason is rewritten with an earlier stop time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from guard.sandbox.server import SandboxError, in_this_process, seeding_client


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(timezone.utc).replace(tzinfo=None)


def backdate(endpoint_url: str, region: str, *, instances: Mapping[str, datetime] | None = None,
             volumes: Mapping[str, datetime] | None = None, snapshots: Mapping[str, datetime] | None = None,
             nat_gateways: Mapping[str, datetime] | None = None, stopped: Mapping[str, datetime] | None = None) -> None:
    """Set launch, creation, snapshot start and stop times of resources of a sandbox served by this process."""
    if not in_this_process(endpoint_url):
        raise SandboxError(f"{endpoint_url} is not a SandboxServer of this process: creation times cannot be "
                           "backdated there")
    from moto.ec2.models import ec2_backends

    account_id = seeding_client(endpoint_url, "sts", region).get_caller_identity()["Account"]
    backend = ec2_backends[account_id][region]
    for instance_id, launched_at in (instances or {}).items():
        backend.get_instance(instance_id).launch_time = _naive_utc(launched_at)
    for volume_id, created_at in (volumes or {}).items():
        backend.get_volume(volume_id).create_time = _naive_utc(created_at)
    for snapshot_id, started_at in (snapshots or {}).items():
        backend.get_snapshot(snapshot_id).start_time = _naive_utc(started_at)
    for gateway_id, created_at in (nat_gateways or {}).items():
        backend.nat_gateways[gateway_id]._created_at = _naive_utc(created_at)
    for instance_id, stopped_at in (stopped or {}).items():
        # what AWS (and moto) write on StopInstances: "User initiated (YYYY-MM-DD HH:MM:SS UTC)"
        backend.get_instance(instance_id)._reason = f"User initiated ({_naive_utc(stopped_at):%Y-%m-%d %H:%M:%S} UTC)"

"""The user-data every VM of a cluster boots with: a bash script that is the VM's dead-man switch.

On boot it arms ``shutdown -h +<max_lifetime>`` (a hard cap nothing can extend), learns its own private address
through IMDSv2, runs the on-VM agent ``python3 -m sdk.vm`` (the Dask scheduler or worker, which exits when no client
has been connected for ``keepalive``, when idle for ``idle_timeout``, or when its scheduler is gone) and then
``shutdown -h now``. With ``InstanceInitiatedShutdownBehavior=terminate`` each shutdown terminates the VM.

User-data is readable by anything on the VM that can reach the metadata service, so it holds no secret: the
config is the cluster's id, ports, timeouts and log level, and ``user_data`` refuses keys that look like secrets.
The config is also on one line ``# vmguard-vm-config: <json>`` so a runner can read it without running bash.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk.spec import ClusterSpec

CONFIG_PREFIX = "# vmguard-vm-config: "
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
MAX_USER_DATA_BYTES = 16 * 1024
"""EC2's limit on user-data (before base64)."""
ROLES = ("scheduler", "worker")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|access_?key|private_?key|api_?key", re.I)
_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]-]+:\d{1,5}$")
IMDS = "http://169.254.169.254"


def vm_config(spec: ClusterSpec, role: str, cluster_id: str) -> dict[str, Any]:
    """The on-VM agent's config for one role of a cluster (what ``python -m sdk.vm --config`` reads)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return {
        "role": role,
        "cluster_id": cluster_id,
        "scheduler_port": SCHEDULER_PORT,
        "dashboard_port": DASHBOARD_PORT,
        "keepalive_seconds": spec.keepalive_seconds,
        "idle_timeout_seconds": spec.idle_timeout_seconds,
        "max_lifetime_seconds": spec.max_lifetime_seconds,
        "log_level": spec.log_level,
        "nthreads": None,
        "memory_limit": "auto",
    }


def read_config(script: str) -> dict[str, Any] | None:
    """The config of a user-data script written by :func:`user_data`, or None if it has none."""
    for line in script.splitlines():
        if line.startswith(CONFIG_PREFIX):
            return json.loads(line[len(CONFIG_PREFIX):])
    return None


def user_data(config: dict[str, Any], scheduler_address: str | None) -> str:
    """The boot script for one VM; ``scheduler_address`` (``host:port``) is given to workers only."""
    _check(config, scheduler_address)
    line = json.dumps(config, sort_keys=True, separators=(",", ":"))
    max_lifetime = config.get("max_lifetime_seconds")
    agent = ["python3", "-m", "sdk.vm", "--config", line]
    scheduler = f" --scheduler {shlex.quote(scheduler_address)}" if scheduler_address else ""
    lines = [
        "#!/bin/bash",
        "# vmguard: one VM of a guarded Dask cluster. No secrets here: user-data is readable on the VM.",
        f"{CONFIG_PREFIX}{line}",
        "set -u",
        "exec >>/var/log/vmguard-boot.log 2>&1",
    ]
    if max_lifetime:
        minutes = max(1, math.ceil(max_lifetime / 60))
        lines.append(f"shutdown -h +{minutes} 'vmguard: max_lifetime reached' || "
                     f"(sleep {minutes * 60} && shutdown -h now) &")
    lines += [
        "# IMDSv2 (hop limit 1): a session token first, then this VM's private address to bind the agent to",
        "for attempt in $(seq 1 30); do",
        f"  IMDS_TOKEN=$(curl -sf -X PUT {IMDS}/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
        " && break",
        "  sleep 2",
        "done",
        f"HOST=$(curl -sf -H \"X-aws-ec2-metadata-token: ${{IMDS_TOKEN:-}}\" {IMDS}/latest/meta-data/local-ipv4)",
        f"{shlex.join(agent)} --host \"${{HOST:-0.0.0.0}}\"{scheduler}",
        "echo \"vmguard: agent exited with $?; powering off\"",
        "shutdown -h now",
        "",
    ]
    script = "\n".join(lines)
    if len(script.encode()) > MAX_USER_DATA_BYTES:
        raise ValueError(f"user-data is {len(script.encode())} bytes, above EC2's {MAX_USER_DATA_BYTES}")
    return script


def _check(config: dict[str, Any], scheduler_address: str | None) -> None:
    """No secrets, one of the two roles, a worker knows its scheduler."""
    secret = [key for key in _walk_keys(config) if _SECRET_KEY.search(key)]
    if secret:
        raise ValueError(f"user-data must not carry secrets (it is readable on the VM); drop {', '.join(secret)}")
    role = config.get("role")
    if role not in ROLES:
        raise ValueError(f"config role must be one of {ROLES}, not {role!r}")
    if role == "worker" and not scheduler_address:
        raise ValueError("a worker's user-data needs the scheduler's address (host:port)")
    if scheduler_address and not _ADDRESS.match(scheduler_address):
        raise ValueError(f"scheduler_address {scheduler_address!r} must be host:port")


def _walk_keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [str(key) for key in value] + [k for item in value.values() for k in _walk_keys(item)]
    if isinstance(value, list):
        return [k for item in value for k in _walk_keys(item)]
    return []

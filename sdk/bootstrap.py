"""The user-data every VM of a cluster boots with: a bash script that is the VM's dead-man switch.

On boot it arms ``shutdown -h +<max_lifetime>`` (a hard cap nothing can extend), learns its own private address
through IMDSv2, runs the on-VM agent ``python3 -m sdk.vm`` (the Dask scheduler or worker, which exits when no client
has been connected for ``keepalive``, when idle for ``idle_timeout``, or when its scheduler is gone) and then
``shutdown -h now``. With ``InstanceInitiatedShutdownBehavior=terminate`` each shutdown terminates the VM.
Everything the script and the agent print goes to ``/var/log/vmguard-boot.log`` and to the serial console, so a VM
that failed to boot leaves its last words in ``GetConsoleOutput`` after it is gone (``sdk.console``).

User-data is readable by anything on the VM that can reach the metadata service, so it holds no secret: the
config is the cluster's id, ports, timeouts and log level, and ``user_data`` refuses keys that look like secrets.
The config is also on one line ``# vmguard-vm-config: <json>`` so a runner can read it without running bash.

With an ``environment`` entry in the config (``sdk.environment.EnvironmentRef.to_config()``), the VM first
replicates the client's Python environment: it gets the bundle (from its presigned S3 URL, or from the
user-data itself when it is small enough to be inline), checks its sha256, installs uv (the client's version),
and runs ``sdk.environment.install_commands``: a fresh venv with exactly the lock, no bytecode compiled. The agent
then runs from that venv. An install that fails powers the VM off, as the agent's exit does. An inline bundle
is written once, as base64 in a ``VMGUARD_BUNDLE`` here-document; the config line then says ``"inline": true`` in
its place. Without an ``environment``, the script assumes ``python3`` with vmguard.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import textwrap
from typing import TYPE_CHECKING, Any

from sdk.environment.install import VM_ROOT, VM_UV, VM_VENV, install_commands

if TYPE_CHECKING:
    from sdk.spec import ClusterSpec

CONFIG_PREFIX = "# vmguard-vm-config: "
BOOT_LOG = "/var/log/vmguard-boot.log"
CONSOLE = "/dev/console"
"""The kernel's console: on EC2 the serial console, which ``ec2:GetConsoleOutput`` returns (its last 64 KB)."""
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
MAX_USER_DATA_BYTES = 16 * 1024
"""EC2's limit on user-data (before base64)."""
ROLES = ("scheduler", "worker")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|access_?key|private_?key|api_?key", re.I)
_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]-]+:\d{1,5}$")
IMDS = "http://169.254.169.254"
BUNDLE_HEREDOC = "VMGUARD_BUNDLE"
UV_INSTALLER = "https://astral.sh/uv/{version}/install.sh"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")


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


def agent_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config the agent itself is started with: the environment's reference only by its hash (the agent
    runs inside it; the bundle's URL or payload is for the install steps)."""
    environment = config.get("environment")
    if not isinstance(environment, dict):
        return config
    return config | {"environment": {"hash": environment.get("hash")}}


def read_inline_bundle(script: str) -> bytes | None:
    """The inline environment bundle of a user-data script written by :func:`user_data`, or None."""
    import base64

    lines = script.splitlines()
    start = next((i for i, line in enumerate(lines) if f"<<'{BUNDLE_HEREDOC}'" in line), None)
    if start is None:
        return None
    end = lines.index(BUNDLE_HEREDOC, start + 1)
    return base64.b64decode("".join(line.strip() for line in lines[start + 1:end]))


def read_config(script: str) -> dict[str, Any] | None:
    """The config of a user-data script written by :func:`user_data`, or None if it has none."""
    for line in script.splitlines():
        if line.startswith(CONFIG_PREFIX):
            return json.loads(line[len(CONFIG_PREFIX):])
    return None


def user_data(config: dict[str, Any], scheduler_address: str | None) -> str:
    """The boot script for one VM; ``scheduler_address`` (``host:port``) is given to workers only."""
    _check(config, scheduler_address)
    environment = config.get("environment")
    inline: str | None = None
    if environment is not None:
        _check_environment(environment)
        if isinstance(environment.get("inline"), str):
            inline = environment["inline"]
            config = config | {"environment": {k: v for k, v in environment.items() if k != "inline"}
                               | {"inline": True}}
    line = json.dumps(config, sort_keys=True, separators=(",", ":"))
    max_lifetime = config.get("max_lifetime_seconds")
    python = f"{VM_VENV}/bin/python" if environment is not None else "python3"
    agent = [python, "-m", "sdk.vm", "--config", json.dumps(agent_config(config), sort_keys=True,
                                                            separators=(",", ":"))]
    scheduler = f" --scheduler {shlex.quote(scheduler_address)}" if scheduler_address else ""
    lines = [
        "#!/bin/bash",
        "# vmguard: one VM of a guarded Dask cluster. No secrets here: user-data is readable on the VM.",
        f"{CONFIG_PREFIX}{line}",
        "set -u",
        f"exec > >(tee -a {BOOT_LOG} {CONSOLE} >/dev/null) 2>&1",
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
    ]
    if environment is not None:
        lines += _environment_lines(environment, inline)
    lines += [
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


def _check_environment(environment: object) -> None:
    if not isinstance(environment, dict):
        raise ValueError("config environment must be a dict (EnvironmentRef.to_config())")
    if not _HASH.match(str(environment.get("hash", ""))):
        raise ValueError("config environment needs the bundle's sha256 as 'hash'")
    for key in ("python", "uv"):
        if not _VERSION.match(str(environment.get(key, ""))):
            raise ValueError(f"config environment needs a version as {key!r}, not {environment.get(key)!r}")
    url, inline = environment.get("url"), environment.get("inline")
    if not (isinstance(inline, str) or (isinstance(url, str) and url.startswith(("https://", "http://")))):
        raise ValueError("config environment needs the bundle: a presigned 'url' or an 'inline' base64 payload")


def _environment_lines(environment: dict[str, Any], inline: str | None) -> list[str]:
    """Fetch and check the bundle, install uv, create the venv: the agent then runs from it."""
    bundle_dir = f"{VM_ROOT}/bundle"
    installer = UV_INSTALLER.format(version=environment["uv"])
    lines = [
        f"# the environment {environment['hash'][:12]}: uv {environment['uv']}, then a fresh venv of Python "
        f"{environment['python']} with exactly the lock (no bytecode compiled)",
        'vmguard_failed() { echo "vmguard: $1 failed; powering off"; shutdown -h now; exit 1; }',
        f"mkdir -p {VM_ROOT}/bin {bundle_dir} && cd {bundle_dir} || vmguard_failed mkdir",
    ]
    if inline is not None:
        lines += [f"base64 -d > bundle.tar.gz <<'{BUNDLE_HEREDOC}' || vmguard_failed 'decoding the bundle'",
                  *textwrap.wrap(inline, 76), BUNDLE_HEREDOC]
    else:
        lines.append(f"curl -fsSL --retry 8 --retry-all-errors -o bundle.tar.gz {shlex.quote(environment['url'])}"
                     " || vmguard_failed 'downloading the bundle'")
    lines += [
        f"echo {shlex.quote(environment['hash'] + '  bundle.tar.gz')} | sha256sum -c - "
        "|| vmguard_failed 'checking the bundle'",
        "tar -xzf bundle.tar.gz || vmguard_failed 'unpacking the bundle'",
        f"export HOME=${{HOME:-/root}} UV_CACHE_DIR={VM_ROOT}/uv-cache UV_PYTHON_INSTALL_DIR={VM_ROOT}/python",
        "# uv's own installer, else uv from PyPI with the image's pip (an image with uv there already skips both)",
        f"[ -x {VM_UV} ] || {{ {{ curl -LsSf --retry 5 -o {VM_ROOT}/uv-install.sh {installer} && "
        f"env UV_UNMANAGED_INSTALL={VM_ROOT}/bin sh {VM_ROOT}/uv-install.sh; }} || "
        f"{{ python3 -m pip install --quiet --target {VM_ROOT}/uv-pip uv=={environment['uv']} && "
        f"ln -sf {VM_ROOT}/uv-pip/bin/uv {VM_UV}; }}; }} && {VM_UV} --version || vmguard_failed 'installing uv'",
        *(f"{shlex.join(command)} || vmguard_failed {shlex.quote(' '.join(command[1:3]))}"
          for command in install_commands(VM_VENV, str(environment["python"]), VM_UV)),
        "cd /",
    ]
    return lines


def _walk_keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [str(key) for key in value] + [k for item in value.values() for k in _walk_keys(item)]
    if isinstance(value, list):
        return [k for item in value for k in _walk_keys(item)]
    return []

"""The sandbox's data plane: each launched cluster VM is a local process, bound to its own loopback address.

On EC2 an instance's user-data starts the on-VM agent (``python -m sdk.vm``) and powers the VM off when the
agent exits; the emulator only keeps records. ``VmRunner`` stands in for the hardware: it watches the emulated
account for instances whose user-data carries a ``# vmguard-vm-config: <json>`` line, gives each its own
loopback address (127.a.b.c, all of 127.0.0.0/8 is loopback) as BOTH its private and its public IP in the
emulator, and runs the agent for it as a local process bound to that address. So a client connects to
``<public ip>:8786`` in the sandbox exactly as on AWS, and the dead-man switch is real:

- the process exits (keepalive, idle timeout, max lifetime, a crash) → the runner terminates the instance through
  the EC2 API, as ``InstanceInitiatedShutdownBehavior=terminate`` does on AWS after ``shutdown -h now``;
- the instance is stopped or terminated, by anyone (or the account is reset) → its process gets SIGTERM, then
  SIGKILL ``KILL_AFTER_SECONDS`` later.

A VM whose config carries an ``environment`` (the client's environment, replicated: see ``sdk.environment``)
boots like one on EC2: the runner gets the bundle the same way (the presigned URL, or the user-data's inline
copy), checks its sha256 and installs it with the same function the user-data's steps come from
(``sdk.environment.install``) into a venv cached by the bundle's hash (``env_dir``; built once, shared by every
VM of that environment, across runs). The agent then runs from that venv's Python, with none of this process's
``PYTHONPATH`` or virtualenv: the VM's code is what the environment holds. A VM of another architecture (an
``m7g``) gets the same pinned versions built for this machine. An install that fails powers the VM off: its
instance is terminated. Without an ``environment``, the agent runs on this process's interpreter.

A worker's scheduler is the ``--scheduler <host:port>`` of its user-data, whose host is the address the SDK read
from the emulator: the scheduler's new loopback address, or the address moto gave it at launch if the SDK read it
before the runner got to the scheduler (the runner maps both); failing that, the scheduler of the same cluster.

A VM's output (its log, ``<instance id>.log`` in ``log_dir``) is its serial console: the runner answers
``ec2:GetConsoleOutput`` for its instances in EC2's wire format (the last ``CONSOLE_BYTES``, base64), where moto
would answer canned text, and leaves other instances to moto.

The runner reads the account on moto's in-process objects (the emulator must be served by this process): its
polling is the hardware looking at itself, not an AWS client, and so never shows in the request log; the only
AWS request it makes is the TerminateInstances of a VM that powered itself off. Nothing outside guard/sandbox/
knows about it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from guard.sandbox.server import Reply, SandboxError, ServedRequest, in_this_process, sandbox_client, serving

log = logging.getLogger(__name__)

CONFIG_MARK = "# vmguard-vm-config:"
"""The user-data line that makes an instance a vmguard VM: this prefix, then the agent's JSON config."""
POLL_SECONDS = 0.2
KILL_AFTER_SECONDS = 5.0
"""How long a process has to end after SIGTERM before it gets SIGKILL."""
MAX_PROCESSES = 48
"""At most this many VM processes at once (each is a Python interpreter with Dask, ~100 MB): an instance launched
beyond it gets no process (its record stays, like a VM that never booted) and a warning, so a test that launches a
thousand workers to count API calls does not fork a thousand interpreters."""
CONSOLE_BYTES = 64 * 1024
"""How much of a VM's output GetConsoleOutput returns: its most recent 64 KB, as on EC2."""
DEFAULT_SCHEDULER_PORT = 8786
DEFAULT_DASHBOARD_PORT = 8787

_LIVE_STATES = ("pending", "running")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_SCHEDULER_OPTION = re.compile(r"--scheduler(?:=|\s+)[\"']?(?:tcp://)?([0-9A-Za-z.\-]+):(\d+)")
_ENV_DROPPED = ("AWS_", "VMGUARD_", "GUARD_")
"""A VM knows no credentials, daemon or token of the machine that runs the sandbox."""


_next_address = itertools.count()
_address_lock = threading.Lock()
_FIRST_OCTET = 64 + os.getpid() % 128
"""127.<64..191>.b.c: per process (test workers run their own sandboxes), never 127.0.x.x (127.0.0.1, 127.0.1.1
and 127.0.0.53 are the host's own)."""


ENV_BUCKET = "vmguard-sandbox-envs"
"""The sandbox's bucket for the SDK's replicated environments (``VMGUARD_ENV_S3``), protected from the rules."""


def create_env_location(endpoint_url: str, region: str = "us-east-1") -> str:
    """Create the sandbox's environment bucket (again, after a reset) and return its ``VMGUARD_ENV_S3`` value."""
    s3 = sandbox_client(endpoint_url, "s3", region)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if ENV_BUCKET not in existing:
        s3.create_bucket(Bucket=ENV_BUCKET)
        s3.put_bucket_tagging(Bucket=ENV_BUCKET, Tagging={"TagSet": [
            {"Key": "guard:protect", "Value": "true"}, {"Key": "owner", "Value": "vmguard"}]})
    return f"s3://{ENV_BUCKET}/vmguard-envs/"


CLAIM_PORT = 8785
"""Every sandbox process claims a VM's loopback address by holding a socket bound (never listening) to this port on
it: two processes (test workers, a demo) whose address ranges meet cannot hand out the same address, whose fixed
ports (8786, 8787) their VM processes would then both try to listen on."""
_claims: dict[str, socket.socket] = {}


def _claim(ip: str, ports: tuple[int, ...]) -> socket.socket | None:
    """The claim on ``ip`` if no other process holds one and ``ports`` are free there (taken by nothing else)."""
    claim = socket.socket()
    try:
        claim.bind((ip, CLAIM_PORT))
    except OSError:
        claim.close()
        return None
    for port in ports:  # held by something that made no claim (a process of an earlier run, say)
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                claim.close()
                return None
    return claim


def allocate_address(ports: tuple[int, ...] = ()) -> str:
    """A loopback address not handed out before in this process nor claimed by another, on which ``ports`` are free;
    claimed for this process until :func:`release_address`."""
    with _address_lock:
        while True:
            number = next(_next_address)
            second, rest = divmod(number, 254 * 256)
            ip = f"127.{_FIRST_OCTET + second}.{rest // 254}.{1 + rest % 254}"
            claim = _claim(ip, ports)
            if claim is not None:
                _claims[ip] = claim
                return ip


def release_address(ip: str) -> None:
    """Give up the claim on ``ip`` (its VM process has ended); this process never hands it out again."""
    with _address_lock:
        claim = _claims.pop(ip, None)
    if claim is not None:
        claim.close()


@dataclass(frozen=True)
class VmProcess:
    """One VM's process, as ``VmRunner.processes()`` reports it."""

    instance_id: str
    region: str
    role: str
    cluster_id: str
    ip: str
    pid: int
    alive: bool
    returncode: int | None
    log_path: Path


@dataclass
class _Vm:
    instance_id: str
    region: str
    role: str
    cluster_id: str
    ip: str
    process: subprocess.Popen
    log_path: Path
    sigterm_at: float | None = None
    terminated: bool = False
    """The instance is terminated (by the runner after the process exited, or seen ended): nothing more to do."""

    def view(self) -> VmProcess:
        code = self.process.poll()
        return VmProcess(self.instance_id, self.region, self.role, self.cluster_id, self.ip, self.process.pid,
                         code is None, code, self.log_path)


@dataclass
class _EnvBuild:
    """One environment's venv, built once in the background for every VM that needs it."""

    hash: str
    done: threading.Event
    python: Path | None = None
    error: str | None = None


@dataclass
class _Booting:
    """A VM installing its environment: its address is set, its process starts once the venv is ready."""

    item: _Pending
    ip: str
    scheduler: str | None
    build: _EnvBuild


@dataclass(frozen=True)
class _Pending:
    """A vmguard instance found live in the emulator, not started yet."""

    region: str
    instance: Any
    config: dict[str, Any]
    config_json: str
    scheduler: tuple[str, int] | None


def user_data_text(instance: Any) -> str:
    """The decoded user-data of a moto instance ('' without)."""
    raw = instance.user_data
    if isinstance(raw, list | tuple):
        raw = raw[0] if raw else None
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        return base64.b64decode(str(raw)).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return str(raw)


def vm_config(user_data: str) -> tuple[str, dict[str, Any]] | None:
    """The agent's JSON config on the user-data's ``# vmguard-vm-config:`` line (text, parsed), or None."""
    for line in user_data.splitlines():
        stripped = line.strip()
        if stripped.startswith(CONFIG_MARK):
            text = stripped[len(CONFIG_MARK):].strip()
            try:
                parsed = json.loads(text)
            except ValueError:
                log.warning("ignoring a malformed vmguard config line: %s", text[:200])
                return None
            return (text, parsed) if isinstance(parsed, dict) else None
    return None


def scheduler_option(user_data: str) -> tuple[str, int] | None:
    """The host and port of the user-data's ``--scheduler <host:port>``, or None."""
    match = _SCHEDULER_OPTION.search(user_data)
    return (match.group(1), int(match.group(2))) if match else None


def _set_addresses(instance: Any, ip: str) -> None:
    """Make ``ip`` the instance's private and public IP in the emulator (moto keeps both on the primary NIC)."""
    nic = instance.nics[0]
    dns = f"ip-{ip.replace('.', '-')}.ec2.internal"
    nic.private_ip_address = ip
    nic.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": ip, "PrivateDnsName": dns}]
    nic.private_dns_name = dns
    nic.public_ip = ip


def _agent_env(venv: Path | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(_ENV_DROPPED)}
    # nor finds any in this machine's files or metadata service: like an EC2 VM without an instance profile
    env |= {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    if venv is not None:
        # the replicated environment alone: nothing of this process's interpreter or path
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONSTARTUP"):
            env.pop(name, None)
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = os.pathsep.join([str(venv / "bin"), *filter(None, [env.get("PATH")])])
        return env
    # the agent imports ``sdk.vm`` from wherever this process does
    spec = importlib.util.find_spec("sdk.vm")
    if spec is not None and spec.origin:
        root = str(Path(spec.origin).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


class VmRunner:
    """Runs a local process per vmguard instance of a sandbox served by this process; a context manager.

    ``log_dir``: where each VM's output goes (``<instance id>.log``); a new temporary directory by default.
    ``max_processes``: how many VM processes may be alive at once (see ``MAX_PROCESSES``).
    ``env_dir``: where the VMs' replicated environments are installed, one venv per bundle hash (default:
    ``sandbox-venvs`` in vmguard's cache directory, ``$VMGUARD_CACHE_DIR`` or ``~/.cache/vmguard``).
    """

    def __init__(self, endpoint_url: str, log_dir: Path | str | None = None, poll_seconds: float = POLL_SECONDS,
                 max_processes: int = MAX_PROCESSES, env_dir: Path | str | None = None):
        self.endpoint_url = endpoint_url.rstrip("/")
        self.log_dir = Path(log_dir) if log_dir else None
        self.env_dir = Path(env_dir) if env_dir else None
        self._booting: dict[str, _Booting] = {}
        self._builds: dict[str, _EnvBuild] = {}
        self.poll_seconds = poll_seconds
        self.max_processes = max_processes
        self._lock = threading.Lock()
        self._vms: dict[str, _Vm] = {}
        self._ignored: set[str] = set()
        self._address_of: dict[str, str] = {}
        """Every address the SDK may have read for an instance (moto's at launch, ours) → our loopback address."""
        self._waiting_logged: set[str] = set()
        self._account_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> VmRunner:
        if not in_this_process(self.endpoint_url):
            raise SandboxError(f"{self.endpoint_url} is not a SandboxServer of this process: its VMs cannot run here")
        if self._thread is not None:
            raise SandboxError("the VM runner is already running")
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="vmguard-vms-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.env_dir is None:
            from sdk.environment.bundle import cache_dir

            self.env_dir = cache_dir() / "sandbox-venvs"
        self._account_id = sandbox_client(self.endpoint_url, "sts", "us-east-1").get_caller_identity()["Account"]
        self._stop.clear()
        server = serving(self.endpoint_url)
        assert server is not None
        server.add_answer(self.console_output)
        self._thread = threading.Thread(target=self._run, name="sandbox-vms", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> VmRunner:
        return self if self._thread else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop watching and end every VM process (SIGTERM, then SIGKILL); the instances are left as they are."""
        self._stop.set()
        server = serving(self.endpoint_url)
        if server is not None:
            server.remove_answer(self.console_output)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            vms = list(self._vms.values())
        for vm in vms:
            if vm.process.poll() is None:
                vm.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER_SECONDS
        for vm in vms:
            try:
                vm.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                vm.process.kill()
                vm.process.wait()
            release_address(vm.ip)

    def processes(self) -> dict[str, VmProcess]:
        """Every VM process started so far, by instance id (ended ones too, with ``alive`` false)."""
        with self._lock:
            return {instance_id: vm.view() for instance_id, vm in self._vms.items()}

    def console_output(self, request: ServedRequest) -> Reply | None:
        """GetConsoleOutput of one of this runner's VMs, in EC2's wire format: the end of its log, base64."""
        instance_id = str(request.params.get("InstanceId", ""))
        if request.service != "ec2" or request.operation != "GetConsoleOutput" or self.log_dir is None:
            return None
        path = self.log_dir / f"{instance_id}.log"
        if not _INSTANCE_ID.match(instance_id) or not path.is_file():
            return None
        with path.open("rb") as log_file:
            log_file.seek(max(0, path.stat().st_size - CONSOLE_BYTES))
            output = base64.b64encode(log_file.read()).decode("ascii")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(path.stat().st_mtime))
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f"<requestId>{uuid.uuid4()}</requestId><instanceId>{instance_id}</instanceId>"
                f"<timestamp>{stamp}</timestamp><output>{output}</output></GetConsoleOutputResponse>")
        return Reply(200, "text/xml;charset=UTF-8", body.encode())

    # the watching thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the hardware never stops over one bad look
                log.exception("sandbox VM runner: poll failed")
            self._stop.wait(self.poll_seconds)

    def poll(self) -> None:
        """One look at the account: start new VMs, end those whose instance ended, terminate those that exited."""
        instances = self._instances()
        if instances is None:
            return
        self._start_new(instances)
        self._boot(instances)
        self._reconcile(instances)

    def _instances(self) -> dict[str, tuple[str, Any]] | None:
        """Instance id → (region, moto instance) of the account, every region in use; None if it changed midway."""
        from moto.ec2.models import ec2_backends

        found: dict[str, tuple[str, Any]] = {}
        try:
            for region, backend in list(ec2_backends[self._account_id].items()):
                for instance in backend.all_instances():
                    found[instance.id] = (region, instance)
        except RuntimeError:  # a dict changed size under us: a request is being served, look again next time
            return None
        return found

    def _start_new(self, instances: dict[str, tuple[str, Any]]) -> None:
        pending: list[_Pending] = []
        for instance_id, (region, instance) in instances.items():
            if (instance_id in self._vms or instance_id in self._ignored or instance_id in self._booting
                    or instance.state not in _LIVE_STATES):
                continue
            user_data = user_data_text(instance)
            found = vm_config(user_data)
            if found is None:
                self._ignored.add(instance_id)
                continue
            text, config = found
            pending.append(_Pending(region, instance, config, text, scheduler_option(user_data)))
        # schedulers first: a worker launched in the same moment then finds its scheduler's address
        pending.sort(key=lambda p: p.config.get("role") != "scheduler")
        for item in pending:
            self._launch(item)

    def _scheduler_for(self, item: _Pending) -> str | None:
        if item.scheduler is not None:
            host, port = item.scheduler
            if host in self._address_of:
                return f"{self._address_of[host]}:{port}"
        cluster = item.config.get("cluster_id")
        same_cluster = [vm.ip for vm in self._vms.values()
                        if vm.role == "scheduler" and vm.cluster_id == cluster and vm.region == item.region]
        same_cluster += [b.ip for b in self._booting.values()
                         if b.item.config.get("role") == "scheduler" and b.item.config.get("cluster_id") == cluster
                         and b.item.region == item.region]
        if same_cluster:
            port = item.scheduler[1] if item.scheduler else DEFAULT_SCHEDULER_PORT
            return f"{same_cluster[-1]}:{port}"
        if item.scheduler is not None:
            return f"{item.scheduler[0]}:{item.scheduler[1]}"
        return None

    def _launch(self, item: _Pending) -> None:
        instance, config = item.instance, item.config
        if sum(vm.process.poll() is None for vm in self._vms.values()) + len(self._booting) >= self.max_processes:
            log.warning("sandbox VM %s gets no process: %d VM processes are running already (max_processes)",
                        instance.id, self.max_processes)
            self._ignored.add(instance.id)
            return
        role = str(config.get("role", ""))
        scheduler = None
        if role == "worker":
            scheduler = self._scheduler_for(item)
            if scheduler is None:
                if instance.id not in self._waiting_logged:
                    log.warning("worker %s names no scheduler yet; waiting", instance.id)
                    self._waiting_logged.add(instance.id)
                return
        ports: tuple[int, ...] = ()
        if role == "scheduler":
            dashboard = config.get("dashboard_port", DEFAULT_DASHBOARD_PORT)
            ports = (int(config.get("scheduler_port") or DEFAULT_SCHEDULER_PORT),
                     *((int(dashboard),) if dashboard else ()))
        ip = allocate_address(ports)
        for old in (instance.private_ip, instance.public_ip):
            if old:
                self._address_of[old] = ip
        self._address_of[ip] = ip
        _set_addresses(instance, ip)
        environment = config.get("environment")
        if isinstance(environment, dict) and environment.get("hash"):
            build = self._environment(environment, item)
            self._booting[instance.id] = _Booting(item, ip, scheduler, build)
            log.info("sandbox VM %s (%s) on %s installs its environment %s first", instance.id, role, ip,
                     str(environment["hash"])[:12])
            return
        self._start_process(item, ip, scheduler, None)

    def _start_process(self, item: _Pending, ip: str, scheduler: str | None, venv_python: Path | None) -> None:
        instance, config = item.instance, item.config
        role = str(config.get("role", ""))
        if venv_python is None:
            command = [sys.executable, "-m", "sdk.vm", "--config", item.config_json, "--host", ip]
            venv = None
        else:
            from sdk.bootstrap import agent_config

            agent = json.dumps(agent_config(config), sort_keys=True, separators=(",", ":"))
            command = [str(venv_python), "-m", "sdk.vm", "--config", agent, "--host", ip]
            venv = venv_python.parent.parent
        if scheduler:
            command += ["--scheduler", scheduler]
        assert self.log_dir is not None
        log_path = self.log_dir / f"{instance.id}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=self.log_dir, env=_agent_env(venv), start_new_session=True)
        vm = _Vm(instance.id, item.region, role, str(config.get("cluster_id", "")), ip, process, log_path)
        with self._lock:
            self._vms[instance.id] = vm
        log.info("sandbox VM %s (%s of %s) started on %s, pid %d", instance.id, role, vm.cluster_id, ip, process.pid)

    # replicated environments

    def _environment(self, environment: dict[str, Any], item: _Pending) -> _EnvBuild:
        """The venv of ``environment``, building (in the background) unless it is built or being built."""
        digest = str(environment["hash"])
        build = self._builds.get(digest)
        if build is not None and not (build.done.is_set() and build.error):
            return build
        build = _EnvBuild(digest, threading.Event())
        self._builds[digest] = build
        user_data = user_data_text(item.instance)
        threading.Thread(target=self._build_environment, args=(build, environment, user_data),
                         name=f"sandbox-env-{digest[:12]}", daemon=True).start()
        return build

    def _build_environment(self, build: _EnvBuild, environment: dict[str, Any], user_data: str) -> None:
        import fcntl

        from sdk.bootstrap import read_inline_bundle
        from sdk.environment.install import install, installed_hash, venv_python

        assert self.env_dir is not None and self.log_dir is not None
        into = self.env_dir / build.hash[:32]
        install_log = self.log_dir / f"environment-{build.hash[:12]}.log"
        try:
            self.env_dir.mkdir(parents=True, exist_ok=True)
            with (self.env_dir / f"{build.hash[:32]}.lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another runner (a parallel test process) may build it too
                if installed_hash(into) == build.hash:
                    build.python = venv_python(into)
                    return
                started = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="vmguard-vm-bundle-") as tmp:
                    if environment.get("inline"):
                        payload = read_inline_bundle(user_data)
                        if payload is None:
                            raise ValueError("the config says the bundle is inline, but the user-data has none")
                        source: str = str(Path(tmp) / "bundle.tar.gz")
                        Path(source).write_bytes(payload)
                    else:
                        source = str(environment.get("url") or "")
                    build.python = install(source, into, str(environment["python"]), expected_hash=build.hash,
                                           log=install_log)
                log.info("sandbox environment %s installed in %.1fs into %s", build.hash[:12],
                         time.monotonic() - started, into)
        except Exception as exc:  # noqa: BLE001 - a failed install is a VM that powers itself off
            build.error = f"installing the environment {build.hash[:12]} failed: {exc}"
            log.warning("sandbox %s", build.error)
        finally:
            build.done.set()

    def _boot(self, instances: dict[str, tuple[str, Any]]) -> None:
        """Start the booted VMs whose environment is ready; power off those whose install failed."""
        to_terminate: dict[str, list[str]] = defaultdict(list)
        for instance_id, booting in list(self._booting.items()):
            found = instances.get(instance_id)
            if found is None or found[1].state not in _LIVE_STATES:
                del self._booting[instance_id]
                self._ignored.add(instance_id)
                continue
            if not booting.build.done.is_set():
                continue
            del self._booting[instance_id]
            if booting.build.error or booting.build.python is None:
                assert self.log_dir is not None
                with (self.log_dir / f"{instance_id}.log").open("a") as out:
                    out.write(f"vmguard: {booting.build.error}; powering off\n")
                self._ignored.add(instance_id)
                to_terminate[booting.item.region].append(instance_id)
                continue
            self._start_process(booting.item, booting.ip, booting.scheduler, booting.build.python)
        for region, ids in to_terminate.items():
            try:
                sandbox_client(self.endpoint_url, "ec2", region).terminate_instances(InstanceIds=ids)
            except Exception:  # noqa: BLE001 - looked at again on the next poll
                log.exception("sandbox VM runner: terminating %s failed", ids)

    def _reconcile(self, instances: dict[str, tuple[str, Any]]) -> None:
        to_terminate: dict[str, list[str]] = defaultdict(list)
        now = time.monotonic()
        for vm in list(self._vms.values()):
            if vm.terminated and vm.process.poll() is not None:
                release_address(vm.ip)
                continue
            found = instances.get(vm.instance_id)
            live = found is not None and found[1].state in _LIVE_STATES
            exited = vm.process.poll() is not None
            if not live:
                vm.terminated = True
                if not exited:
                    self._end(vm, now)
            elif exited:
                log.info("sandbox VM %s exited with %s: terminating its instance", vm.instance_id,
                         vm.process.returncode)
                to_terminate[vm.region].append(vm.instance_id)
                vm.terminated = True
        for region, ids in to_terminate.items():
            try:
                sandbox_client(self.endpoint_url, "ec2", region).terminate_instances(InstanceIds=ids)
            except Exception:  # noqa: BLE001 - an instance already gone, say: looked at again on the next poll
                log.exception("sandbox VM runner: terminating %s failed", ids)
                for vm in self._vms.values():
                    if vm.instance_id in ids:
                        vm.terminated = False

    def _end(self, vm: _Vm, now: float) -> None:
        """SIGTERM the process of an ended instance; SIGKILL it if it is still there ``KILL_AFTER_SECONDS`` on."""
        if vm.sigterm_at is None:
            log.info("sandbox VM %s's instance ended: stopping its process %d", vm.instance_id, vm.process.pid)
            vm.sigterm_at = now
            with contextlib.suppress(ProcessLookupError):
                vm.process.send_signal(signal.SIGTERM)
        elif now - vm.sigterm_at > KILL_AFTER_SECONDS:
            with contextlib.suppress(ProcessLookupError):
                vm.process.kill()

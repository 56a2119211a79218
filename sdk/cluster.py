"""``sdk.Cluster``: a guarded Dask cluster on EC2 — priced and capped before launch, registered with the daemon,
heartbeated while this process lives, and torn down (instances, then security group) when it closes.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import socket
import threading
import time
import warnings
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from guard.wire import ClusterRegistration, Heartbeat
from sdk.console import BootWatch
from sdk.cost import VerboseLogging, check_cap, debug_logging_warning, estimate_cost
from sdk.daemon_client import DaemonClient
from sdk.environment.versions import check_versions
from sdk.errors import SdkError
from sdk.forwarding import (
    ENVIRON_PLUGIN,
    AwsCredentials,
    CredentialForwarder,
    ForwardedEnviron,
    mint_credentials,
)
from sdk.launch import Launched, launch, teardown
from sdk.network import client_cidrs
from sdk.security import ClusterTls, KeyDrop
from sdk.spec import ClusterSpec, client_log_level
from sdk.types import describe_types, resolve_instance_types, resolve_scheduler_types
from sdk.usage import ClusterUsage

log = logging.getLogger(__name__)

SCHEDULER_PORT = 8786
_AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class Cluster:
    """Launch a cluster (one scheduler, ``n_workers`` workers); use it with ``get_client()``; ``close()`` ends it.

    Accepts the arguments of :class:`sdk.spec.ClusterSpec` (``vm_type`` or ``cpu``/``memory``/``gpu``/``arm``,
    ``scheduler_vm_type``, ``image``, ``region``, ``n_workers``, ``min_workers``, ``keepalive``, ``idle_timeout``,
    ``max_lifetime``, ``spot_policy``, ``disk_size``, ``tags``, ``max_hourly_usd``, ``allow_ingress_from``,
    ``subnet_ids``, ``security_group_ids``, ``use_private_ip``, ``credentials``, ``instance_profile``, ``environ``,
    ``daemon_url``/``token`` …). A wrong argument raises :class:`sdk.SdkError` with one line before anything is
    launched.
    """

    def __init__(self, *, console: Console | None = None, **kwargs: Any):
        self.spec = ClusterSpec.from_kwargs(**kwargs)
        self.console = console or Console(stderr=True)
        self.cluster_id = f"vmg-{secrets.token_hex(5)}"
        self._client = None
        self._closed = False
        self._torn_down = False
        self._lock = threading.Lock()
        self._stop_beating = threading.Event()
        verbose = debug_logging_warning(self.spec, client_log_level())
        if verbose:
            self.console.print(f"vmguard: warning: {verbose}", highlight=False)
            warnings.warn(verbose, VerboseLogging, stacklevel=2)
        self._credentials: CredentialForwarder | None = None
        first = self._credentials_to_forward()
        self._check_instance_profile()
        self._tls = ClusterTls.create(self.cluster_id, self.spec.max_lifetime)
        self._keys: KeyDrop | None = None
        try:
            self.launched: Launched = self._launch_somewhere()
        except BaseException:
            if self._keys is not None:
                self._keys.delete()
            raise
        atexit.register(self.close)
        self._daemon: DaemonClient | None = None
        self._beat: threading.Thread | None = None
        try:  # from here on, anything that goes wrong (Ctrl-C included) tears the cluster down
            self.scheduler_address = self._wait_for_scheduler()
            self._forward(first)
            self._daemon = DaemonClient.from_env(self.spec.daemon_url, self.spec.token)
            if self._daemon is not None:
                self._daemon.register(self._registration())
            self._beat = threading.Thread(target=self._heartbeat, name=f"vmguard-heartbeat-{self.cluster_id}",
                                          daemon=True)
            self._beat.start()
        except BaseException:
            self.close()
            raise

    # -- launch ---------------------------------------------------------------------------------------------------

    def _credentials_to_forward(self) -> AwsCredentials | None:
        """The workers' first credentials (``credentials="local"``), minted before anything is launched."""
        if self.spec.credentials != "local":
            return None
        return mint_credentials(boto3.Session())

    def _check_instance_profile(self) -> None:
        """``instance_profile`` names a profile that exists (one line before launch; unknown if IAM says no)."""
        name = self.spec.instance_profile
        if not name:
            return
        try:
            boto3.client("iam", config=_AWS_CONFIG).get_instance_profile(InstanceProfileName=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchEntity":
                raise SdkError(f"instance_profile={name!r} does not exist in this account; create it (with its "
                               "role) or pass the name of one that does") from None
            log.info("cannot check instance profile %s (%s); RunInstances will", name, code)
        except BotoCoreError as exc:
            log.info("cannot check instance profile %s (%s); RunInstances will", name, exc)

    def _forward(self, credentials: AwsCredentials | None) -> None:
        """Send ``environ`` and the credentials to the workers over TLS; renew the credentials until close; delete
        the VMs' TLS keys from S3 once every worker has joined (or the boot window is over)."""
        assert self._client is not None
        if self.spec.environ:
            self._client.register_plugin(ForwardedEnviron(ENVIRON_PLUGIN, self.spec.environ), name=ENVIRON_PLUGIN)
        if credentials is not None:
            self._credentials = CredentialForwarder(self._client, boto3.Session(), first=credentials)
            self._credentials.start()
        deadline = self._launched_at + 2 * self.spec.boot_timeout.total_seconds()
        threading.Thread(target=self._retire_keys, args=(deadline,), name=f"vmguard-keys-{self.cluster_id}",
                         daemon=True).start()

    def _retire_keys(self, deadline: float) -> None:
        assert self._keys is not None and self._client is not None
        try:
            self._client.wait_for_workers(len(self.launched.workers), timeout=max(1.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - timed out, or closed: the keys go either way
            log.debug("not every worker of %s joined before its keys were deleted", self.cluster_id, exc_info=True)
        self._keys.delete()

    def _launch_somewhere(self) -> Launched:
        """Launch in ``region``, or — when a region has no capacity (``CapacityError``), does not offer the type, or
        prices the cluster above its cap — in the next one.

        Each region is priced and capped on its own (prices differ); the spec then names the region it runs in.
        """
        regions = self.spec.regions
        reasons: list[str] = []
        for region in regions:
            spec = self.spec if region == self.spec.region else self.spec.model_copy(update={"region": region})
            ec2 = boto3.client("ec2", region_name=region, config=_AWS_CONFIG)
            try:
                types = resolve_instance_types(spec, ec2)
                schedulers = resolve_scheduler_types(spec, ec2, types)
                estimate = estimate_cost(spec, types, scheduler_types=schedulers)
                self.console.print(f"vmguard: {spec.n_workers} worker(s) of {types[0]} + 1 scheduler of "
                                   f"{schedulers[0]} in {region}: about {estimate}", highlight=False, soft_wrap=True)
                check_cap(estimate, spec.max_hourly_usd)
            except SdkError as exc:
                self._pass_on(region, regions, reasons, exc)
                continue
            environments = self._environments(ec2, types)  # an environment that cannot be replicated stops here
            self.spec, self._ec2, self.instance_types, self.estimate = spec, ec2, types, estimate
            self.scheduler_types = schedulers
            self._keys = self._keys or KeyDrop.put(self._tls, cluster_id=self.cluster_id, location=spec.env_s3,
                                                   expires=2 * spec.boot_timeout)
            try:
                return self._launch(client_cidrs(spec.allow_ingress_from, ec2.meta.endpoint_url), environments)
            except SdkError as exc:
                self._pass_on(region, regions, reasons, exc)
        raise SdkError(f"no region could take {self.cluster_id}: {' | '.join(reasons)}")

    def _pass_on(self, region: str, regions: list[str], reasons: list[str], exc: SdkError) -> None:
        """Note why ``region`` could not take the cluster, and say the next one is tried (re-raise with one region)."""
        if len(regions) == 1:
            raise exc
        reasons.append(f"{region}: {exc}")
        if region != regions[-1]:
            self.console.print(f"vmguard: {region} cannot take {self.cluster_id} ({exc}); trying the next region",
                               highlight=False)

    def _environments(self, ec2: Any, types: list[str]) -> dict[str, dict[str, Any]]:
        """This Python environment, replicated for each architecture among ``types`` (none with environment=False).

        Captured again for every cluster (a package installed since is in it); an unchanged environment is neither
        locked, built nor uploaded again (``sdk.environment`` caches by content)."""
        if not self.spec.environment:
            return {}
        from sdk.environment import normalize_arch, prepare_environment

        environments = {}
        for arch in sorted({info.arch for info in describe_types(ec2, types).values()}):
            with self.console.status(f"replicating this Python environment for {arch} VMs…"):
                ref = prepare_environment(arch=normalize_arch(arch), owner=self.spec.owner, location=self.spec.env_s3,
                                          boot_timeout_seconds=self.spec.boot_timeout.total_seconds())
            where = "in the user-data" if ref.inline is not None else ref.s3_uri
            self.console.print(f"vmguard: environment {ref.hash[:12]} for {arch}: {len(ref.packages or {})} "
                               f"package(s), {'unchanged' if ref.reused else 'locked'}, shipped {where}",
                               highlight=False)
            environments[arch] = ref.to_config()
        return environments

    def _launch(self, cidrs: list[str], environments: dict[str, dict[str, Any]]) -> Launched:
        total = self.spec.n_workers + 1
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(f"launching {self.cluster_id}", total=total)

            def report(done: int, of: int, text: str) -> None:
                progress.update(task, completed=done, total=of, description=text)

            self._launched_at = time.monotonic()
            launched = launch(self.spec, self.instance_types, self.cluster_id, cidrs, self._ec2, progress=report,
                              scheduler_types=self.scheduler_types, environments=environments,
                              tls=self._keys.config() if self._keys else None)
        self.console.print(f"vmguard: launched {self.cluster_id}: {1 + len(launched.workers)} instance(s)",
                           highlight=False)
        if launched.spread:
            self.console.print(f"vmguard: warning: {launched.spread}", highlight=False)
        return launched

    def _wait_for_scheduler(self) -> str:
        """The scheduler's address once a Dask client can connect to it (the VM has booted and started Dask).

        The address is read again from EC2 each time: an instance's public IP may come (or change) after launch.
        A VM of the cluster that ended meanwhile fails the wait at once, quoting its console (``BootWatch``).
        """
        from distributed import Client

        deadline = time.monotonic() + self.spec.boot_timeout.total_seconds()
        last_error = "no address yet"
        watch = BootWatch(self._ec2, self.cluster_id)
        with self.console.status(f"waiting for the scheduler of {self.cluster_id} to boot…"):
            while time.monotonic() < deadline:
                watch.check()
                try:
                    host = self._refresh_scheduler_ip()
                except (ClientError, BotoCoreError, IndexError, KeyError) as exc:  # not visible yet, or a blip
                    last_error, host = f"{type(exc).__name__}: {exc}", None
                if host and _port_open(host, SCHEDULER_PORT):
                    address = f"tls://{host}:{SCHEDULER_PORT}"
                    try:
                        self._client = Client(address, timeout=10, set_as_default=False,
                                              security=self._tls.client_security())
                    except Exception as exc:  # not (yet) a Dask scheduler answering there
                        last_error = f"{type(exc).__name__}: {exc}"
                    else:
                        check_versions(self._client)  # a mismatch is one line, and the cluster is torn down
                        return address
                time.sleep(1)
        raise SdkError(f"the scheduler of {self.cluster_id} did not answer within "
                       f"{int(self.spec.boot_timeout.total_seconds())}s ({last_error}); the cluster was torn down")

    def _refresh_scheduler_ip(self) -> str | None:
        """The address this client connects to: the private one with ``use_private_ip`` (VPN, Direct Connect)."""
        reservations = self._ec2.describe_instances(InstanceIds=[self.launched.scheduler["InstanceId"]])
        instance = reservations["Reservations"][0]["Instances"][0]
        if self.spec.use_private_ip:
            return instance.get("PrivateIpAddress")
        return instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")

    # -- use ------------------------------------------------------------------------------------------------------

    def get_client(self):
        """The ``dask.distributed.Client`` connected to this cluster's scheduler."""
        if self._closed or self._client is None:
            raise SdkError(f"cluster {self.cluster_id} is closed; start a new sdk.Cluster(...)")
        return self._client

    @property
    def alive(self) -> bool:
        return not self._closed and self._client is not None and self._client.status in ("running", "connecting")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<Cluster {self.cluster_id} {self.spec.region} {1 + self.spec.n_workers} VMs {state}>"

    # -- guard ----------------------------------------------------------------------------------------------------

    def _registration(self) -> ClusterRegistration:
        instances = [self.launched.scheduler, *self.launched.workers]
        spec = self.spec
        return ClusterRegistration(
            cluster_id=self.cluster_id, owner=spec.owner, region=spec.region,
            instance_ids=[i["InstanceId"] for i in instances],
            instance_types=sorted({i["InstanceType"] for i in instances}),
            security_group_id=self.launched.security_group_id,
            keepalive_seconds=int(spec.keepalive.total_seconds()),
            idle_timeout_seconds=int(spec.idle_timeout.total_seconds()) if spec.idle_timeout else None,
            max_lifetime_seconds=int(spec.max_lifetime.total_seconds()) if spec.max_lifetime else None,
            hourly_usd=self.estimate.hourly_usd, tags=dict(spec.tags))

    def _heartbeat(self) -> None:
        """Tell the daemon (if any) this cluster is wanted, and what it is doing, until it closes."""
        interval = min(max(self.spec.keepalive.total_seconds() / 4, 5.0), 60.0)
        usage = ClusterUsage(timeout=min(interval / 2, 10.0))  # counts not delivered yet go with the next beat
        while not self._stop_beating.wait(interval):
            if self._daemon is None or self._client is None or self._client.status not in ("running", "connecting"):
                continue  # a client that lost its cluster must not keep it alive in the daemon's eyes
            try:
                usage.gather(self._client)  # what the scheduler and every worker counted (S3, logs, tasks done)
                if self._daemon.heartbeat(self.cluster_id, Heartbeat(**usage.beat_fields())):
                    usage.delivered()
            except Exception as exc:  # a missed beat is retried at the next one; the thread must not die
                log.warning("heartbeat of %s failed (%s: %s); tried again at the next beat", self.cluster_id,
                            type(exc).__name__, exc)

    def close(self) -> None:
        """Disconnect, terminate every instance, delete the security group, tell the daemon. Safe to call twice."""
        with self._lock:
            if self._torn_down:
                return
            self._closed = True  # no new work from here on, even if the teardown below has to be retried
        self._stop_beating.set()
        if getattr(self, "_beat", None) is not None:
            self._beat.join(timeout=10)
        if self._credentials is not None:
            self._credentials.stop()
        if self._keys is not None:
            self._keys.delete()
        if self._client is not None:
            try:
                self._client.close(timeout=5)
            except Exception:
                log.debug("closing the Dask client of %s failed", self.cluster_id, exc_info=True)
        try:
            with self.console.status(f"shutting down {self.cluster_id}…"):
                teardown(self._ec2, self.launched)
        except (ClientError, BotoCoreError) as exc:  # the daemon keeps watching it: its registration stays
            raise SdkError(f"could not finish shutting down {self.cluster_id} ({type(exc).__name__}: {exc}); call "
                           f"close() again, or look for resources tagged vmguard:cluster={self.cluster_id}") from None
        self._torn_down = True
        daemon = getattr(self, "_daemon", None)
        if daemon is not None:
            daemon.closed(self.cluster_id)
            daemon.close()
        atexit.unregister(self.close)
        self.console.print(f"vmguard: {self.cluster_id} shut down", highlight=False)

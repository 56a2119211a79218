"""AWS access: boto3 clients with standard retries, a counter of every request sent, and a mutation lock.

Credentials come from the standard chain (environment, profiles, SSO, instance role);
``AWS_ENDPOINT_URL`` is honoured by botocore itself. Nothing here knows which AWS it talks to.

Every client refuses any operation that is not a read unless the calling thread is inside
``Aws.mutating(...)`` naming that operation: the action runner opens it only after the safety gates pass,
so a read path that mutates by mistake fails loudly instead of changing the account.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, partial

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=20,
)

READ_PREFIXES = ("Describe", "List", "Get", "Filter", "Head", "Lookup", "Search")
"""Operation name prefixes that only read; anything else counts as mutating (an unknown verb fails safe)."""


@cache
def shared_loader() -> botocore.loaders.Loader:
    """botocore's loader of service models and endpoints, one per process.

    Each botocore session has its own loader, which parses a service's JSON model again for the session's first
    client of it (EC2's model is megabytes: about 0.1 s of CPU). Sessions share this one, which keeps what it
    parsed."""
    return botocore.loaders.create_loader()


def new_session(botocore_session: botocore.session.Session | None = None, **kwargs: str) -> boto3.Session:
    """A boto3 session (``kwargs`` as ``boto3.Session``'s) whose service models come from ``shared_loader()``."""
    core = botocore_session or botocore.session.Session()
    core.register_component("data_loader", shared_loader())
    return boto3.Session(botocore_session=core, **kwargs)


def is_read_only(operation: str) -> bool:
    return operation.startswith(READ_PREFIXES)


class MutationRefused(RuntimeError):
    """A mutating AWS call was attempted outside an allowed ``Aws.mutating`` block; nothing was sent."""


CallKey = tuple[str, str, str]
"""(region, service, operation)"""


class CallCounter:
    """Counts AWS API requests by (region, service, operation); thread-safe; each retry is a request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[CallKey] = Counter()

    def record(self, region: str, service: str, operation: str) -> None:
        with self._lock:
            self._counts[(region, service, operation)] += 1

    def counts(self, region: str | None = None) -> dict[CallKey, int]:
        with self._lock:
            return {key: n for key, n in self._counts.items() if region is None or key[0] == region}

    def total(self, region: str | None = None) -> int:
        return sum(self.counts(region).values())

    def by_operation(self, region: str | None = None) -> dict[str, int]:
        """``{"ec2:DescribeInstances": 1, …}`` summed over regions (or for one region)."""
        merged: Counter[str] = Counter()
        for (_, service, operation), n in self.counts(region).items():
            merged[f"{service}:{operation}"] += n
        return dict(sorted(merged.items()))


class Aws:
    """One boto3 session, its cached clients per (service, region), and the call counter."""

    def __init__(self, session: boto3.Session | None = None, counter: CallCounter | None = None):
        self.session = session or new_session()
        self.counter = counter or CallCounter()
        self._clients: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._account_id: str | None = None
        self._allowed = threading.local()

    @contextmanager
    def mutating(self, *operations: str) -> Iterator[None]:
        """Allow this thread to call the named ``service:Operation`` mutations (and no others) inside the block."""
        previous = getattr(self._allowed, "operations", frozenset())
        self._allowed.operations = previous | frozenset(operations)
        try:
            yield
        finally:
            self._allowed.operations = previous

    def _check_mutation(self, service: str, event_name: str, **_: object) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if is_read_only(operation) or f"{service}:{operation}" in getattr(self._allowed, "operations", ()):
            return
        raise MutationRefused(f"{service}:{operation} refused: mutating calls are made only by the action runner, "
                              "past the safety gates")

    def _on_send(self, region: str, event_name: str, **_: object) -> None:
        # event_name is "before-send.<service>.<Operation>"
        _, service, operation = event_name.split(".", 2)
        self.counter.record(region, service, operation)

    def client(self, service: str, region: str):
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                client = self.session.client(service, region_name=region, config=RETRY_CONFIG)
                client.meta.events.register("before-send", partial(self._on_send, region))
                client.meta.events.register("before-call", partial(self._check_mutation, service))
                self._clients[key] = client
            return self._clients[key]

    def account_id(self, region: str) -> str:
        """The account the credentials belong to (one STS call, then cached)."""
        if self._account_id is None:
            self._account_id = self.client("sts", region).get_caller_identity()["Account"]
        return self._account_id


def describe_aws_error(exc: BaseException) -> str:
    """One line a person can act on."""
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found: configure a profile (AWS_PROFILE), SSO, env keys or an instance role"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{exc.operation_name}: {error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

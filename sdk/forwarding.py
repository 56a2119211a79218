"""What the client forwards to the workers over the cluster's TLS connection: its AWS identity, as short-lived
credentials, and the ``environ`` it was given — never through the user-data, never written to disk.

Credentials (``credentials="local"``, the default): with long-term keys the client mints a session with
``sts:GetSessionToken`` (``CREDENTIALS_LIFETIME``, one hour); a client that already is a session (an assumed role,
SSO) forwards that session as it is (STS will not mint a session from a session). A worker plugin sets them as
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` with ``AWS_CREDENTIAL_EXPIRATION`` in each
worker process, which is what botocore (boto3, s3fs, pandas' ``s3://``) reads: its clients re-read them as they
near expiry. The client renews them ``RENEW_BEFORE`` their expiry; a client that died renews nothing, and the
workers' credentials expire with the session.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from sdk.errors import SdkError

log = logging.getLogger(__name__)

CREDENTIALS_LIFETIME = timedelta(hours=1)
RENEW_BEFORE = timedelta(minutes=15)
"""Credentials are renewed this long before they expire (a renewal that fails is tried again every minute)."""
RETRY_AFTER = timedelta(minutes=1)
UNKNOWN_EXPIRY_RENEWAL = timedelta(minutes=15)
"""How often a session whose expiry botocore does not know is forwarded again."""
CREDENTIALS_PLUGIN = "vmguard-credentials"
ENVIRON_PLUGIN = "vmguard-environ"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION")


@dataclass(frozen=True)
class AwsCredentials:
    """A set of AWS credentials and when they expire (None: botocore does not know)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expiration: datetime | None

    def environ(self) -> dict[str, str]:
        values = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            values["AWS_SESSION_TOKEN"] = self.session_token
        if self.expiration:
            values["AWS_CREDENTIAL_EXPIRATION"] = self.expiration.astimezone(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        return values

    def __repr__(self) -> str:  # never the secret in a log or traceback
        return f"AwsCredentials({self.access_key_id[:4]}…, expires {self.expiration})"


def mint_credentials(session: Any, lifetime: timedelta = CREDENTIALS_LIFETIME) -> AwsCredentials:
    """Short-lived credentials for the workers: a new ``GetSessionToken`` session, or this session as it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    found = session.get_credentials()
    if found is None:
        raise SdkError("no AWS credentials to forward to the VMs; configure them (aws configure, AWS_PROFILE) or "
                       "pass credentials=None")
    frozen = found.get_frozen_credentials()
    if frozen.token:
        expiry = getattr(found, "_expiry_time", None)
        return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token, expiry)
    try:
        reply = session.client("sts").get_session_token(DurationSeconds=int(lifetime.total_seconds()))
    except (ClientError, BotoCoreError) as exc:
        error = getattr(exc, "response", {}).get("Error", {}) if isinstance(exc, ClientError) else {}
        reason = f"{error.get('Code')}: {error.get('Message', '')}" if error else str(exc)
        raise SdkError(f"cannot make short-lived credentials for the VMs (sts:GetSessionToken: {reason}); pass "
                       "instance_profile='…' to give them a role instead, or credentials=None") from None
    creds = reply["Credentials"]
    return AwsCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"],
                          creds["Expiration"])


class ForwardedEnviron(WorkerPlugin):
    """A worker plugin that sets variables in the worker's process (registering it again replaces the values).

    ``drop``: variables removed first (the credentials of an earlier registration that the new one lacks)."""

    def __init__(self, name: str, values: dict[str, str], drop: tuple[str, ...] = ()) -> None:
        self.name = name
        self.values = dict(values)
        self.drop = tuple(drop)

    def setup(self, worker: Any) -> None:
        for variable in self.drop:
            os.environ.pop(variable, None)
        os.environ.update(self.values)
        _forget_cached_credentials()

    def __repr__(self) -> str:  # the values are secrets
        return f"ForwardedEnviron({self.name}, {sorted(self.values)})"


def _forget_cached_credentials() -> None:
    """boto3's default session and s3fs's cached filesystems resolved credentials once: let them read the new ones."""
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None
    s3fs = sys.modules.get("s3fs")
    if s3fs is not None:
        s3fs.S3FileSystem.clear_instance_cache()


class CredentialForwarder:
    """Keeps a cluster's workers supplied with this client's credentials until ``stop()`` (or the process ends).

    ``first``: credentials minted already (before launch, to fail before anything runs); ``start()`` registers
    them and renews them in a thread ``renew_before`` their expiry."""

    def __init__(self, client: Any, session: Any, *, lifetime: timedelta = CREDENTIALS_LIFETIME,
                 renew_before: timedelta = RENEW_BEFORE, first: AwsCredentials | None = None) -> None:
        self.client = client
        self.session = session
        self.lifetime = lifetime
        self.renew_before = renew_before
        self.current = first
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def forward(self, credentials: AwsCredentials | None = None) -> AwsCredentials:
        """Register ``credentials`` (default: newly minted ones) with the cluster: every worker, and those to come."""
        credentials = credentials or mint_credentials(self.session, self.lifetime)
        self.client.register_plugin(ForwardedEnviron(CREDENTIALS_PLUGIN, credentials.environ(),
                                                     drop=CREDENTIAL_VARIABLES), name=CREDENTIALS_PLUGIN)
        self.current = credentials
        return credentials

    def next_renewal(self, now: datetime) -> datetime:
        """When the current credentials are to be renewed."""
        if self.current is None or self.current.expiration is None:
            return now + UNKNOWN_EXPIRY_RENEWAL
        return self.current.expiration - self.renew_before

    def start(self) -> None:
        self.forward(self.current)
        self._thread = threading.Thread(target=self._run, name="vmguard-credentials", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        wait = (self.next_renewal(datetime.now(timezone.utc)) - datetime.now(timezone.utc)).total_seconds()
        while not self._stop.wait(max(wait, 0.0)):
            try:
                self.forward()
                self.renewals += 1
                log.info("renewed the workers' AWS credentials (expire %s)", self.current and self.current.expiration)
                wait = (self.next_renewal(datetime.now(timezone.utc)) - datetime.now(timezone.utc)).total_seconds()
            except Exception as exc:  # noqa: BLE001 - tried again; the thread must outlive a blip
                log.warning("renewing the workers' AWS credentials failed (%s: %s); trying again in %s",
                            type(exc).__name__, exc, RETRY_AFTER)
                wait = RETRY_AFTER.total_seconds()

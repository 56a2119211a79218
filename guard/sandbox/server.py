"""The emulated AWS account: moto in server mode on a loopback port, in this process.

boto3 talks to it over HTTP exactly as to AWS; only the endpoint and the (fake) credentials differ.
Moto keeps its state per process, not per server: every server started in a process serves the same
account, and starting one empties it.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config

from guard.sandbox.images import image_catalog_path

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "vmguard-sandbox"
SECRET_ACCESS_KEY = "vmguard-sandbox-secret"
DEFAULT_REGION = "us-east-1"

_CREDENTIAL_SOURCES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)
"""Variables through which real credentials or another endpoint could reach a process; unset by apply_env."""

_SERVICE_ENDPOINT_PREFIX = "AWS_ENDPOINT_URL_"
"""``AWS_ENDPOINT_URL_<SERVICE>`` beats ``AWS_ENDPOINT_URL``: a stray one would send a service to real AWS."""

_LOOPBACK = "127.0.0.1"

_serving: dict[str, SandboxServer] = {}

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Plain HTTP to the emulator's own API, never through a proxy."""


class SandboxError(RuntimeError):
    """The sandbox was used in a way the emulator cannot serve."""


def _configure_moto() -> None:
    """Moto's settings: our two images instead of its ~1,300, quiet request logs.

    ``MOTO_AMIS_PATH`` is read when moto's EC2 models are first imported: if something imported them before
    (a ``mock_aws`` test, say), moto keeps its own images and Graviton instances report ``x86_64``.
    """
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    os.environ["MOTO_AMIS_PATH"] = str(image_catalog_path())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _no_proxy() -> str:
    """The current NO_PROXY list plus the loopback address, so an HTTP(S)_PROXY never sees sandbox traffic."""
    current = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    hosts = [host.strip() for host in current.split(",") if host.strip()]
    return ",".join(hosts if _LOOPBACK in hosts else [*hosts, _LOOPBACK])


class SandboxServer:
    """An empty emulated AWS account on a free loopback port; a context manager."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None

    def start(self) -> SandboxServer:
        """Serve on a free loopback port, with the account emptied."""
        if self._server is not None:
            raise SandboxError(f"the sandbox server is already serving {self.endpoint_url}")
        _configure_moto()
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=_LOOPBACK, port=0, verbose=False)
        server.start()
        _, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{_LOOPBACK}:{port}"
        _serving[self._endpoint_url] = self
        self.reset()
        return self

    def __enter__(self) -> SandboxServer:
        return self if self._server else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise SandboxError("the sandbox server is not started")
        return self._endpoint_url

    @property
    def env(self) -> dict[str, str]:
        """Environment that points every AWS SDK at this account and at nothing else."""
        no_proxy = _no_proxy()
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def apply_env(self) -> None:
        """Point this process at the sandbox: set ``env``, drop every other credential source and endpoint.

        Best called before the first request: the in-process emulator reads this environment through boto3 too.
        """
        stray_endpoints = [name for name in os.environ if name.startswith(_SERVICE_ENDPOINT_PREFIX)]
        for name in (*_CREDENTIAL_SOURCES, *stray_endpoints):
            os.environ.pop(name, None)
        os.environ.update(self.env)
        boto3.setup_default_session()

    def reset(self) -> None:
        """Empty the account (every service, every region)."""
        moto_api(self.endpoint_url, "reset")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            _serving.pop(self.endpoint_url, None)
            self._server = None


def moto_api(endpoint_url: str, path: str) -> None:
    """POST to the emulator's control API (``/moto-api/...``)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/{path}", method="POST")
    with _direct.open(request, timeout=30):
        pass


def in_this_process(endpoint_url: str) -> bool:
    """Whether a SandboxServer of this process serves that endpoint (so its moto objects are reachable)."""
    return endpoint_url.rstrip("/") in _serving


_NO_PROFILE = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}
"""botocore session variables read from neither the environment nor ~/.aws: no profile can leak in."""


@cache
def sandbox_client(endpoint_url: str, service: str, region: str) -> BaseClient:
    """A boto3 client for the sandbox with the sandbox's own credentials, whatever the environment holds."""
    session = boto3.Session(botocore_session=botocore.session.Session(session_vars=_NO_PROFILE),
                            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
                            region_name=region)
    config = Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=120)
    return session.client(service, endpoint_url=endpoint_url, config=config)

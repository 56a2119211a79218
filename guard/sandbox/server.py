"""The emulated AWS account: moto in server mode on a loopback port, in this process.

boto3 talks to it over HTTP exactly as to AWS; only the endpoint and the (fake) credentials differ.
Moto keeps its state per process, not per server: every server started in a process serves the same
account, and starting one empties it.

In front of moto, the server may answer some requests itself (``SandboxServer.add_answer``): the sandbox's
parts that do what AWS does and moto does not (a vCPU quota, a VM's console output) answer in AWS's wire format.

The server also keeps a log of the AWS requests it answered (``SandboxServer.requests``), whichever process
sent them: which service, region and operation, and with which parameters, so a test can tell what a daemon
asked of AWS, and a benchmark how much.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config

from guard.aws import is_read_only, new_session
from guard.sandbox import tag_lookup
from guard.sandbox.images import image_catalog_path, seed_image_parameters

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

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
    """Moto's settings: our images (``guard.sandbox.images``) instead of its ~1,300, quiet request logs, tags read
    by resource id (``guard.sandbox.tag_lookup``).

    ``MOTO_AMIS_PATH`` is read when moto's EC2 models are first imported: if something imported them before
    (a ``mock_aws`` test, say), moto keeps its own images and Graviton instances report ``x86_64``.
    """
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    os.environ["MOTO_AMIS_PATH"] = str(image_catalog_path())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    tag_lookup.install()


def _no_proxy() -> str:
    """The current NO_PROXY list plus the loopback address, so an HTTP(S)_PROXY never sees sandbox traffic."""
    current = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    hosts = [host.strip() for host in current.split(",") if host.strip()]
    return ",".join(hosts if _LOOPBACK in hosts else [*hosts, _LOOPBACK])


@dataclass(frozen=True)
class ServedRequest:
    """One AWS API request the emulator answered."""

    service: str
    """The SigV4 signing name in the request's credential scope: ``ec2``, ``logs``, ``monitoring`` (CloudWatch),
    ``tagging``, ``sts``, ``s3``…; empty for an unsigned request."""
    region: str
    """The region of the credential scope; empty for an unsigned request."""
    operation: str
    """``DescribeVolumes``: the ``Action`` form field (EC2 and query APIs), the operation of ``X-Amz-Target``
    (JSON APIs such as CloudWatch Logs) or of an ``/operation/<name>`` path (RPC v2); for REST APIs such as S3,
    the method and path (``GET /bucket``)."""
    params: Mapping[str, Any]
    """The form fields (``VolumeId``, ``InstanceId.1``…) or the JSON body (``{"logGroupName": …}``); for REST
    APIs, the query string's fields."""
    status: int
    """The HTTP status of the answer (an AWS error is 4xx/5xx)."""
    mutating: bool
    """Not a read: an operation outside ``guard.aws.READ_PREFIXES``, or a REST method other than GET/HEAD."""

    @property
    def name(self) -> str:
        """``ec2:DescribeVolumes``."""
        return f"{self.service}:{self.operation}"


@dataclass(frozen=True)
class Reply:
    """An answer the sandbox gives itself instead of moto's, already in the service's wire format."""

    status: int
    content_type: str
    body: bytes


Answer = Callable[[ServedRequest], Reply | None]
"""Looks at a request (its ``status`` is 0) before moto: a ``Reply`` answers it, None lets moto answer."""

Latency = Callable[[ServedRequest], float]
"""Seconds to hold the answer to a request that moto has carried out already."""

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_RPC_V2_PATH = re.compile(r"/service/[^/]+/operation/([^/?]+)$")
_PARSED_BODIES = ("application/x-www-form-urlencoded", "application/x-amz-json", "application/json")


def _read_body(environ: dict[str, Any]) -> bytes:
    """A form or JSON request's body, put back as a fresh ``wsgi.input`` for the app behind; b"" for others."""
    if not environ.get("CONTENT_TYPE", "").startswith(_PARSED_BODIES):
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return b""
    if length <= 0:
        return b""
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _describe(environ: dict[str, Any], body: bytes, status: int) -> ServedRequest:
    authorization = environ.get("HTTP_AUTHORIZATION") or ""
    query = environ.get("QUERY_STRING") or ""
    scope = _CREDENTIAL_SCOPE.search(authorization) or _CREDENTIAL_SCOPE.search(query.replace("%2F", "/"))
    region, service = scope.groups() if scope else ("", "")
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif body:
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            params.update(decoded)
    method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    target = environ.get("HTTP_X_AMZ_TARGET") or ""
    rpc = _RPC_V2_PATH.search(path)
    operation = params.get("Action") or target.rpartition(".")[2] or (rpc.group(1) if rpc else "")
    if operation:
        mutating = not is_read_only(operation)
    else:
        operation, mutating = f"{method} {path}", method not in ("GET", "HEAD")
    return ServedRequest(service=service, region=region, operation=operation, params=params, status=status,
                         mutating=mutating)


class _RequestLog:
    """WSGI middleware in front of moto's app: records every AWS request once moto has answered it.

    Thread-safe (the server answers each request on its own thread). Calls to the emulator's control API
    (``/moto-api/…``) are not AWS requests and are not recorded.
    """

    def __init__(self, app: Callable, size: int) -> None:
        self.app = app
        self.latency: Latency | None = None
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._served: deque[ServedRequest] = deque(maxlen=size)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/moto-api") or path == "/favicon.ico":
            return self.app(environ, start_response)
        body = _read_body(environ)
        statuses: list[int] = []

        def start(status: str, headers: list, exc_info: Any = None) -> Callable:
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        try:
            asked = _describe(environ, body, 0)
            for answer in list(self.answers):
                reply = answer(asked)
                if reply is not None:
                    start(f"{reply.status} {HTTPStatus(reply.status).phrase}", [
                        ("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body)))])
                    return [reply.body]
            return self.app(environ, start)
        finally:
            served = _describe(environ, body, statuses[-1] if statuses else 500)
            with self._lock:
                self._served.append(served)
            latency = self.latency
            if latency is not None:
                time.sleep(max(0.0, latency(served)))

    def requests(self) -> list[ServedRequest]:
        with self._lock:
            return list(self._served)

    def clear(self) -> None:
        with self._lock:
            self._served.clear()


class SandboxServer:
    """An empty emulated AWS account on a free loopback port; a context manager.

    ``log_size``: how many of the latest AWS requests ``requests()`` keeps (older ones are dropped).
    """

    def __init__(self, log_size: int = 100_000) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._endpoint_url: str | None = None
        self._log: _RequestLog | None = None
        self._log_size = log_size
        self._latency: Latency | None = None
        self._answers: list[Answer] = []
        from guard.sandbox.quotas import VcpuQuotas

        self.quotas = VcpuQuotas()
        """The vCPU quotas imposed on the account (none by default, as moto has none): ``limit_vcpus``."""
        self.add_answer(self.quotas.answer)

    def add_answer(self, answer: Answer) -> None:
        """Let ``answer`` answer requests before moto (see ``Answer``), after those added before."""
        self._answers.append(answer)
        if self._log is not None:
            self._log.answers = list(self._answers)

    def remove_answer(self, answer: Answer) -> None:
        if answer in self._answers:
            self._answers.remove(answer)
        if self._log is not None:
            self._log.answers = list(self._answers)

    def limit_vcpus(self, quota_code: str, vcpus: float | None) -> None:
        """Impose the EC2 vCPU quota ``quota_code`` (``L-1216C47A``…) at ``vcpus`` (None: lift it) until reset."""
        self.quotas.limit(quota_code, vcpus)

    def start(self) -> SandboxServer:
        """Serve on a free loopback port, with the account emptied."""
        if self._server is not None:
            raise SandboxError(f"the sandbox server is already serving {self.endpoint_url}")
        _configure_moto()
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        # as moto's ThreadedMotoServer serves, with the request log in front of its app
        self._log = _RequestLog(DomainDispatcherApplication(create_backend_app), self._log_size)
        self._log.latency = self._latency
        self._log.answers = list(self._answers)
        server = make_server(_LOOPBACK, 0, self._log, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=server.serve_forever, name="sandbox-aws", daemon=True)
        self._thread.start()
        self._server = server
        self._endpoint_url = f"http://{_LOOPBACK}:{server.server_address[1]}"
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
        """Empty the account (every service, every region) but for AWS's public image parameters, and lift its
        quotas; the request log is kept (``clear_requests``)."""
        moto_api(self.endpoint_url, "reset")
        self.quotas.clear()
        seed_image_parameters()

    def requests(self) -> list[ServedRequest]:
        """The AWS requests answered since the start or the last ``clear_requests``, oldest first, from any process.

        Calls per operation, as the emulator saw them: ``Counter(r.name for r in server.requests())``.
        """
        return self._log.requests() if self._log is not None else []

    def clear_requests(self) -> None:
        if self._log is not None:
            self._log.clear()

    @property
    def latency(self) -> Latency | None:
        """How long each answer is held once moto has carried the request out (None: not at all, the default).

        Moto answers in about a millisecond where AWS takes tens to hundreds. Holding answers, say those of
        mutating calls (``lambda request: 0.05 if request.mutating else 0.0``), stretches the moment in which a
        change is made but its caller does not know yet, so a test can interrupt the caller there.
        """
        return self._latency

    @latency.setter
    def latency(self, latency: Latency | None) -> None:
        self._latency = latency
        if self._log is not None:
            self._log.latency = latency

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            if self._thread is not None:
                self._thread.join()
            self._server.server_close()
            _serving.pop(self.endpoint_url, None)
            self._server = None
            self._thread = None


def moto_api(endpoint_url: str, path: str) -> None:
    """POST to the emulator's control API (``/moto-api/...``)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/{path}", method="POST")
    with _direct.open(request, timeout=30):
        pass


def serving(endpoint_url: str) -> SandboxServer | None:
    """The SandboxServer of this process that serves that endpoint, if any."""
    return _serving.get(endpoint_url.rstrip("/"))


def in_this_process(endpoint_url: str) -> bool:
    """Whether a SandboxServer of this process serves that endpoint (so its moto objects are reachable)."""
    return endpoint_url.rstrip("/") in _serving


_NO_PROFILE = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}
"""botocore session variables read from neither the environment nor ~/.aws: no profile can leak in."""


def _sandbox_session(region: str) -> boto3.Session:
    """A session with the sandbox's own credentials, whatever the environment or ~/.aws holds."""
    return new_session(botocore.session.Session(session_vars=_NO_PROFILE), aws_access_key_id=ACCESS_KEY_ID,
                       aws_secret_access_key=SECRET_ACCESS_KEY, region_name=region)


@cache
def sandbox_client(endpoint_url: str, service: str, region: str) -> BaseClient:
    """A boto3 client for the sandbox with the sandbox's own credentials, whatever the environment holds."""
    session = _sandbox_session(region)
    config = Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=120)
    return session.client(service, endpoint_url=endpoint_url, config=config)


@cache
def seeding_client(endpoint_url: str, service: str, region: str) -> BaseClient:
    """A client for the emulator of this process whose requests moto answers in process, without HTTP.

    For seeding: an account takes hundreds of setup calls, and answering them over loopback HTTP costs about half
    their time. The client addresses AWS's own endpoints, which moto's request matcher (the one ``mock_aws`` uses)
    routes to the same in-process objects the server serves; a request it does not recognise fails instead of
    leaving the process. These requests are not in the server's request log and get no ``add_answer`` reply.
    """
    if not in_this_process(endpoint_url):
        raise SandboxError(f"{endpoint_url} is not a SandboxServer of this process")
    from moto.core.botocore_stubber import BotocoreStubber

    stubber = BotocoreStubber()
    stubber.enabled = True

    def answer_in_process(event_name: str, request: Any, **kwargs: Any) -> Any:
        response = stubber(event_name, request, **kwargs)
        if response is None:
            raise SandboxError(f"the emulator in this process does not answer {request.method} {request.url}")
        return response

    session = _sandbox_session(region)
    config = Config(retries={"mode": "standard", "max_attempts": 1}, ignore_configured_endpoint_urls=True)
    client = session.client(service, config=config)
    client.meta.events.register_first("before-send", answer_in_process)
    return client

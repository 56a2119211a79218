"""A fault-injecting HTTP proxy for tests: AWS requests go through it to the emulator, and per API action it can
answer an error instead, or change the emulator's answer on its way back.

Point one service of the daemon at it with ``AWS_ENDPOINT_URL_<SERVICE>`` (botocore honours it), e.g.::

    with FaultProxy(sandbox.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        proxy.fail("CreateSnapshot", 500, "InternalError")
        proxy.rewrite("DescribeSnapshots", "<status>completed</status>", "<status>pending</status>")

The action is the ``Action`` field of a query-protocol request (EC2, CloudWatch, STS…) or the operation in a
JSON request's ``X-Amz-Target``. Errors are answered in the query protocol's XML shape, which botocore parses
into a ``ClientError`` with that code (and retries when the status or code is one it retries).
"""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                         "transfer-encoding", "upgrade", "content-length", "host"})


@dataclass
class _Fault:
    status: int | None = None
    code: str = ""
    message: str = ""
    forward: bool = False
    """Forward the request first (the emulator carries it out), then answer the error: a reply lost on the way."""
    rewrites: tuple[tuple[str, str], ...] = ()
    times: int | None = None
    """How many more requests this applies to; None: every one until cleared."""


def error_body(code: str, message: str) -> bytes:
    """An EC2 (query protocol) error document."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID>"
            "</Response>").encode()


class FaultProxy:
    """A threaded HTTP proxy on a free loopback port in front of ``target`` (an http:// endpoint)."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}
        self._received: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._server is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, action: str, status: int = 500, code: str = "InternalError",
             message: str = "An internal error has occurred", times: int | None = None,
             forward: bool = False, region: str | None = None) -> None:
        """Answer ``action`` with this error (``times`` requests, or all until cleared); with ``forward`` the
        emulator carries the request out first and only its answer is lost; with ``region``, only requests signed
        for that region."""
        with self._lock:
            key = action if region is None else f"{action}@{region}"
            self._faults[key] = _Fault(status=status, code=code, message=message, forward=forward, times=times)

    def rewrite(self, action: str, pattern: str, replacement: str, times: int | None = None) -> None:
        """Forward ``action`` and replace ``pattern`` (a regular expression) in the answer's body; rewrites of one
        action add up."""
        with self._lock:
            current = self._faults.get(action)
            rewrites = current.rewrites if current is not None and current.status is None else ()
            self._faults[action] = _Fault(rewrites=(*rewrites, (pattern, replacement)), times=times)

    def clear(self, action: str | None = None) -> None:
        """Stop faulting ``action`` (or every action): requests pass through unchanged again."""
        with self._lock:
            if action is None:
                self._faults.clear()
            else:
                self._faults.pop(action, None)

    def received(self, action: str) -> int:
        """Requests for ``action`` that reached the proxy (each retry counts)."""
        with self._lock:
            return self._received[action]

    def faulted(self, action: str) -> int:
        """Requests for ``action`` the proxy answered with an error or rewrote."""
        with self._lock:
            return self._faulted[action]

    # -- the request path ------------------------------------------------------------------------------------------

    def _take(self, action: str, region: str | None = None) -> _Fault | None:
        with self._lock:
            self._received[action] += 1
            key = f"{action}@{region}" if f"{action}@{region}" in self._faults else action
            fault = self._faults.get(key)
            if fault is None:
                return None
            self._faulted[action] += 1
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._target, timeout=60)
        try:
            host, port = self._target
            connection.request(method, path, body=body,
                               headers={**dict(headers), "Host": f"{host}:{port}"})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([a-z0-9-]+)/")
"""The region a SigV4 request is signed for: ``Credential=AKID/20260101/us-east-1/ec2/aws4_request``."""


def _action(path: str, headers: http.client.HTTPMessage, body: bytes) -> str:
    target = headers.get("X-Amz-Target")
    if target:
        return target.rpartition(".")[2]
    fields = parse_qs(urlsplit(path).query)
    if (headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
        fields.update(parse_qs(body.decode("utf-8", "replace")))
    return fields.get("Action", [""])[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        action = _action(self.path, self.headers, body)
        scope = _CREDENTIAL_SCOPE.search(self.headers.get("Authorization") or "")
        fault = self.owner._take(action, scope.group(1) if scope else None)
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        if fault is not None and fault.status is not None:
            if fault.forward:
                self.owner._forward(self.command, self.path, headers, body)
            self._reply(fault.status, [("Content-Type", "text/xml")], error_body(fault.code, fault.message))
            return
        status, reply_headers, reply = self.owner._forward(self.command, self.path, headers, body)
        if fault is not None:
            text = reply.decode("utf-8")
            for pattern, replacement in fault.rewrites:
                text = re.sub(pattern, replacement, text)
            reply = text.encode("utf-8")
        self._reply(status, [(k, v) for k, v in reply_headers if k.lower() not in _HOP_BY_HOP], reply)

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

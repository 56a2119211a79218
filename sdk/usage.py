"""What a cluster's VMs do that the daemon cannot see from AWS's side: S3 requests by bucket and operation class,
log volume by level, and tasks finished — counted in the VM's own process, handed to the SDK's heartbeat.

The on-VM agent (``sdk.vm``) calls ``install()`` at start, on the scheduler and on every worker, and gives the
scheduler the ``task_counter()`` plugin. From then on:

- every log record the process writes is counted, in bytes of its formatted line (plus the newline), under its
  level's lower-case name: a ``logging.Handler`` sits next to each handler that writes the process's log (the root
  logger's, and those of loggers that do not propagate to it, such as Dask's ``distributed``), so exactly the
  records that are written are counted — those at or above the agent's ``log_level``, and those of a logger whose
  own level was lowered;
- every S3 request of every boto3/botocore client created in the process is counted under its bucket and
  operation class (``operation_class``), retries included (each HTTP attempt S3 answered is a billed request);
- on the scheduler, every task that finished (it went from processing to memory or erred) is counted.

``take()`` returns the counts since the last take and starts again from zero; the SDK's heartbeat takes them from
the scheduler (``scheduler_take``, which adds what the scheduler is doing now) and from every worker, sums them with
``merge`` and sends them to the daemon.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Scheduler

_log = logging.getLogger(__name__)

NO_BUCKET = "(none)"
"""The bucket an S3 request without one is counted under (ListBuckets): no bucket name can look like it."""
OTHER = "OTHER"
"""The class of an S3 operation that none of the billed classes describes."""

_CLASSES: dict[str, str] = {
    "GetObject": "GET",
    "PutObject": "PUT", "UploadPart": "PUT",
    "CreateMultipartUpload": "POST", "CompleteMultipartUpload": "POST", "RestoreObject": "POST",
    "ListObjects": "LIST", "ListObjectsV2": "LIST", "ListObjectVersions": "LIST", "ListMultipartUploads": "LIST",
    "ListParts": "LIST", "ListBuckets": "LIST", "ListDirectoryBuckets": "LIST",
    "HeadObject": "HEAD", "HeadBucket": "HEAD",
    "CopyObject": "COPY", "UploadPartCopy": "COPY",
    "DeleteObject": "DELETE", "DeleteObjects": "DELETE", "AbortMultipartUpload": "DELETE",
    "SelectObjectContent": "SELECT",
    "CreateBucket": "PUT",
}
_PREFIXES = (("List", "LIST"), ("Get", "GET"), ("Head", "HEAD"), ("Put", "PUT"), ("Delete", "DELETE"))


def operation_class(operation: str) -> str:
    """The class S3 bills (and counts in its request metrics) an operation under: GET, PUT, POST, LIST, HEAD, COPY,
    DELETE or SELECT — by the HTTP request the operation makes (CreateMultipartUpload is a POST, UploadPart a PUT,
    CopyObject a COPY); ``OTHER`` for anything else."""
    known = _CLASSES.get(operation)
    if known is not None:
        return known
    for prefix, cls in _PREFIXES:
        if operation.startswith(prefix):
            return cls
    return OTHER


def empty() -> dict[str, Any]:
    """Counts of nothing: the shape ``take()`` returns."""
    return {"s3_requests": {}, "log_bytes_by_level": {}, "tasks_completed": 0}


def merge(into: dict[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add ``other``'s counts (a ``take()``) to ``into``'s, in place; ``into``. Anything malformed in ``other`` (from
    a process that runs another version) is skipped rather than trusted."""
    if not isinstance(other, Mapping):
        return into
    s3 = into.setdefault("s3_requests", {})
    for bucket, operations in _items(other.get("s3_requests")):
        for cls, count in _items(operations):
            if _count(count):
                by_class = s3.setdefault(str(bucket), {})
                by_class[str(cls)] = by_class.get(str(cls), 0) + count
    logs = into.setdefault("log_bytes_by_level", {})
    for level, count in _items(other.get("log_bytes_by_level")):
        if _count(count):
            logs[str(level)] = logs.get(str(level), 0) + count
    completed = other.get("tasks_completed", 0)
    into["tasks_completed"] = into.get("tasks_completed", 0) + (completed if _count(completed) else 0)
    return into


def _items(value: object) -> list[tuple[Any, Any]]:
    return list(value.items()) if isinstance(value, Mapping) else []


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _LogCounter(logging.Handler):
    """Counts the bytes of each record it is given by level; writes nothing. Never raises."""

    def __init__(self, meter: UsageMeter, formatter: logging.Formatter | None) -> None:
        super().__init__(logging.NOTSET)
        self.meter = meter
        self.setFormatter(formatter or logging.Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            size = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
            self.meter.count_log(record.levelname.lower(), size + 1)
        except Exception:  # counting must never disturb the logging (nor the code) it watches
            pass

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 — logging's name
        pass


class UsageMeter:
    """The counts of one process; ``install()`` makes it count. Thread-safe: records, S3 calls and tasks arrive
    from any thread, ``take()`` from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._s3: dict[str, dict[str, int]] = {}
        self._logs: dict[str, int] = {}
        self._tasks = 0
        self._installed = False
        self._log_handlers: list[tuple[logging.Logger, _LogCounter]] = []
        self._botocore: list[tuple[str, Any]] = []

    # -- counting ---------------------------------------------------------------------------------------------------

    def count_log(self, level: str, nbytes: int) -> None:
        with self._lock:
            self._logs[level] = self._logs.get(level, 0) + nbytes

    def count_s3(self, bucket: str, operation_cls: str, requests: int = 1) -> None:
        with self._lock:
            by_class = self._s3.setdefault(bucket, {})
            by_class[operation_cls] = by_class.get(operation_cls, 0) + requests

    def count_tasks(self, finished: int = 1) -> None:
        with self._lock:
            self._tasks += finished

    def take(self) -> dict[str, Any]:
        """The counts since the last take (``{"s3_requests": {bucket: {class: n}}, "log_bytes_by_level": {level:
        bytes}, "tasks_completed": n}``, plain dicts and ints); the meter starts again from zero."""
        with self._lock:
            taken = {"s3_requests": self._s3, "log_bytes_by_level": self._logs, "tasks_completed": self._tasks}
            self._s3, self._logs, self._tasks = {}, {}, 0
        return taken

    # -- installing -------------------------------------------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> UsageMeter:
        """Count from now on: the process's log (its handlers as configured now, so configure logging first) and
        the S3 calls of every botocore session created from now on (and of boto3's default session). Idempotent."""
        with self._lock:
            if self._installed:
                return self
            self._installed = True
        self._install_logging()
        self._install_botocore()
        return self

    def uninstall(self) -> None:
        """Stop counting (sessions created meanwhile keep the handlers, which count nothing any more)."""
        with self._lock:
            if not self._installed:
                return
            self._installed = False
        for logger, handler in self._log_handlers:
            logger.removeHandler(handler)
        self._log_handlers = []
        try:
            from botocore import handlers
        except ImportError:
            return
        for spec in self._botocore:
            if spec in handlers.BUILTIN_HANDLERS:
                handlers.BUILTIN_HANDLERS.remove(spec)
        self._botocore = []

    def _install_logging(self) -> None:
        """A counter next to each logger whose handlers write records: the root, and every logger that has
        handlers of its own and does not propagate (a record stops at the first such logger: counted once)."""
        loggers = [logging.getLogger()] + [
            logger for logger in list(logging.Logger.manager.loggerDict.values())
            if isinstance(logger, logging.Logger) and logger.handlers and not logger.propagate]
        for logger in loggers:
            writers = [h for h in logger.handlers if not isinstance(h, _LogCounter)]
            if not writers:  # a handler added to a root without any would silence logging's last resort
                continue
            formatter = next((h.formatter for h in writers if h.formatter is not None), None)
            handler = _LogCounter(self, formatter)
            # the writer's level too: a record it drops is not written, so not counted
            handler.setLevel(min((h.level for h in writers), default=logging.NOTSET))
            logger.addHandler(handler)
            self._log_handlers.append((logger, handler))

    def _install_botocore(self) -> None:
        try:
            from botocore import handlers
        except ImportError:  # no boto3 in this environment: nothing can call S3 through it
            return
        specs = [("before-parameter-build.s3", self._s3_call), ("response-received.s3", self._s3_response)]
        for spec in specs:
            if spec not in handlers.BUILTIN_HANDLERS:
                handlers.BUILTIN_HANDLERS.append(spec)  # every botocore Session registers these when created
        self._botocore = specs
        try:
            import boto3
        except ImportError:
            return
        session = boto3.DEFAULT_SESSION  # created before us: register on it too
        if session is not None:
            for event, handler in specs:
                session.events.register(event, handler, unique_id=f"vmguard-usage-{event}")

    # -- botocore events --------------------------------------------------------------------------------------------

    def _s3_call(self, params: Mapping[str, Any] | None = None, model: Any = None, context: dict | None = None,
                 **_: Any) -> None:
        """Before each S3 API call: note its bucket and class in the call's context, for each attempt to count."""
        try:
            if context is None or model is None:
                return
            bucket = params.get("Bucket") if isinstance(params, Mapping) else None
            context["vmguard_s3"] = (str(bucket) if bucket else NO_BUCKET, operation_class(model.name))
        except Exception:
            pass

    def _s3_response(self, context: dict | None = None, response_dict: Any = None, **_: Any) -> None:
        """After each HTTP attempt: one request when S3 answered (a retried call is several billed requests)."""
        try:
            if not self._installed or context is None or response_dict is None:
                return
            noted = context.get("vmguard_s3")
            if noted is not None:
                self.count_s3(*noted)
        except Exception:
            pass


METER = UsageMeter()
"""This process's meter."""


def install() -> UsageMeter:
    """Make this process's meter count (the on-VM agent calls it after configuring logging)."""
    return METER.install()


def take() -> dict[str, Any]:
    """This process's counts since the last take (what the SDK's heartbeat runs on every worker)."""
    return METER.take()


def scheduler_take(dask_scheduler: Scheduler | None = None) -> dict[str, Any]:
    """On the scheduler: its ``take()`` plus what it is doing now: ``tasks_processing`` (running on a worker, or
    queued on the scheduler for one) and ``workers``."""
    taken = METER.take()
    if dask_scheduler is not None:
        workers = list(dask_scheduler.workers.values())
        taken["tasks_processing"] = sum(len(ws.processing) for ws in workers) + len(dask_scheduler.queued)
        taken["workers"] = len(workers)
    return taken


def _task_counter_class() -> type:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        """Counts the tasks that finished (processing → memory or erred) into the process's meter."""

        name = "vmguard-task-counter"

        def __init__(self, meter: UsageMeter) -> None:
            self.meter = meter

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
            if start == "processing" and finish in ("memory", "erred"):
                self.meter.count_tasks()

    return TaskCounter


def task_counter(meter: UsageMeter | None = None) -> Any:
    """The scheduler plugin counting finished tasks (into this process's meter by default)."""
    return _task_counter_class()(meter or METER)


# -- the SDK's side -------------------------------------------------------------------------------------------------

class ClusterUsage:
    """What the SDK's heartbeat sends about a cluster: the counts gathered from its scheduler and workers that the
    daemon has not acknowledged yet, and what the scheduler last said it is doing.

    ``gather(client)`` asks the scheduler (``scheduler_take``) and every worker (``take``, one ``Client.run``) at
    once and waits at most ``timeout``: an answer that comes later (a worker whose event loop is busy) is added
    when it comes, and nothing is asked again of a side whose last question is still open (unless it has been open
    for ``stalled_after``) — so a slow or stuck worker never holds the heartbeat, and its counts are not lost.
    ``delivered()`` after the daemon accepted a beat; counts of a beat that did not arrive go with the next one.
    """

    def __init__(self, timeout: float = 10.0, stalled_after: float = 300.0) -> None:
        self.timeout = timeout
        self.stalled_after = stalled_after
        self._lock = threading.Lock()
        self._undelivered = empty()
        self._sent: dict[str, Any] | None = None
        self._measured = False
        self._now: dict[str, int] | None = None
        self._workers = 0
        self._open: dict[str, tuple[float, Any]] = {}

    def gather(self, client: Any) -> None:
        """Ask the cluster for its counts; wait up to ``timeout`` for the answers. Never raises."""
        import asyncio
        import concurrent.futures
        import time

        with self._lock:
            self._now = None
        asks = {"scheduler": lambda: client.run_on_scheduler(scheduler_take, asynchronous=True),
                "workers": lambda: client.run(take, on_error="return", asynchronous=True)}
        waiting = []
        for side, ask in asks.items():
            started, future = self._open.get(side, (0.0, None))
            if future is not None and not future.done() and time.monotonic() - started < self.stalled_after:
                waiting.append(future)
                continue
            try:
                future = asyncio.run_coroutine_threadsafe(_awaited(ask), client.loop.asyncio_loop)
            except Exception as exc:  # the client's loop is gone: nothing to ask
                _log.debug("cannot ask the %s for usage: %s", side, exc)
                continue
            future.add_done_callback(lambda done, side=side: self._answered(side, done))
            self._open[side] = (time.monotonic(), future)
            waiting.append(future)
        concurrent.futures.wait(waiting, timeout=self.timeout)

    def _answered(self, side: str, future: Any) -> None:
        try:
            answer = future.result()
        except BaseException as exc:  # noqa: BLE001 — a lost answer must not end the client's loop
            _log.debug("the %s did not report usage: %s", side, exc)
            return
        with self._lock:
            if side == "scheduler" and isinstance(answer, Mapping):
                merge(self._undelivered, answer)
                self._now = {"tasks_processing": int(answer.get("tasks_processing", 0)),
                             "workers": int(answer.get("workers", 0))}
                self._workers = self._now["workers"]
                self._measured = True
            elif side == "workers" and isinstance(answer, Mapping):
                for report in answer.values():
                    merge(self._undelivered, report)  # a worker's exception is no mapping: skipped
                self._measured = True

    def beat_fields(self) -> dict[str, Any]:
        """The heartbeat's fields: the undelivered counts (None when the cluster never reported any), and what the
        scheduler said now (no task processing when it did not answer this time, so an unanswered question is never
        taken for activity)."""
        with self._lock:
            now = self._now or {"tasks_processing": 0, "workers": self._workers}
            counts = {"s3_requests": {bucket: dict(by_class) for bucket, by_class in
                                      self._undelivered["s3_requests"].items()},
                      "log_bytes_by_level": dict(self._undelivered["log_bytes_by_level"])}
            self._sent = {"s3_requests": counts["s3_requests"], "log_bytes_by_level": counts["log_bytes_by_level"],
                          "tasks_completed": self._undelivered["tasks_completed"]}
            return {**now, "tasks_completed": self._sent["tasks_completed"],
                    **(counts if self._measured else {"s3_requests": None, "log_bytes_by_level": None})}

    def delivered(self) -> None:
        """The daemon accepted the last ``beat_fields()``: those counts are no longer owed (counts that came in
        since stay)."""
        with self._lock:
            if self._sent is None:
                return
            sent, self._sent = self._sent, None
            left = self._undelivered
            for bucket, by_class in sent["s3_requests"].items():
                for cls, count in by_class.items():
                    left["s3_requests"][bucket][cls] -= count
                    if not left["s3_requests"][bucket][cls]:
                        del left["s3_requests"][bucket][cls]
                if not left["s3_requests"][bucket]:
                    del left["s3_requests"][bucket]
            for level, count in sent["log_bytes_by_level"].items():
                left["log_bytes_by_level"][level] -= count
                if not left["log_bytes_by_level"][level]:
                    del left["log_bytes_by_level"][level]
            left["tasks_completed"] -= sent["tasks_completed"]


async def _awaited(ask: Any) -> Any:
    return await ask()

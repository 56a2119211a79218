"""The usage meter of a cluster's VMs (``sdk.usage``) and the SDK's gathering of it: S3 requests of real boto3
clients against the emulator over HTTP, by bucket and operation class, retries included; log bytes by level exactly
as the agent writes them; take/merge; and the gathering from real on-VM agents (``python -m sdk.vm``) with a real
Dask client — tasks running and finished, a busy worker that answers late, counts carried until the daemon took
them."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from distributed import Client, wait
from faults import FaultProxy

from guard.sandbox import SandboxServer
from sdk import usage
from sdk.usage import NO_BUCKET, ClusterUsage, UsageMeter, merge, operation_class

HOST = "127.0.0.1"
REGION = "us-east-1"


@pytest.mark.parametrize(("operation", "cls"), [
    ("GetObject", "GET"), ("GetObjectTagging", "GET"), ("GetBucketLocation", "GET"),
    ("PutObject", "PUT"), ("UploadPart", "PUT"), ("PutObjectTagging", "PUT"), ("CreateBucket", "PUT"),
    ("CreateMultipartUpload", "POST"), ("CompleteMultipartUpload", "POST"), ("RestoreObject", "POST"),
    ("ListObjects", "LIST"), ("ListObjectsV2", "LIST"), ("ListObjectVersions", "LIST"),
    ("ListMultipartUploads", "LIST"), ("ListParts", "LIST"), ("ListBuckets", "LIST"),
    ("HeadObject", "HEAD"), ("HeadBucket", "HEAD"),
    ("CopyObject", "COPY"), ("UploadPartCopy", "COPY"),
    ("DeleteObject", "DELETE"), ("DeleteObjects", "DELETE"), ("AbortMultipartUpload", "DELETE"),
    ("SelectObjectContent", "SELECT"),
    ("WriteGetObjectResponse", "OTHER"), ("CreateSession", "OTHER"),
])
def test_operations_are_classed_as_s3_bills_them(operation: str, cls: str) -> None:
    assert operation_class(operation) == cls


def test_take_returns_the_counts_since_the_last_take_and_merge_adds_them() -> None:
    meter = UsageMeter()
    meter.count_s3("features", "LIST")
    meter.count_s3("features", "LIST", 4)
    meter.count_s3("models", "GET")
    meter.count_log("debug", 120)
    meter.count_log("info", 30)
    meter.count_tasks(3)
    first = meter.take()
    assert first == {"s3_requests": {"features": {"LIST": 5}, "models": {"GET": 1}},
                     "log_bytes_by_level": {"debug": 120, "info": 30}, "tasks_completed": 3}
    assert meter.take() == usage.empty()  # reset
    meter.count_s3("features", "GET", 2)
    total = merge(merge(usage.empty(), first), meter.take())
    assert total == {"s3_requests": {"features": {"LIST": 5, "GET": 2}, "models": {"GET": 1}},
                     "log_bytes_by_level": {"debug": 120, "info": 30}, "tasks_completed": 3}
    # what another process sent is checked, not trusted: an exception object (a worker that failed), junk values
    assert merge(usage.empty(), ValueError("worker failed")) == usage.empty()
    assert merge(usage.empty(), {"s3_requests": {"b": {"GET": -1, "PUT": "many", "HEAD": True}, "c": 5},
                                 "log_bytes_by_level": {"debug": 1.5}, "tasks_completed": -2}) == {
        "s3_requests": {}, "log_bytes_by_level": {}, "tasks_completed": 0}


def test_counts_from_many_threads_add_up() -> None:
    meter = UsageMeter()

    def count() -> None:
        for _ in range(2000):
            meter.count_s3("b", "GET")
            meter.count_log("info", 10)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert meter.take() == {"s3_requests": {"b": {"GET": 16_000}}, "log_bytes_by_level": {"info": 160_000},
                            "tasks_completed": 0}


def test_a_record_that_cannot_be_formatted_is_not_counted_and_raises_nothing() -> None:
    meter = UsageMeter()
    counter = usage._LogCounter(meter, logging.Formatter("%(levelname)s %(message)s"))
    bad = logging.LogRecord("app", logging.INFO, __file__, 1, "%d items", ("many",), None)
    counter.handle(bad)  # the writer next to it reports the broken record; the counter stays quiet
    good = logging.LogRecord("app", logging.INFO, __file__, 1, "%d items", (3,), None)
    counter.handle(good)
    assert meter.take()["log_bytes_by_level"] == {"info": len("INFO 3 items\n")}


# -- the agent's log, counted as written ------------------------------------------------------------------------------

AGENT_LOGGING = textwrap.dedent("""
    import json, logging, sys, threading
    from sdk import usage
    from sdk.vm import _configure_logging

    _configure_logging(sys.argv[1])  # what `python -m sdk.vm` does with the config's log_level
    logging.getLogger("quiet").debug("a debug line: written only at DEBUG")
    loud = logging.getLogger("churn.features")
    loud.setLevel(logging.DEBUG)  # someone left debug logging on for one module
    loud.debug("a debug line of a logger set to DEBUG: %s", "x" * 50)
    logging.getLogger("distributed.worker").info("Dask's own log line, %d", 42)
    logging.getLogger("app").warning("not only ASCII: Grüße ✓")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("app").exception("with a traceback")

    def chatter(n):
        for i in range(300):
            logging.getLogger(f"thread{n}").info("line %d of thread %d", i, n)

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.stdout.write(json.dumps(usage.take()))
""")
_RECORD_START = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([A-Z]+) ", re.MULTILINE)


def _written_by_level(stderr: bytes) -> dict[str, int]:
    """Bytes of the agent's log by level, split at each record's first line (a traceback belongs to its record)."""
    starts = list(_RECORD_START.finditer(stderr))
    assert starts and starts[0].start() == 0, stderr[:500]
    written: dict[str, int] = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        end = following.start() if following is not None else len(stderr)
        level = match.group(1).decode().lower()
        written[level] = written.get(level, 0) + end - match.start()
    return written


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
def test_the_agent_counts_exactly_the_log_it_writes_by_level(log_level: str) -> None:
    done = subprocess.run([sys.executable, "-c", AGENT_LOGGING, log_level], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    counted = json.loads(done.stdout)["log_bytes_by_level"]
    written = _written_by_level(done.stderr)
    assert counted == written
    assert sum(counted.values()) == len(done.stderr)
    assert set(counted) == {"debug", "info", "warning", "error"}
    quiet = b"a debug line: written only at DEBUG" in done.stderr
    assert quiet == (log_level == "DEBUG")  # below the agent's level: neither written nor counted
    assert b"a debug line of a logger set to DEBUG" in done.stderr and b"Dask's own log line" in done.stderr
    assert counted["info"] > 8 * 300 * len("line 0 of thread 0\n")


# -- gathering from a real cluster ------------------------------------------------------------------------------------

SERVING = re.compile(r"scheduler of cluster \S+ serving at (tcp://\S+)")
"""The scheduler agent's line once it listens (on port 0: the port the system picked)."""


def _config(role: str) -> dict:
    return {"role": role, "cluster_id": "vmg-usage01", "scheduler_port": 0, "dashboard_port": None,
            "keepalive_seconds": 120, "log_level": "INFO", "nthreads": 2, "memory_limit": "auto"}


def _serving_at(process: subprocess.Popen, log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (match := SERVING.search(log.read_text())):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return match.group(1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Client]:
    """A scheduler and one worker, each a real on-VM agent process on loopback; a client connected to them."""
    processes: list[subprocess.Popen] = []
    logs = [tmp_path / "scheduler.log", tmp_path / "worker.log"]
    address = ""
    for role, log in zip(("scheduler", "worker"), logs, strict=True):
        command = [sys.executable, "-m", "sdk.vm", "--config", json.dumps(_config(role)), "--host", HOST]
        if role == "worker":
            command += ["--scheduler", address]
        with log.open("w") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
        if role == "scheduler":
            address = _serving_at(processes[0], log)
    try:
        with Client(address, timeout=15) as client:
            client.wait_for_workers(1, timeout=30)
            yield client
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


def _scorer() -> Callable[[int], int]:
    def score(x: int) -> int:  # a local function: Dask ships it by value to the worker
        import logging

        log = logging.getLogger("churn")
        log.setLevel(logging.DEBUG)
        log.debug("scoring %d", x)
        if x < 0:
            raise ValueError(f"cannot score {x}")
        return x

    return score


_score = _scorer()


def _debug_bytes(*xs: int) -> int:
    """What the worker writes for ``_score(x)``'s debug line: `<asctime> DEBUG churn: scoring <x>` and a newline."""
    return sum(len("2026-01-01 00:00:00,000 ") + len(f"DEBUG churn: scoring {x}") + 1 for x in xs)


def _poll(usage_: ClusterUsage, client: Client, done: Callable[[dict], bool], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        usage_.gather(client)
        fields = usage_.beat_fields()
        if done(fields) or time.monotonic() > deadline:
            return fields
        time.sleep(0.2)


def test_a_beat_carries_the_tasks_finished_and_the_logs_of_the_workers(cluster: Client) -> None:
    futures = cluster.map(_score, [1, 2, 3, -1], pure=False)
    wait(futures)
    assert [f.status for f in futures] == ["finished", "finished", "finished", "error"]

    gathered = ClusterUsage(timeout=10)
    assert gathered.beat_fields() == {"tasks_processing": 0, "workers": 0, "tasks_completed": 0,
                                      "s3_requests": None, "log_bytes_by_level": None}  # nothing asked yet
    fields = _poll(gathered, cluster, lambda f: f["log_bytes_by_level"] and "debug" in f["log_bytes_by_level"])
    assert (fields["tasks_processing"], fields["workers"], fields["tasks_completed"]) == (0, 1, 4)
    assert fields["s3_requests"] == {}  # measured: none made
    assert fields["log_bytes_by_level"]["debug"] == _debug_bytes(1, 2, 3, -1)

    # the daemon did not take that beat: its counts go with the next one, with what happened since
    cluster.submit(_score, 5, pure=False).result()
    fields = _poll(gathered, cluster, lambda f: f["tasks_completed"] == 5)
    assert fields["tasks_completed"] == 5
    assert fields["log_bytes_by_level"]["debug"] == _debug_bytes(1, 2, 3, -1, 5)

    gathered.delivered()  # it took this one: nothing is owed any more
    gathered.gather(cluster)
    fields = gathered.beat_fields()
    assert fields["tasks_completed"] == 0 and "debug" not in fields["log_bytes_by_level"]
    assert fields["workers"] == 1


def test_a_busy_worker_does_not_hold_the_beat_and_its_counts_come_with_a_later_one(cluster: Client) -> None:
    cluster.submit(_score, 7, pure=False).result()
    # a worker whose event loop is blocked (here by a function run on it) answers nothing for 4 s
    blocker = threading.Thread(target=cluster.run, args=(time.sleep, 4))
    blocker.start()
    time.sleep(0.5)
    gathered = ClusterUsage(timeout=1)
    started = time.monotonic()
    gathered.gather(cluster)
    assert time.monotonic() - started < 2.5
    fields = gathered.beat_fields()
    assert fields["tasks_completed"] == 1  # the scheduler answered
    assert "debug" not in (fields["log_bytes_by_level"] or {})  # the worker did not, yet
    blocker.join(timeout=30)
    fields = _poll(gathered, cluster, lambda f: "debug" in (f["log_bytes_by_level"] or {}))
    assert fields["log_bytes_by_level"]["debug"] == _debug_bytes(7)  # the late answer was kept, counted once
    assert fields["tasks_completed"] == 1



def test_a_beat_says_how_many_tasks_are_running_or_queued_now(cluster: Client) -> None:
    futures = cluster.map(time.sleep, [3] * 8, pure=False)  # 2 threads: some run, the rest wait on the scheduler
    gathered = ClusterUsage(timeout=10)
    fields = _poll(gathered, cluster, lambda f: f["tasks_processing"] == 8, timeout=2.5)
    assert (fields["tasks_processing"], fields["workers"], fields["tasks_completed"]) == (8, 1, 0)
    cluster.cancel(futures)


# -- S3 requests of real clients ------------------------------------------------------------------------------------

@pytest.fixture
def meter() -> Iterator[UsageMeter]:
    installed = UsageMeter().install()
    try:
        yield installed
    finally:
        installed.uninstall()


def s3(sandbox: SandboxServer, endpoint: str | None = None, session: boto3.session.Session | None = None):
    session = session or boto3.session.Session(aws_access_key_id=sandbox.env["AWS_ACCESS_KEY_ID"],
                                               aws_secret_access_key=sandbox.env["AWS_SECRET_ACCESS_KEY"],
                                               region_name=REGION)
    config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3})
    return session.client("s3", endpoint_url=endpoint or sandbox.endpoint_url, config=config)


def bucket_names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return f"usage-features-{suffix}", f"usage-models-{suffix}"


def test_every_request_is_counted_by_bucket_and_operation_class(sandbox: SandboxServer, meter: UsageMeter) -> None:
    features, models = bucket_names()
    client = s3(sandbox)
    client.create_bucket(Bucket=features)
    client.create_bucket(Bucket=models)
    for part in range(3):
        client.put_object(Bucket=features, Key=f"part-{part}.parquet", Body=b"x" * 100)
    client.get_object(Bucket=features, Key="part-0.parquet")["Body"].read()
    with pytest.raises(ClientError):  # S3 answered (404): a billed request too
        client.get_object(Bucket=features, Key="missing.parquet")
    client.head_object(Bucket=features, Key="part-1.parquet")
    client.head_bucket(Bucket=features)
    client.list_objects_v2(Bucket=features)
    client.copy_object(Bucket=models, Key="copy.parquet", CopySource={"Bucket": features, "Key": "part-2.parquet"})
    client.delete_objects(Bucket=features, Delete={"Objects": [{"Key": "part-0.parquet"}]})
    client.delete_object(Bucket=features, Key="part-1.parquet")
    upload = client.create_multipart_upload(Bucket=models, Key="model.bin")["UploadId"]
    etag = client.upload_part(Bucket=models, Key="model.bin", UploadId=upload, PartNumber=1, Body=b"m" * 100)["ETag"]
    client.list_parts(Bucket=models, Key="model.bin", UploadId=upload)
    client.complete_multipart_upload(Bucket=models, Key="model.bin", UploadId=upload,
                                     MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
    client.list_buckets()

    taken = meter.take()
    assert taken["s3_requests"] == {
        features: {"PUT": 4, "GET": 2, "HEAD": 2, "LIST": 1, "DELETE": 2},
        models: {"PUT": 2, "COPY": 1, "POST": 2, "LIST": 1},
        NO_BUCKET: {"LIST": 1},
    }
    assert meter.take()["s3_requests"] == {}  # taken: counting starts again from zero


def test_retries_are_requests(sandbox: SandboxServer, meter: UsageMeter) -> None:
    features, _ = bucket_names()
    s3(sandbox).create_bucket(Bucket=features)
    s3(sandbox).put_object(Bucket=features, Key="a", Body=b"a")
    meter.take()
    with FaultProxy(sandbox.endpoint_url) as proxy:
        client = s3(sandbox, endpoint=proxy.url)
        proxy.fail("", 503, "SlowDown", "Please reduce your request rate.", times=2)  # S3's REST calls name no action
        assert client.get_object(Bucket=features, Key="a")["Body"].read() == b"a"  # the third attempt succeeds
        assert proxy.received("") == 3
    assert meter.take()["s3_requests"] == {features: {"GET": 3}}


def test_the_default_session_made_before_install_counts_and_nothing_counts_after_uninstall(
        sandbox: SandboxServer) -> None:
    features, _ = bucket_names()
    before = boto3.DEFAULT_SESSION
    boto3.setup_default_session(aws_access_key_id=sandbox.env["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key=sandbox.env["AWS_SECRET_ACCESS_KEY"], region_name=REGION)
    meter = UsageMeter()
    try:
        meter.install()
        client = boto3.client("s3", endpoint_url=sandbox.endpoint_url, config=Config(s3={"addressing_style": "path"}))
        client.create_bucket(Bucket=features)
        client.list_objects_v2(Bucket=features)
        assert meter.take()["s3_requests"] == {features: {"PUT": 1, "LIST": 1}}
        meter.uninstall()
        client.list_objects_v2(Bucket=features)
        s3(sandbox).list_objects_v2(Bucket=features)  # a session made after uninstall
        assert meter.take()["s3_requests"] == {}
    finally:
        meter.uninstall()
        boto3.DEFAULT_SESSION = before

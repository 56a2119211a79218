"""A command line run on a cluster's worker, its output streamed back line by line, its exit code returned.

``run_command(cluster, argv)`` sends the working directory's code (``workdir_files``: the modules and packages the
environment replication carries, as files, so ``python train.py`` finds ``train.py``) with a task that runs on one
worker: ``run_on_worker`` writes them into a fresh directory, runs ``argv`` there as a subprocess and sends each
line it prints to the client as a Dask event (``Worker.log_event``: over the cluster's TLS connection, in order).
The client writes the lines to its own stdout and stderr as they come and returns the command's exit code.

The command runs in the worker's process environment: the replicated Python first on ``PATH`` (so ``python`` is
the environment's), the forwarded AWS credentials and ``environ``, ``PYTHONUNBUFFERED=1`` so a script's prints
arrive as they are printed, and the cluster's address and TLS, so ``distributed.Client()`` in the command uses the
cluster (``command_environ``). It runs once: a worker that ends while it runs fails the command (Dask would otherwise
run it again elsewhere). A worker that closes (keepalive, max lifetime, SIGTERM) kills it; what the command
leaves running in the background when it exits is killed with it (its session).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sdk.errors import SdkError

if TYPE_CHECKING:
    from sdk.cluster import Cluster

MAX_FILES_BYTES = 32 * 1024 * 1024
"""The most code sent with a command: more is data, which belongs in S3, not in a task."""
NOT_FOUND, NOT_EXECUTABLE = 127, 126
"""The shell's exit codes for a command that does not exist, or cannot be executed."""
POLL_SECONDS = 0.2
DONE_WAIT_SECONDS = 10.0
"""How long the client waits, after the task's result, for the last output lines (they are sent before it)."""


def workdir_files(workdir: Path) -> dict[str, bytes]:
    """The working directory's code, by path relative to it; a one-line ``SdkError`` above ``MAX_FILES_BYTES``."""
    from sdk.environment.capture import workdir_modules

    root = workdir.resolve()
    files = {path.relative_to(root).as_posix(): path.read_bytes() for path in workdir_modules(root)}
    size = sum(len(content) for content in files.values())
    if size > MAX_FILES_BYTES:
        raise SdkError(f"the working directory's code is {size / 2**20:.0f} MiB (at most "
                       f"{MAX_FILES_BYTES // 2**20} MiB is sent with a command); run from the project's own folder, "
                       "or move data files out of its packages")
    return files


# -- on the worker ------------------------------------------------------------------------------------------------


def run_on_worker(argv: list[str], files: dict[str, bytes], topic: str) -> int:
    """Run ``argv`` in a directory holding ``files``; send its output to ``topic``; its exit code (a task)."""
    from distributed import get_worker

    worker = get_worker()

    def send(message: dict[str, Any]) -> None:
        worker.log_event(topic, message)

    send({"started": worker.address})
    workdir = Path(tempfile.mkdtemp(prefix="vmguard-run-"))
    try:
        for name, content in files.items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_bytes(content)
        code = _run(argv, workdir, command_environ(worker), send,
                    lambda: worker.status.name not in ("running", "paused"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    send({"exit": code})
    return code


def command_environ(worker: Any) -> dict[str, str]:
    """The command's environment: the worker's, with the replicated Python first on ``PATH``, unbuffered output,
    and what lets its own ``distributed.Client()`` reach the cluster: the scheduler's address and, on a TLS
    cluster, the cluster's CA and this VM's certificate (Dask reads PEM text from its config variables)."""
    environ = os.environ | {"PYTHONUNBUFFERED": "1", "DASK_SCHEDULER_ADDRESS": worker.scheduler.address,
                            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    security = worker.security
    if security.tls_ca_file and security.tls_client_cert:
        environ |= {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
                    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": security.tls_ca_file,
                    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": security.tls_client_cert,
                    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": security.tls_client_key}
    return environ


def _run(argv: list[str], workdir: Path, environ: dict[str, str], send, closing) -> int:
    """The subprocess, its two streams pumped line by line, killed (its whole session) if ``closing()``."""
    try:
        process = subprocess.Popen(argv, cwd=workdir, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        send({"stream": "stderr", "text": f"vmguard: {argv[0]}: command not found on the VM\n"})
        return NOT_FOUND
    except PermissionError:
        send({"stream": "stderr", "text": f"vmguard: {argv[0]}: permission denied on the VM\n"})
        return NOT_EXECUTABLE
    pumps = [threading.Thread(target=_pump, args=(pipe, name, send), daemon=True)
             for pipe, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
    for pump in pumps:
        pump.start()
    while process.poll() is None:
        if closing():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS)
    with contextlib.suppress(ProcessLookupError):  # what it left running in the background would hold the pipes
        os.killpg(process.pid, signal.SIGKILL)
    for pump in pumps:
        pump.join()
    return process.returncode if process.returncode >= 0 else 128 - process.returncode  # killed: 128 + signal


def _pump(pipe: IO[bytes], stream: str, send) -> None:
    for line in iter(pipe.readline, b""):
        send({"stream": stream, "text": line.decode(errors="replace")})
    pipe.close()


# -- on the client ------------------------------------------------------------------------------------------------


class _Output:
    """The client's side of the topic: the lines written out as they arrive, the worker, the end."""

    def __init__(self, stdout: IO[str], stderr: IO[str]) -> None:
        self.streams = {"stdout": stdout, "stderr": stderr}
        self.started_on: str | None = None
        self.done = threading.Event()

    def __call__(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        if "text" in message:
            stream = self.streams[message["stream"]]
            stream.write(message["text"])
            stream.flush()
        elif "started" in message:
            self.started_on = message["started"]
        elif "exit" in message:
            self.done.set()


def run_command(cluster: Cluster, argv: list[str], files: dict[str, bytes] | None = None, *,
                stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run ``argv`` on one of ``cluster``'s workers with ``files`` in its directory; its exit code."""
    client = cluster.get_client()
    with cluster.console.status("waiting for a worker to boot…"):
        try:
            client.wait_for_workers(1, timeout=cluster.spec.boot_timeout.total_seconds())
        except TimeoutError:
            raise SdkError(f"no worker of {cluster.cluster_id} joined within "
                           f"{int(cluster.spec.boot_timeout.total_seconds())}s; the cluster was shut down") from None
    topic = f"vmguard-run-{uuid.uuid4().hex}"
    output = _Output(stdout or sys.stdout, stderr or sys.stderr)
    client.subscribe_topic(topic, output)
    try:
        future = client.submit(run_on_worker, argv, files or {}, topic, pure=False, retries=0)
        while not future.done():
            _check_still_running(cluster, output)
            time.sleep(1)
        code = future.result()
        output.done.wait(DONE_WAIT_SECONDS)
        return code
    finally:
        client.unsubscribe_topic(topic)


def _check_still_running(cluster: Cluster, output: _Output) -> None:
    """A one-line ``SdkError`` when the cluster, or the worker running the command, is gone."""
    if not cluster.alive:
        raise SdkError(f"lost the connection to {cluster.cluster_id} while the command ran")
    if output.started_on is not None and output.started_on not in cluster.get_client().scheduler_info()["workers"]:
        raise SdkError(f"the VM running the command ({output.started_on}) ended before the command did")

"""`guard run` as a real OS process that a test can SIGKILL, started quickly many times over.

Importing the daemon (boto3, SQLAlchemy, FastAPI…) takes ~2.5 s of CPU on a small machine, and the crash test
starts `guard run` twice in each of its 30+ runs. So a launcher process (this file, run as a script) imports
those modules once and forks one child per start; the child sets its own environment, working directory and
log file and calls ``guard.cli.main`` with ``run``, exactly what the ``guard`` console script calls. The child is
a separate process with its own pid: SIGKILL kills it mid-whatever, SIGTERM stops it cleanly. ``console_script``
starts the installed ``guard`` executable instead, for comparison.

Protocol (one JSON object per line on the launcher's stdin and stdout): ``{"op": "start", "env", "cwd", "log"}``
→ ``{"pid"}``; ``{"op": "poll", "pid"}`` → ``{"exit": code or null}`` (a signal is ``-signum``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class DaemonProcess:
    """A running `guard run`: kill, terminate, and wait for its exit code (``-signum`` when a signal ended it)."""

    pid: int

    def poll(self) -> int | None:
        raise NotImplementedError

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"`guard run` (pid {self.pid}) still running after {timeout:.0f}s")
            time.sleep(0.01)
        return code

    def kill(self) -> int:
        """SIGKILL, and reap; a process that already exited is only reaped."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it just exited
                self.signal(signal.SIGKILL)
        return self.wait(timeout=30)


class _Popened(DaemonProcess):
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()


class _Forked(DaemonProcess):
    def __init__(self, launcher: Launcher, pid: int) -> None:
        self.launcher = launcher
        self.pid = pid
        self._exit: int | None = None

    def poll(self) -> int | None:
        if self._exit is None:
            reply = self.launcher.ask({"op": "poll", "pid": self.pid})
            if "error" in reply:
                raise RuntimeError(f"pid {self.pid}: {reply['error']}")
            self._exit = reply["exit"]
        return self._exit


class Launcher:
    """Starts `guard run` children from a process that imported the daemon once; a context manager."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)

    def ask(self, message: dict) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher exited ({self.process.poll()}) on {message['op']}")
        return json.loads(line)

    def start(self, env: dict[str, str], cwd: Path, log: Path) -> DaemonProcess:
        return _Forked(self, self.ask({"op": "start", "env": env, "cwd": str(cwd), "log": str(log)})["pid"])

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def console_script(env: dict[str, str], cwd: Path, log: Path) -> DaemonProcess:
    """The installed ``guard`` executable, ``guard run``, as an ordinary subprocess."""
    with log.open("a") as out:
        popen = subprocess.Popen([str(Path(sys.executable).with_name("guard")), "run"], env=env, cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return _Popened(popen)


# -- the launcher process ---------------------------------------------------------------------------------------------

def _child(message: dict) -> None:
    """In the forked child: become `guard run` with the message's environment; never returns."""
    code = 1
    try:
        log = os.open(message["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["guard", "run"]
        from guard.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # whatever it is, it goes to the log and the exit code
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


WARM_MODULES = ("guard.api", "guard.cli", "guard.daemon", "guard.engine", "pydantic.v1", "sqlalchemy.dialects.sqlite",
                "uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.protocols.http.auto",
                "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl",
                "uvicorn.protocols.websockets.auto")
"""What `guard run` imports, at start or on first use (FastAPI loads pydantic.v1 while adding routes, SQLAlchemy
its dialect on the first engine, uvicorn its protocols when it starts serving)."""


def _warm_up() -> None:
    """Import once what every `guard run` imports, and load the price catalog; start no thread (forking stays safe)."""
    import importlib

    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):  # an optional speed-up uvicorn does without
            importlib.import_module(name)
    from guard.pricing import default_catalog
    from guard.rule import discover_rules

    discover_rules()
    default_catalog()


def _serve() -> None:
    _warm_up()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in pytest: the test stops its daemons itself
    for line in sys.stdin:
        message = json.loads(line)
        if message["op"] == "start":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(message)
            reply: dict = {"pid": pid}
        elif message["op"] == "poll":
            try:
                done, status = os.waitpid(message["pid"], os.WNOHANG)
            except ChildProcessError:
                reply = {"exit": None, "error": "not a child"}
            else:
                reply = {"exit": os.waitstatus_to_exitcode(status) if done else None}
        else:
            reply = {"error": f"unknown op {message['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()

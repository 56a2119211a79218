"""The emulated AWS account of the benchmarks, in a process of its own (its CPU is not the clients').

``python -m bench.emulator`` is ``python -m guard.sandbox --control`` with moto's CloudWatch indexed
(``bench.moto_index``); ``Emulator`` starts it and speaks its control protocol: seed a fleet, read and clear the
emulator's own log of the AWS requests it answered, read its CPU time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.seeding import FleetPlan

ROOT = Path(__file__).resolve().parent.parent


class EmulatorError(RuntimeError):
    """The emulator process failed or answered an error."""


@dataclass(frozen=True)
class Served:
    """What the emulator answered over a stretch: requests by ``service:Operation``, and those that failed."""

    calls: dict[str, int]
    failed: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @classmethod
    def of(cls, rows: list[list[Any]]) -> Served:
        calls: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        for name, status, count in rows:
            calls[name] += count
            if status >= 400:
                failed[name] += count
        return cls(dict(sorted(calls.items())), dict(sorted(failed.items())))


class Emulator:
    """``with Emulator() as aws:`` the emulator process; ``aws.env`` points an AWS SDK at it."""

    def __init__(self, log_path: Path | None = None, indexed: bool = True) -> None:
        self.log_path = log_path
        self.indexed = indexed
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.endpoint_url = ""
        self.env: dict[str, str] = {}

    def start(self) -> Emulator:
        module = "bench.emulator" if self.indexed else "guard.sandbox"
        stderr = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", module, "--control"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, cwd=ROOT, text=True, bufsize=1, env=clean_env())
        finally:
            if self.log_path:
                stderr.close()
        hello = self._read()
        self.endpoint_url, self.env = hello["endpoint_url"], hello["env"]
        return self

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def _read(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait(timeout=30)
            raise EmulatorError(f"the emulator exited ({code}); see {self.log_path or 'its stderr'}")
        answer = json.loads(line)
        if "error" in answer:
            raise EmulatorError(answer["error"])
        return answer

    def ask(self, op: str, **params: Any) -> dict[str, Any]:
        with self._lock:
            assert self._process is not None and self._process.stdin is not None
            self._process.stdin.write(json.dumps({"op": op, **params}) + "\n")
            self._process.stdin.flush()
            return self._read()

    def reset(self) -> None:
        self.ask("reset")

    def seed(self, plan: FleetPlan) -> dict[str, list[str]]:
        """Seed the plan's fleet (the emulator is reset first); the ids it made. The seeding's requests are
        dropped from the emulator's log (they are not measured, and the datums they carried are many)."""
        self.reset()
        seeded = self.ask("seed_fleet", **plan.seed_fleet_args())
        self.clear_requests()
        return seeded

    def served(self) -> Served:
        return Served.of(self.ask("requests")["requests"])

    def clear_requests(self) -> None:
        self.ask("clear_requests")

    def usage(self) -> dict[str, float]:
        return self.ask("usage")

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout:
            self._process.stdout.close()
        self._process = None


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without AWS or GUARD settings (no real account, no stray config), plus ``extra``.

    Bytecode is written as a normal Python does (``PYTHONDONTWRITEBYTECODE`` dropped): a client that compiled its
    modules from source at every start would be measured for that.
    """
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "GUARD_", "VMGUARD_")) and name != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


def main() -> None:
    from bench import moto_index
    from guard.sandbox.__main__ import main as serve
    from guard.sandbox.server import _configure_moto

    _configure_moto()  # before the index imports moto's EC2 models, which read the image settings when imported
    moto_index.install()
    serve(["--control"])


if __name__ == "__main__":
    main()

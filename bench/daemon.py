"""The daemon as users run it (``guard run``), in a process of its own, against the benchmark's emulator."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.emulator import Emulator, clean_env

OWNER = "bench@example.com"


SERVING = re.compile(rb"serving (http://\S+?)/metrics")
"""What `guard run` prints once it listens: with GUARD_LISTEN on port 0, the port the system picked."""


class DaemonProcess:
    """``with DaemonProcess(emulator, workdir) as daemon:`` ``guard run`` on a loopback port it picks (port 0; the
    address read from what it prints), its first scan done.

    Scans every ``scan_interval`` (an hour by default: one scan at start, none during a measurement).
    ``rules``: the rules enabled (default: every rule, as shipped).
    """

    def __init__(self, emulator: Emulator, workdir: Path, region: str = "us-east-1", scan_interval: str = "1h",
                 rules: dict[str, bool] | None = None, ready_timeout: float = 600.0) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.region = region
        self.scan_interval = scan_interval
        self.rules = rules or {}
        self.ready_timeout = ready_timeout
        self.admin_token = secrets.token_hex(16)
        self.owner_token = secrets.token_hex(16)
        self.url = ""
        self._process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        database = self.workdir / "guard.db"
        database.unlink(missing_ok=True)
        env = clean_env(**self.emulator.env, GUARD_DATABASE_URL=f"sqlite:///{database}",
                        GUARD_LISTEN="127.0.0.1:0", GUARD_REGIONS=self.region,
                        GUARD_SCAN_INTERVAL=self.scan_interval, GUARD_API_TOKEN=self.admin_token,
                        GUARD_API_TOKENS=f"{OWNER}={self.owner_token}",
                        **{f"GUARD_RULES__{rule.upper().replace('-', '_')}__ENABLED": str(on).lower()
                           for rule, on in self.rules.items()})
        with (self.workdir / "guard.log").open("wb") as log:
            self._process = subprocess.Popen([sys.executable, "-m", "guard", "run"], env=env, cwd=self.workdir,
                                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._wait_first_scan()
        return self

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.admin_token}"},
                             timeout=30)
        response.raise_for_status()
        return response.json()

    def _wait_first_scan(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"guard run exited with {self._process.returncode}; see "
                                   f"{self.workdir / 'guard.log'}")
            if not self.url:
                match = SERVING.search((self.workdir / "guard.log").read_bytes())
                self.url = match.group(1).decode() if match else ""
            try:
                if self.url and self.get("/v1/scans?limit=1"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"guard run did not finish its first scan within {self.ready_timeout:.0f}s")

    def memory(self) -> dict[str, int]:
        """The daemon process's resident memory now and at its peak (bytes), from /proc."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) * 1024
        return {"rss_bytes": values.get("VmRSS", 0), "peak_rss_bytes": values.get("VmHWM", 0)}

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

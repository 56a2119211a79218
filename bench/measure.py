"""Running a client as a process of its own and measuring it: CPU seconds (user + system), peak RSS, wall time.

``os.wait4`` gives the resources of exactly that child process (not the emulator's, not the benchmark's), the
whole process from interpreter start to exit.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    stdout: str

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


class ClientFailed(RuntimeError):
    """A measured client exited with an error."""


def run_measured(command: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path,
                 timeout: float = 1800.0) -> Measured:
    """Run ``command`` to its end; stdout is returned, stderr goes to ``log_path``."""
    out_path = log_path.with_suffix(".stdout")
    with log_path.open("wb") as err, out_path.open("wb") as out:
        clock = time.perf_counter()
        process = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL)
        deadline = clock + timeout
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{command[0]} ran past {timeout:.0f}s")
                time.sleep(0.01)
        except BaseException:  # timed out or interrupted: the client does not outlive the measurement
            process.kill()
            os.wait4(process.pid, 0)
            raise
        wall = time.perf_counter() - clock
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(returncode=process.returncode, wall_seconds=wall, user_seconds=usage.ru_utime,
                    system_seconds=usage.ru_stime, peak_rss_bytes=usage.ru_maxrss * 1024,
                    stdout=out_path.read_text())

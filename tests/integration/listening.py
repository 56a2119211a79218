"""The address a server started on port 0 reports, read from its log: no test picks a port itself (a port found
free and closed can be taken by another process before the server binds it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from polling import wait_for

DAEMON_LINE = re.compile(r"serving (http://\S+?)/metrics")
"""`guard run` and `guard demo`: "… serving http://127.0.0.1:NNNN/metrics …"."""
PROMETHEUS_LINE = re.compile(r'msg="Listening on" address=(\S+)')
"""Prometheus: ``msg="Listening on" address=127.0.0.1:NNNN`` (``--web.listen-address=127.0.0.1:0``)."""


def found_in(log: Path, pattern: re.Pattern[str], since: int = 0) -> str | None:
    """The first group of ``pattern``'s first match in ``log`` past byte ``since`` (a log appended to by a
    restarted server), or None while there is none."""
    text = log.read_bytes()[since:].decode(errors="replace") if log.exists() else ""
    match = pattern.search(text)
    return match.group(1) if match else None


def reported(log: Path, pattern: re.Pattern[str], process: subprocess.Popen | None = None,
             timeout: float = 120, what: str = "the server's address") -> str:
    """The first group of ``pattern``'s first match in ``log`` once it is written; fails at once, with the log's
    end, if ``process`` exits first."""
    def found() -> str | None:
        if value := found_in(log, pattern):
            return value
        text = log.read_text() if log.exists() else ""
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[:4]} exited with {process.returncode} before reporting "
                                 f"{what}:\n{text[-3000:]}")
        return None

    return wait_for(found, timeout, f"{what} in {log}")


def daemon_url(log: Path, process: subprocess.Popen | None = None, timeout: float = 120) -> str:
    """The base URL (``http://host:port``) `guard run` / `guard demo` printed to ``log``."""
    return reported(log, DAEMON_LINE, process, timeout, "the daemon's URL")


def prometheus_url(log: Path, process: subprocess.Popen | None = None, timeout: float = 60) -> str:
    """The base URL of a Prometheus started with ``--web.listen-address=127.0.0.1:0``, from its log."""
    return "http://" + reported(log, PROMETHEUS_LINE, process, timeout, "Prometheus's address")

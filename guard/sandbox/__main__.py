"""``python -m guard.sandbox``: the sandbox account served on its own, in a process of its own.

    python -m guard.sandbox                   # an empty account: prints its environment, serves until Ctrl-C
    python -m guard.sandbox --fleet 1000      # with a plain fleet: 1,000 instances with series, 100 volumes
    python -m guard.sandbox --control         # driven through standard input (below)

Another process can drive it with ``--control``: it writes one JSON object per line on the emulator's standard
input and reads one JSON line back per command on its standard output. The first line out, before any command,
is ``{"endpoint_url": …, "env": {…}}``. Commands (``{"op": …, …}``):

- ``reset``: empty the account;
- ``seed_fleet``: ``seed_fleet`` with its keyword arguments (``region``, ``instances``, ``volumes``,
  ``per_reservation``, ``with_metrics``) plus ``id_seed``, moto's id generator's seed (same seed, same ids);
  answers the ids made;
- ``requests``: the AWS requests answered since the last ``clear_requests``, as ``[[service:Operation, status,
  count], …]``;
- ``clear_requests``;
- ``usage``: this process's CPU seconds (user, system) and resident memory (now and peak, bytes).

End of input stops the server. Seeding runs here, so creation times can be moved into the past (``backdate``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import sys
import threading
from collections import Counter
from typing import Any, TextIO

from guard.sandbox.account import seed_fleet
from guard.sandbox.server import SandboxServer, moto_api

_SEED_FLEET_ARGS = ("region", "instances", "volumes", "per_reservation", "with_metrics")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def usage() -> dict[str, float]:
    """This process's CPU seconds and memory."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_seconds": own.ru_utime, "system_seconds": own.ru_stime, "rss_bytes": _rss_bytes(),
            "peak_rss_bytes": own.ru_maxrss * 1024}


def handle(server: SandboxServer, command: dict[str, Any]) -> dict[str, Any]:
    """Carry out one control command; the answer to write back."""
    op = command.get("op")
    if op == "reset":
        server.reset()
        return {"ok": True}
    if op == "seed_fleet":
        if command.get("id_seed") is not None:
            moto_api(server.endpoint_url, f"seed?a={int(command['id_seed'])}")
        fleet = seed_fleet(server.endpoint_url, **{key: command[key] for key in _SEED_FLEET_ARGS if key in command})
        return {"region": fleet.region, "instance_ids": list(fleet.instance_ids), "idle_ids": list(fleet.idle_ids),
                "volume_ids": list(fleet.volume_ids)}
    if op == "requests":
        counts = Counter((request.name, request.status) for request in server.requests())
        return {"requests": [[name, status, count] for (name, status), count in sorted(counts.items())]}
    if op == "clear_requests":
        server.clear_requests()
        return {"ok": True}
    if op == "usage":
        return usage()
    return {"error": f"unknown op {op!r}; expected reset, seed_fleet, requests, clear_requests or usage"}


def control(server: SandboxServer, commands: TextIO, answers: TextIO) -> None:
    """Answer commands until the end of input."""

    def say(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    say({"endpoint_url": server.endpoint_url, "env": server.env})
    for line in commands:
        if not line.strip():
            continue
        try:
            say(handle(server, json.loads(line)))
        except Exception as exc:  # a bad command is answered, never the end of the emulator
            say({"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m guard.sandbox", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--control", action="store_true", help="take JSON commands on stdin, answer on stdout")
    parser.add_argument("--fleet", type=int, default=0, help="seed a plain fleet of this many instances (with series)")
    parser.add_argument("--region", default="us-east-1", help="the fleet's region")
    args = parser.parse_args(argv)
    server = SandboxServer(log_size=1_000_000)
    server.start()
    server.apply_env()
    try:
        if args.control:
            # stray prints of the emulator must not mix with the answers: stdout becomes stderr, answers keep a copy
            answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
            control(server, sys.stdin, answers)
            return
        if args.fleet:
            seed_fleet(server.endpoint_url, args.region, instances=args.fleet, volumes=args.fleet // 10,
                       with_metrics=True)
        for name, value in sorted(server.env.items()):
            print(f"export {name}={shlex.quote(value)}")
        print(f"# serving {server.endpoint_url}; Ctrl-C stops", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):
            pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""``python -m bench [CASE ...]``: run benchmark cases and rewrite their sections of bench/RESULTS.md.

Cases: ``scan-N`` (vmguard's scan and Cloud Custodian's against N seeded instances), ``launch-N`` (the SDK's launch
of N workers and one RunInstances per VM), ``heartbeat`` (wrk on the daemon's heartbeat endpoint),
``daemon-rss-N`` (the daemon's memory after scanning N instances), ``store-N`` (a database of N scans: /metrics
before and after the retention indexes and prune; no emulator). ``default`` (what ``make bench`` runs):
scan-100 scan-1000 launch-1000 heartbeat; ``all``: default plus scan-10000 daemon-rss-10000 (slow: the emulator's
EC2 is O(N²) in tags).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from bench import daemon_rss, heartbeat, launch, scan, store
from bench.c7n_env import C7N_VERSION, compile_bytecode, ensure, versions
from bench.emulator import ROOT, Emulator
from bench.machine import machine, now
from bench.machine import versions as our_versions
from bench.results import Section, header, update
from bench.seeding import FleetPlan

DEFAULT = ("scan-100", "scan-1000", "launch-1000", "heartbeat")
OPT_IN = ("scan-10000", "daemon-rss-10000", "store-200000")
_CASE = re.compile(r"^(scan|launch|daemon-rss|store)-(\d+)$|^heartbeat$")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def expand(names: list[str]) -> list[str]:
    """Case names, groups expanded, duplicates dropped, in order; raises ValueError for an unknown one."""
    cases: list[str] = []
    for name in names or ["default"]:
        group = {"default": DEFAULT, "all": DEFAULT + OPT_IN}.get(name, (name,))
        for case in group:
            if not _CASE.match(case):
                raise ValueError(f"unknown case {case!r}: expected scan-N, launch-N, heartbeat, daemon-rss-N, store-N, "
                                 "default or all")
            if case not in cases:
                cases.append(case)
    return cases


def command_of(case: str) -> str:
    return f"python -m bench {case}"


def _failed_section(case: str, error: str, log_dir: Path) -> Section:
    match = _CASE.match(case)
    kind, number = (match.group(1), int(match.group(2))) if match and match.group(1) else (case, 0)
    opt_in = case not in DEFAULT
    heading = {"scan": lambda: scan.heading(number, opt_in), "launch": lambda: launch.heading(number),
               "daemon-rss": lambda: daemon_rss.heading(number, opt_in),
               "store": lambda: store.heading(number)}.get(kind, lambda: heartbeat.HEADING)()
    return Section(heading, f"Command: `{command_of(case)}` · {now()}\n\n**FAILED** in this run: {error} "
                            f"(logs under `{log_dir}`)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("cases", nargs="*", help="cases or groups (default: default)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md", help="the file to update")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench", help="Cloud Custodian's virtualenv, logs")
    parser.add_argument("--no-write", action="store_true", help="print the sections instead of updating --results")
    parser.add_argument("--duration", type=int, default=heartbeat.DURATION_SECONDS,
                        help="seconds of load per heartbeat concurrency")
    args = parser.parse_args(argv)
    try:
        cases = expand(args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    args.cache = args.cache.resolve()  # the clients run in directories of their own
    signal.signal(signal.SIGTERM, _interrupt)  # stop the emulator, daemon and clients on the way out

    started = time.perf_counter()
    run_dir = args.cache / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    base_versions = our_versions()
    where = machine()
    c7n_python = c7n_versions = None
    if any(case.startswith("scan-") for case in cases):
        _say(f"Cloud Custodian {C7N_VERSION} virtualenv under {args.cache}")
        c7n_python = ensure(args.cache, log=run_dir / "c7n-install.log")
        c7n_versions = versions(c7n_python)
    if "heartbeat" in cases:
        heartbeat.wrk_path()  # fail now, not after the other cases
    _say("byte-compiling the measured clients' packages (as pip does at install; once)")
    compile_bytecode(Path(sys.executable), *(ROOT / name for name in ("guard", "rules", "sdk", "bench")),
                     log=run_dir / "compile.log")
    if c7n_python is not None:
        compile_bytecode(c7n_python, log=run_dir / "compile.log")

    sections: list[Section] = []
    failures = 0
    needs_emulator = any(not case.startswith("store-") for case in cases)
    with Emulator(log_path=run_dir / "emulator.log") if needs_emulator else nullcontext() as emulator:
        for case in cases:
            case_dir = run_dir / case
            case_dir.mkdir(parents=True)
            clock = time.perf_counter()
            opt_in = case not in DEFAULT
            _say(f"{case}: starting")
            try:
                match = _CASE.match(case)
                assert match is not None
                kind, number = match.group(1), int(match.group(2) or 0)
                date = now()

                def head(extra: dict[str, str], case=case, date=date, clock=clock) -> str:
                    return header(command_of(case), date, where, {**base_versions, **extra},
                                  wall_seconds=time.perf_counter() - clock, in_make_bench=case in DEFAULT)

                if kind == "scan":
                    assert c7n_python is not None and c7n_versions is not None
                    result = scan.run_case(emulator, FleetPlan.of(number), case_dir, c7n_python, say=_say)
                    extra = {"c7n": c7n_versions["c7n"],
                             "c7n's boto3": f"{c7n_versions['boto3']} (botocore {c7n_versions['botocore']})"}
                    section = Section(*scan.render(result, head(extra), c7n_versions["c7n"], opt_in))
                    (case_dir / "result.json").write_text(json.dumps([run.as_dict() for run in result.runs], indent=1))
                    for what, met, numbers in scan.targets(result):
                        _say(f"{case}: {what}: {'met' if met else 'MISSED'} ({numbers})")
                elif kind == "launch":
                    result = launch.run_case(emulator, case_dir, workers=number, say=_say)
                    section = Section(*launch.render(result, head({})))
                elif kind == "store":
                    result = store.run_case(case_dir, number, say=_say)
                    section = Section(*store.render(result, head({})))
                elif kind == "daemon-rss":
                    result = daemon_rss.run_case(emulator, case_dir, number, say=_say)
                    section = Section(*daemon_rss.render(result, head({}), opt_in))
                else:
                    result = heartbeat.run_case(emulator, case_dir, duration=args.duration, say=_say)
                    section = Section(*heartbeat.render(result, head({"wrk": result.wrk_version})))
            except Exception as exc:
                failures += 1
                _say(f"{case}: FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                section = _failed_section(case, f"{type(exc).__name__}: {exc}", case_dir)
            sections.append(section)
            _say(f"{case}: done in {time.perf_counter() - clock:.1f}s")
            if not args.no_write:
                update(args.results, [section])  # each case's numbers are kept even if a later one fails

    if args.no_write:
        for section in sections:
            print(section.text())
    else:
        _say(f"wrote {len(sections)} section(s) of {args.results}")
    _say(f"{len(cases)} case(s) in {time.perf_counter() - started:.0f}s; {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.vmguard_scan REGION DATABASE_URL``: one vmguard scan with idle-vms and detached-volumes only.

Run as its own process by the benchmark (which measures the whole process: CPU, peak RSS, wall time). Prints one
JSON object: the scan's status and errors, the resource ids each rule found, vmguard's own count of AWS calls
(``Aws.counter``), and the CPU seconds of the scan alone (without interpreter start-up and imports).
"""

from __future__ import annotations

import json
import resource
import sys
import time

RULES = ("idle-vms", "detached-volumes")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main(region: str, database_url: str) -> dict:
    from guard.aws import Aws
    from guard.engine import Scanner
    from guard.rule import discover_rules
    from guard.settings import load_settings
    from guard.store import Store

    registry = discover_rules()
    settings = load_settings(registry, regions=[region], database_url=database_url,
                             rules={rule_id: {"enabled": rule_id in RULES} for rule_id in registry.rules})
    scanner = Scanner(settings, registry, Aws(), Store(settings.database_url))
    cpu, clock = _cpu(), time.perf_counter()
    report = scanner.scan(region)
    scan_cpu, scan_wall = _cpu() - cpu, time.perf_counter() - clock
    return {
        "status": report.status,
        "errors": report.errors,
        "found": {rule_id: sorted(f.resource_id for f in evaluation.findings)
                  for rule_id, evaluation in report.evaluations.items()},
        "undetermined": sorted(i for e in report.evaluations.values() for i in e.undetermined),
        "calls": scanner.aws.counter.by_operation(),
        "scan_cpu_seconds": scan_cpu,
        "scan_wall_seconds": scan_wall,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

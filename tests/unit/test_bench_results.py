"""The benchmark's bookkeeping, without running a benchmark: RESULTS.md section replacement, case names, parsing
wrk's and the emulator's reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.__main__ import expand  # noqa: E402
from bench.emulator import Served  # noqa: E402
from bench.heartbeat import parse  # noqa: E402
from bench.results import INTRO, Section, ratio, replace_sections, split, update  # noqa: E402
from bench.seeding import FleetPlan  # noqa: E402

OTHERS = """\
## Environment replication

Written by another benchmark.

```
## not a heading: inside a code block
```

| tool | seconds |
|---|---:|
| uv | 0.7 |
"""


def test_replacing_a_section_keeps_the_others_as_they_were() -> None:
    old = "# Old title\n\nold intro\n\n## Scan: 100 instances\n\nold numbers\n\n" + OTHERS
    new = replace_sections(old, [Section("Scan: 100 instances", "new numbers")])

    preamble, sections = split(new)
    assert preamble.startswith(INTRO.splitlines()[0]) and "old intro" not in new
    assert [heading for heading, _ in sections] == ["Scan: 100 instances", "Environment replication"]
    assert "new numbers" in new and "old numbers" not in new
    assert dict(sections)["Environment replication"].rstrip() == OTHERS.rstrip()


def test_new_sections_go_among_ours_in_order_and_others_stay_in_place() -> None:
    old = replace_sections(OTHERS, [Section("Heartbeat endpoint under load", "h")])
    assert [h for h, _ in split(old)[1]] == ["Environment replication", "Heartbeat endpoint under load"]

    new = replace_sections(old, [Section("Scan: 1,000 instances", "s1000"), Section("Launch: 1,000 workers", "l"),
                                 Section("Daemon memory: 10,000 instances (opt-in)", "d"),
                                 Section("Scan: 100 instances", "s100")])

    assert [h for h, _ in split(new)[1]] == [
        "Environment replication", "Scan: 100 instances", "Scan: 1,000 instances", "Launch: 1,000 workers",
        "Heartbeat endpoint under load", "Daemon memory: 10,000 instances (opt-in)"]
    assert replace_sections(new, []) == new  # idempotent


def test_update_creates_the_file_and_rewrites_only_what_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    update(path, [Section("Scan: 100 instances", "first")])
    path.write_text(path.read_text() + "\n" + OTHERS)
    update(path, [Section("Launch: 1,000 workers", "second")])

    text = path.read_text()
    assert "first" in text and "second" in text and "Written by another benchmark." in text


def test_case_names_expand_and_unknown_ones_are_refused() -> None:
    assert expand([]) == ["scan-100", "scan-1000", "launch-1000", "heartbeat"]
    assert expand(["scan-1000", "all"])[-3:] == ["scan-10000", "daemon-rss-10000", "store-200000"]
    assert expand(["scan-1000", "all"]).count("scan-1000") == 1
    with pytest.raises(ValueError, match="unknown case 'scan'"):
        expand(["scan"])


def test_ratios_read_as_fractions_when_small() -> None:
    assert ratio(9, 1003) == "0.0090 (1/111)"
    assert ratio(3.2, 4.0) == "0.80"
    assert ratio(1, 0) == "—"


def test_the_emulator_log_is_summed_by_operation_with_failures_apart() -> None:
    served = Served.of([["ec2:DescribeInstances", 200, 2], ["ec2:DescribeInstances", 503, 1],
                        ["monitoring:GetMetricData", 200, 6]])
    assert served.calls == {"ec2:DescribeInstances": 3, "monitoring:GetMetricData": 6}
    assert served.failed == {"ec2:DescribeInstances": 1} and served.total == 9


def test_wrk_summary_line_is_parsed() -> None:
    output = ("Running 10s test @ http://127.0.0.1:1/v1/clusters/vmg-x/heartbeat\n"
              '{"requests": 2500, "duration_us": 10000000, "connect_errors": 0, "read_errors": 0, "write_errors": 0, '
              '"status_errors": 3, "timeouts": 1, "p50_us": 4800, "p90_us": 9000, "p99_us": 69800, "max_us": 172000}\n')
    load = parse(output, connections=8, threads=2)
    assert load.requests_per_second == 250 and load.p50_ms == 4.8 and load.p99_ms == 69.8
    assert load.error_count == 4 and load.errors["non-2xx"] == 3


def test_a_plan_is_n_instances_in_reservations_of_ten_and_n_over_ten_volumes() -> None:
    plan = FleetPlan.of(1000)
    assert (plan.reservations, plan.volumes) == (100, 100)
    assert (FleetPlan.of(10_000).reservations, FleetPlan.of(10_000).volumes) == (10_000, 1000)
    assert plan.seed_fleet_args() == {"region": "us-east-1", "instances": 1000, "volumes": 100,
                                      "per_reservation": 10, "with_metrics": True, "id_seed": plan.id_seed}

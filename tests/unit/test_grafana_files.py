"""grafana/ as files: dashboards importable into a current Grafana, alerts that say what to do and are unit-tested both
ways, thresholds in one place and in the README, and every metric they name exposed by the daemon."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guard.aws import CallCounter
from guard.clusters import EXPIRED, RUNNING, TERMINATED, ClusterRegistry
from guard.metrics import DaemonMetrics
from guard.pricing import HOURS_PER_MONTH
from guard.store import Store
from guard.wire import ClusterRegistration, Heartbeat

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "alerts" / "vmguard.rules.yml"
RULE_TESTS = GRAFANA / "alerts" / "vmguard.tests.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table", "gauge", "piechart", "text"}
METRIC = re.compile(r"(?<![\w:.])guard_[a-z0-9_]+(?![\w:])")
"""A daemon metric's name (recording rules' names, level:metric:operation, contain one but are not one)."""
RECORDED = re.compile(r"(?<![\w:])[a-z_]+:[a-z0-9_:]+(?![\w:])")


def board(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in (panel, *all_panels(panel.get("panels", [])))]


def groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> list[dict]:
    return [rule for group in groups() for rule in group["rules"] if "alert" in rule]


def records() -> set[str]:
    return {rule["record"] for group in groups() for rule in group["rules"] if "record" in rule}


def expressions() -> list[str]:
    """Every PromQL expression of grafana/: panel targets, the rules and their annotations' template queries."""
    exprs = [target["expr"] for path in DASHBOARDS for panel in all_panels(board(path)["panels"])
             for target in panel.get("targets", [])]
    exprs += [var["definition"] for path in DASHBOARDS for var in board(path)["templating"]["list"]
              if var["type"] == "query"]
    for group in groups():
        for rule in group["rules"]:
            exprs.append(rule["expr"])
            for text in rule.get("annotations", {}).values():
                exprs += re.findall(r'query "([^"]+)"', text)
    return exprs


# -- dashboards ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_is_importable_into_a_current_grafana(path: Path) -> None:
    dashboard = board(path)
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None and re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"] and "vmguard" in dashboard["tags"]
    panels = all_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, (panel["title"], pos)
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), (panel["title"], target)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_has_datasource_region_and_owner_variables(path: Path) -> None:
    variables = {var["name"]: var for var in board(path)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("region", "owner"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(.+, {name}\)", var["definition"])
        assert var["query"]["query"] == var["definition"]
        if var.get("includeAll"):
            assert var["allValue"] == ".*", "an `All` region/owner must match every value in `=~` selectors"
    exprs = [t["expr"] for panel in all_panels(board(path)["panels"]) for t in panel.get("targets", [])]
    assert all('region="$' not in e and 'owner="$' not in e for e in exprs), "use =~ for multi-value variables"
    assert sum('region=~"$region"' in e for e in exprs) > len(exprs) / 2
    assert sum('owner=~"$owner"' in e for e in exprs) > len(exprs) / 3


def test_no_datasource_is_hard_coded_in_a_dashboard() -> None:
    for path in DASHBOARDS:
        uids = set(re.findall(r'"uid":\s*"([^"]*)"', path.read_text())) - {board(path)["uid"]}
        assert uids <= {"${datasource}", "-- Grafana --"}, (path.name, uids)


# -- rules -----------------------------------------------------------------------------------------------------------

def test_every_alert_has_a_severity_and_says_what_to_do() -> None:
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["labels"]["service"] == "vmguard", alert["alert"]
        assert {"summary", "description", "what_to_do"} <= alert["annotations"].keys(), alert["alert"]
        assert re.fullmatch(r"\d+[mh]", alert["for"]), alert["alert"]


def test_the_alerts_the_issue_asks_for_exist() -> None:
    exprs = {alert["alert"]: alert["expr"] for alert in alerts()}
    assert "guard_waste_unique_hourly_usd" in exprs["VmguardWasteHigh"]
    assert "[3h]" in exprs["VmguardSpendAnomaly"] and "[7d" in exprs["VmguardSpendAnomaly"]
    assert "vmguard:guard_running_monthly_usd:sum" in exprs["VmguardMonthlyBudgetExceeded"]
    assert 'rule="debug-logging"' in exprs["VmguardDebugLoggingAtScale"]
    assert 'rule="idle-gpu"' in exprs["VmguardIdleGpu"]
    assert "guard_cluster_expiry_timestamp_seconds" in exprs["VmguardClusterPastKeepalive"]
    assert "guard_last_scan_timestamp_seconds" in exprs["VmguardScanFailing"]
    assert "guard_last_scan_success_timestamp_seconds" in exprs["VmguardScanStale"]
    assert "up{" in exprs["VmguardDaemonDown"] and "absent(up{" in exprs["VmguardDaemonDown"]


def test_every_alert_fires_and_has_a_near_miss_in_the_promtool_tests() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    cases = [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]
    for alert in alerts():
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{alert['alert']} never fires in {RULE_TESTS.name}"
        assert any(not case["exp_alerts"] for case in mine), f"{alert['alert']} has no near miss in {RULE_TESTS.name}"
        for case in mine:
            for expected in case["exp_alerts"]:
                assert expected["exp_annotations"].keys() == alert["annotations"].keys(), alert["alert"]


def test_thresholds_live_in_one_group_are_all_used_and_documented_in_the_readme() -> None:
    (thresholds,) = [group for group in groups() if group["name"] == "vmguard-thresholds"]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Dashboards and alerts in five minutes"):]
    section = section[:section.index("\n## ", 1)]
    used = " ".join(alert["expr"] for alert in alerts())
    for rule in thresholds["rules"]:
        name, value = rule["record"], re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"]).group(1)
        assert name.startswith("vmguard:threshold:") and name in used, f"{name} is not used by any alert"
        row = next((line for line in section.splitlines() if f"`{name}`" in line), None)
        assert row is not None, f"{name} is not in the README's thresholds table"
        assert f"`{value}`" in row, f"the README gives another value for {name} than {value}"
    for alert in alerts():
        assert f"`{alert['alert']}`" in section, f"{alert['alert']} is not in the README's thresholds table"


def test_monthly_projections_use_the_hours_per_month_of_the_code() -> None:
    multipliers = {float(n) for expr in expressions() for n in re.findall(r"\*\s*(7\d\d(?:\.\d+)?)\b", expr)}
    assert multipliers == {HOURS_PER_MONTH}, "a month is guard.pricing.HOURS_PER_MONTH hours"


def test_every_recording_rule_named_in_grafana_is_defined() -> None:
    named = {name for expr in expressions() for name in RECORDED.findall(expr)}
    named |= {name for path in DASHBOARDS for name in RECORDED.findall(path.read_text()) if name.count(":") >= 2}
    assert named - records() == set()


# -- metric names ----------------------------------------------------------------------------------------------------

def exposed_names(exposition: str) -> set[str]:
    """Every series name a Prometheus scraping this exposition stores (counters' _total, histograms' _bucket…)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def referenced_names() -> dict[str, set[str]]:
    """Daemon metric name → the grafana/ files that name it (dashboards, rules, their tests, provisioning, docs)."""
    found: dict[str, set[str]] = {}
    for path in sorted(GRAFANA.rglob("*")):
        if path.is_file():
            for name in METRIC.findall(path.read_text()):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def unexposed(exposition: str) -> dict[str, set[str]]:
    names = exposed_names(exposition)
    return {name: files for name, files in referenced_names().items() if name not in names}


@pytest.fixture
def exposition(tmp_path: Path) -> str:
    """The daemon's registry, rendered: every family is there even before a scan (HELP/TYPE lines)."""
    store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
    metrics = DaemonMetrics(store, CallCounter(), rules=["idle-vms"], regions=["us-east-1"],
                            clusters=ClusterRegistry(store))
    return metrics.render().decode()


def test_every_metric_named_in_grafana_is_exposed_by_the_daemon(exposition: str) -> None:
    assert len(referenced_names()) >= 15
    assert unexposed(exposition) == {}


def test_a_renamed_metric_is_caught(exposition: str) -> None:
    renamed = exposition.replace("guard_waste_unique_hourly_usd", "guard_unique_waste_hourly_usd")
    assert set(unexposed(renamed)) == {"guard_waste_unique_hourly_usd"}
    renamed = exposition.replace("guard_scan_duration_seconds", "guard_scan_seconds")
    assert "guard_scan_duration_seconds_bucket" in unexposed(renamed)


def test_cluster_expiry_and_heartbeat_series_follow_each_cluster_until_it_ends(tmp_path: Path) -> None:
    """The series the dashboards' cluster table and VmguardClusterPastKeepalive read."""
    store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
    clusters = ClusterRegistry(store)
    metrics = DaemonMetrics(store, CallCounter(), rules=[], regions=["us-east-1"], clusters=clusters)
    t0 = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
    for cluster_id, idle in (("vmg-metric01", None), ("vmg-metric02", 300)):
        clusters.register(ClusterRegistration(
            cluster_id=cluster_id, owner="alice", region="us-east-1", instance_ids=["i-0123456789abcdef0"],
            instance_types=["m7i.large"], keepalive_seconds=600, idle_timeout_seconds=idle), "alice", t0)
    clusters.heartbeat("vmg-metric01", Heartbeat(tasks_processing=1), t0 + timedelta(seconds=60))

    def series() -> dict[str, dict[tuple, float]]:
        found: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(metrics.render().decode()):
            for sample in family.samples:
                if sample.name.startswith(("guard_cluster_expiry", "guard_cluster_last_heartbeat")):
                    found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    first = series()
    one = {"owner": "alice", "cluster": "vmg-metric01"}
    two = {"owner": "alice", "cluster": "vmg-metric02"}
    assert first["guard_cluster_expiry_timestamp_seconds"] == {
        tuple(sorted((one | {"state": RUNNING, "limit": "keepalive"}).items())): (t0.timestamp() + 60 + 600),
        tuple(sorted((two | {"state": RUNNING, "limit": "idle"}).items())): (t0.timestamp() + 300),
    }
    assert first["guard_cluster_last_heartbeat_timestamp_seconds"] == {
        tuple(sorted(one.items())): t0.timestamp() + 60, tuple(sorted(two.items())): t0.timestamp()}
    row = clusters.get("vmg-metric02")
    assert clusters.expire(row, "no task ran", t0 + timedelta(seconds=301))
    assert clusters.move("vmg-metric01", (RUNNING,), TERMINATED, t0 + timedelta(seconds=400))
    after = series()
    assert after["guard_cluster_expiry_timestamp_seconds"] == {
        tuple(sorted((two | {"state": EXPIRED, "limit": "idle"}).items())): t0.timestamp() + 300}
    assert list(after["guard_cluster_last_heartbeat_timestamp_seconds"]) == [tuple(sorted(two.items()))]


# -- provisioning ----------------------------------------------------------------------------------------------------

def test_provisioning_points_grafana_prometheus_and_alertmanager_at_vmguard() -> None:
    provisioning = GRAFANA / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "grafana/datasources/vmguard-prometheus.yml").read_text())[
        "datasources"]
    assert datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "grafana/dashboards/vmguard.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    prometheus = yaml.safe_load((provisioning / "prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    daemon_down = next(alert for alert in alerts() if alert["alert"] == "VmguardDaemonDown")
    assert f'up{{job="{job["job_name"]}"}}' in daemon_down["expr"]
    assert prometheus["rule_files"] == [RULES.name]
    alertmanager = yaml.safe_load((provisioning / "alertmanager/alertmanager.yml").read_text())
    (route,) = alertmanager["route"]["routes"]
    assert route["matchers"] == ['service = "vmguard"']
    (receiver,) = [r for r in alertmanager["receivers"] if r["name"] == route["receiver"]]
    assert receiver["slack_configs"][0]["send_resolved"] is True

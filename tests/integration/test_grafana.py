"""grafana/ against the real tools: promtool checks and unit-tests the rules, and a real Prometheus (Debian's package)
scraping `guard demo`'s sandbox answers every PromQL expression of the dashboards and the rules — each parses, and
each dashboard panel's query returns data on the seeded account."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from listening import daemon_url, prometheus_url
from polling import wait_for

from guard.sandbox import sandbox_client
from guard.sandbox.images import image_for

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "alerts" / "vmguard.rules.yml"
RULE_TESTS = GRAFANA / "alerts" / "vmguard.tests.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_EXAMPLE = GRAFANA / "provisioning" / "prometheus" / "prometheus.yml"
ALERTMANAGER_EXAMPLE = GRAFANA / "provisioning" / "alertmanager" / "alertmanager.yml"

TOKEN = "grafana-test-token-0123456789"
OWNER = "wei.chen"
"""An owner of the sandbox account with running instances, waste, and (registered here) clusters."""
LIVE_CLUSTER = "vmg-grafana01"
EXPIRING_CLUSTER = "vmg-grafana02"

GRAFANA_VARIABLES = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "1h", "job": "vmguard", "region": ".*", "owner": ".*",
}
"""What Grafana would put in place of its variables: every region and owner ("All" is `.*`), a rate window of a
few scrapes, and a time range longer than the test (increase() over it sees every sample)."""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (Debian: prometheus, prometheus-alertmanager)")
    return path


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable syntaxes ($name, ${name}, ${name:format}, [[name]]) replaced by ``values``."""
    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise AssertionError(f"no test value for the Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def dashboard_targets(path: Path) -> list[tuple[str, str]]:
    """(where, expr) of every query target of every panel (rows' nested panels included)."""
    board = json.loads(path.read_text())
    found = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']!r} {target['refId']}", target["expr"]))

    walk(board["panels"])
    return found


def dashboard_variables(path: Path) -> list[tuple[str, str]]:
    """(name, query) of the dashboard's PromQL query variables."""
    board = json.loads(path.read_text())
    return [(var["name"], var["definition"]) for var in board["templating"]["list"] if var["type"] == "query"]


def rule_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every rule's expression and every query its annotations' templates run."""
    found = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            found.append((name, rule["expr"]))
            for key, text in rule.get("annotations", {}).items():
                found += [(f"{name} annotation {key}", query) for query in re.findall(r'query "([^"]+)"', text)]
    return found


# -- promtool --------------------------------------------------------------------------------------------------------

def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = subprocess.run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_example_prometheus_config_is_valid_with_the_rules(tmp_path: Path) -> None:
    shutil.copy(PROMETHEUS_EXAMPLE, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "vmguard.rules.yml")
    result = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_example_alertmanager_config_routes_vmguard_alerts_to_slack() -> None:
    amtool = tool("amtool")
    check = subprocess.run([amtool, "check-config", str(ALERTMANAGER_EXAMPLE)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def receiver(*labels: str) -> str:
        result = subprocess.run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
                                 *labels], capture_output=True, text=True)
        return result.stdout.strip()

    assert receiver("alertname=VmguardClusterPastKeepalive", "service=vmguard", "severity=critical") == (
        "slack-vmguard")
    assert receiver("alertname=VmguardWasteHigh", "service=vmguard", "severity=warning") == "slack-vmguard"
    assert receiver("alertname=SomethingElse") == "default"


# -- a real Prometheus scraping `guard demo` ---------------------------------------------------------------------------

def alive(process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"{process.args[:3]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
    return True


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """`guard demo --listen` as a user runs it: its own seeded sandbox account, the daemon serving /metrics (on a
    port the system picks, read from what the demo prints)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GUARD_", "AWS_"))} | {
        "GUARD_API_TOKEN": TOKEN,
        "GUARD_SCAN_INTERVAL": "5s",  # scans during the test, so rates and the duration histogram move
        "GUARD_KEEPALIVE_CHECK_INTERVAL": "1s",
    }
    log = (tmp_path / "demo.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "guard", "demo", "--listen", "127.0.0.1:0",
                                "--sdk-env", str(tmp_path / "sdk.env")],
                               env=env, stdout=log, stderr=log, cwd=tmp_path)
    try:
        url = daemon_url(tmp_path / "demo.log", process)
        wait_for(lambda: alive(process, tmp_path / "demo.log") and httpx.get(f"{url}/readyz").status_code == 200,
                 120, f"guard demo to serve {url}/readyz")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        output = (tmp_path / "demo.log").read_text()
        assert "Traceback" not in output, output


@pytest.fixture
def prometheus(demo: str, tmp_path: Path) -> Iterator[str]:
    """The example scrape config, pointed at the demo, scraping every second, with the rules loaded."""
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config.pop("alerting")
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s",
               static_configs=[{"targets": [demo.removeprefix("http://")]}])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--web.listen-address=127.0.0.1:0"],
                               stdout=log, stderr=log)
    try:
        url = prometheus_url(tmp_path / "prometheus.log", process)
        wait_for(lambda: alive(process, tmp_path / "prometheus.log") and httpx.get(f"{url}/-/ready").status_code == 200,
                 60, "Prometheus to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(prometheus: str, expr: str, where: str = "") -> list[dict]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", f"{where} {expr!r}: {reply.get('errorType')}: {reply.get('error')}"
    return reply["data"]["result"]


def has_data(result: list[dict]) -> bool:
    """At least one sample with a number (histogram_quantile over buckets that did not move gives NaN)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def launched(tmp_path: Path, region: str, cluster_id: str) -> str:
    """An instance in the demo's sandbox account, tagged as the SDK tags it for ``OWNER`` (the daemon checks a
    registration against EC2); the account's endpoint is read from the SDK environment the demo wrote."""
    env = dict(word.removeprefix("export ").split("=", 1) for word in shlex.split(
        (tmp_path / "sdk.env").read_text(), comments=True) if word != "export")
    tags = {"owner": OWNER, "guard:managed": "true", "vmguard:cluster": cluster_id}
    reply = sandbox_client(env["AWS_ENDPOINT_URL"], "ec2", region).run_instances(
        ImageId=image_for("m7i.large"), InstanceType="m7i.large", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
    return reply["Instances"][0]["InstanceId"]


def test_every_dashboard_and_rule_query_runs_on_a_real_prometheus_scraping_the_demo(
        demo: str, prometheus: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A cluster that heartbeats (cost, heartbeats, time left) and one whose keepalive runs out (an action).
    for cluster_id, region, keepalive in ((LIVE_CLUSTER, "us-east-1", 3600), (EXPIRING_CLUSTER, "us-west-2", 10)):
        instance_id = launched(tmp_path, region, cluster_id)
        reply = httpx.post(f"{demo}/v1/clusters", headers=auth, json={
            "cluster_id": cluster_id, "owner": OWNER, "region": region, "instance_ids": [instance_id],
            "instance_types": ["m7i.large"], "keepalive_seconds": keepalive, "hourly_usd": 0.1008})
        assert reply.status_code == 201, reply.text

    overview = [(where, substitute(expr, GRAFANA_VARIABLES)) for path in DASHBOARDS
                for where, expr in dashboard_targets(path)]
    one_owner = [(f"{where} (owner={OWNER})", substitute(expr, GRAFANA_VARIABLES | {"owner": OWNER}))
                 for path in DASHBOARDS for where, expr in dashboard_targets(path)]
    panels = overview + one_owner
    rules = rule_expressions()
    assert len(panels) > 40 and len(rules) > 25

    # Every expression parses (a parse error is an error reply at once, whatever the data).
    for where, expr in panels + rules:
        query(prometheus, expr, where)

    # Every panel's query returns data once a few scrapes (and scans, heartbeats, the keepalive action) are in.
    empty = panels
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        httpx.post(f"{demo}/v1/clusters/{LIVE_CLUSTER}/heartbeat", headers=auth,
                   json={"tasks_processing": 1, "workers": 2}).raise_for_status()
        empty = [(where, expr) for where, expr in empty if not has_data(query(prometheus, expr))]
        time.sleep(1)
    assert not empty, "panel queries without data on the sandbox:\n" + "\n".join(f"{w}: {e}" for w, e in empty)

    # The template variables list the sandbox's regions and owners (Grafana asks /api/v1/label/<name>/values).
    for path in DASHBOARDS:
        for name, definition in dashboard_variables(path):
            selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition).groups()
            query(prometheus, selector)
            reply = httpx.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": selector}).json()
            assert reply["status"] == "success", reply
            expected = {"us-east-1", "us-west-2"} if label == "region" else {OWNER}
            assert expected <= set(reply["data"]), (path.name, name, reply["data"])

    # The rules load and evaluate without error in Prometheus itself.
    def evaluated() -> list[dict]:
        groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        rules_ = [rule for group in groups for rule in group["rules"]]
        return rules_ if rules_ and all(rule["health"] != "unknown" for rule in rules_) else []

    loaded = wait_for(evaluated, 30, "the rules to be evaluated")
    assert {rule["name"] for rule in loaded} == {name for name, _ in rules if " annotation " not in name}
    assert [(rule["name"], rule["lastError"]) for rule in loaded if rule["health"] != "ok"] == []

    # On the seeded account (waste of every rule, a healthy daemon), the alerts' conditions are as they should be.
    conditions = {rule["alert"]: rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"]
                  for rule in group["rules"] if "alert" in rule}
    firing = {name for name, expr in conditions.items() if query(prometheus, expr)}
    assert {"VmguardWasteHigh", "VmguardOwnerWasteHigh", "VmguardIdleGpu", "VmguardDebugLoggingAtScale"} <= firing
    assert not firing & {"VmguardDaemonDown", "VmguardScanFailing", "VmguardScanStale", "VmguardClusterPastKeepalive",
                         "VmguardSpendAnomaly"}

    def monthly_is_hourly_times_730() -> bool:  # the same scrape in both (the expiring cluster's VM ends meanwhile)
        total = sum(float(s["value"][1]) for s in query(prometheus, "guard_running_hourly_usd"))
        (monthly,) = query(prometheus, "vmguard:guard_running_monthly_usd:sum")
        return float(monthly["value"][1]) == pytest.approx(total * 730, rel=1e-6)

    wait_for(monthly_is_hourly_times_730, 30, "vmguard:guard_running_monthly_usd:sum = 730 × the hourly spend")

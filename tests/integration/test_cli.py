"""The `guard` command line as a user runs it: exit codes, one-line errors, JSON contract, the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from listening import daemon_url

from guard.rule import discover_rules
from guard.sandbox import GroundTruth, SandboxServer

CONTRACT = {"rule", "resource_id", "region", "owner", "severity", "waste_hourly_usd", "evidence", "state",
            "first_seen", "suggested_action"}


def guard(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    return subprocess.run([sys.executable, "-m", "guard", *args], env=base | (env or {}), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("env", "toml", "key", "value"),
    [
        ({"GUARD_SCAN_INTERVAL": "soon"}, None, "scan_interval", "soon"),
        ({"GUARD_MODE": "yolo"}, None, "mode", "yolo"),
        ({"GUARD_RULES__IDLE_VMS__WINDOW": "2 fortnights"}, None, "rules.idle-vms.window", "2 fortnights"),
        ({"GUARD_RULES__IDLE_VM__ENABLED": "false"}, None, "rules.idle-vm", "unknown rule id"),
        ({}, '[rules.no-such-rule]\nenabled = false\n', "rules.no-such-rule", "unknown rule id"),
        ({}, 'scan_interval = "every now and then"\n', "scan_interval", "every now and then"),
    ],
)
def test_check_config_rejects_bad_values_with_one_line(tmp_path: Path, env, toml, key, value) -> None:
    if toml is not None:
        (tmp_path / "guard.toml").write_text(toml)
    result = guard("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and value in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_run_on_a_busy_address_fails_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:  # held (and listening) for the whole test
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        result = guard("run", cwd=tmp_path, timeout=60, env={"GUARD_LISTEN": listen, "GUARD_REGIONS": "us-east-1",
                                                             "GUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert listen in errors[0] and "Address already in use" in errors[0] and "GUARD_LISTEN" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path) -> None:
    result = guard("check-config", cwd=tmp_path, env={
        "GUARD_API_TOKEN": "s3cret-token-0123456789", "GUARD_REGIONS": "eu-west-1, us-east-2",
        "GUARD_DATABASE_URL": "postgresql://guard:hunter2@db.example/guard", "GUARD_RULES__IDLE_VMS__WINDOW": "2h"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["regions"] == ["eu-west-1", "us-east-2"]
    assert config["rules"]["idle-vms"]["window"] == "2h"
    assert "s3cret-token" not in result.stdout and "hunter2" not in result.stdout
    assert config["api_token"] == "********"
    assert config["mode"] == "observe"


def test_scan_once_json_then_findings_from_the_store(team_account: GroundTruth, sandbox: SandboxServer,
                                                     tmp_path: Path) -> None:
    env = sandbox.env | {"GUARD_REGIONS": "us-east-1,us-west-2", "GUARD_DATABASE_URL": f"sqlite:///{tmp_path}/g.db"}
    result = guard("scan", "--once", "--format", "json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    assert {(f["rule"], f["region"], f["resource_id"]) for f in findings} == set(team_account.expected())
    assert all(f.keys() >= CONTRACT for f in findings)
    stored = guard("findings", "--format", "json", "--state", "all", env=env, cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout) == findings
    only = guard("findings", "--format", "json", "--rule", "detached-volumes", env=env, cwd=tmp_path)
    assert {f["rule"] for f in json.loads(only.stdout)} == {"detached-volumes"}
    bad = guard("findings", "--rule", "nope", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown rule id" in bad.stderr


def test_scan_without_credentials_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true",
           "GUARD_DATABASE_URL": f"sqlite:///{tmp_path}/g.db"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GUARD_"))}
    result = subprocess.run([sys.executable, "-m", "guard", "scan", "--once"], env=base | env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no AWS credentials found" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_once_prints_the_sandbox_findings_with_dollars(tmp_path: Path) -> None:
    result = guard("demo", "--once", "--format", "json", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    assert {f["rule"] for f in findings} == set(discover_rules().rules)  # every rule finds its seeded waste
    assert sum(f["waste_hourly_usd"] or 0 for f in findings) > 10  # dollars per hour, from list prices
    assert "matches the sandbox's ground truth" in result.stderr


@pytest.mark.parametrize("columns", ["80", "200"])
def test_demo_once_table(tmp_path: Path, columns: str) -> None:
    result = guard("demo", "--once", cwd=tmp_path, timeout=180, env={"COLUMNS": columns})
    assert result.returncode == 0, result.stderr
    assert all(rule in result.stdout for rule in discover_rules().rules)
    assert "Total waste: $" in result.stdout and "/month" in result.stdout
    assert "…" not in result.stdout  # resource ids are never cut short, even on a narrow terminal
    assert max(len(line) for line in result.stdout.splitlines()) <= int(columns)


SDK_ENV_CHECK = """
set -e
source "$1"
"$2" - <<'PY'
import os, boto3, httpx
regions = boto3.client("ec2", region_name="us-east-1").describe_regions()["Regions"]
headers = {"Authorization": f"Bearer {os.environ['VMGUARD_TOKEN']}"}
clusters = httpx.get(f"{os.environ['VMGUARD_DAEMON_URL']}/v1/clusters", headers=headers)
print(len(regions), clusters.status_code, os.environ["VMGUARD_OWNER"])
PY
"""


def test_demo_writes_the_sdk_environment_while_it_serves_and_removes_it_on_ctrl_c(tmp_path: Path) -> None:
    env_file, log = tmp_path / "sandbox.env", tmp_path / "demo.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUARD_", "AWS_", "VMGUARD_"))}
    with log.open("w") as out:  # port 0: the system picks a free port and the demo prints it
        demo = subprocess.Popen([sys.executable, "-m", "guard", "demo", "--listen", "127.0.0.1:0",
                                 "--sdk-env", str(env_file)], env=base, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=out)
    try:
        url = daemon_url(log, demo, timeout=180)
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*", url), url
        assert env_file.stat().st_mode & 0o777 == 0o600  # it holds an API token
        text = env_file.read_text()  # written whole before the demo prints where it serves
        assert f"export VMGUARD_DAEMON_URL={url}\n" in text
        assert "export VMGUARD_ENV_S3=s3://vmguard-sandbox-envs/vmguard-envs/\n" in text
        checked = subprocess.run(["bash", "-c", SDK_ENV_CHECK, "check", str(env_file), sys.executable], env=base,
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        regions, status, owner = checked.stdout.split()
        assert int(regions) > 10 and status == "200" and owner  # the emulator answers, the token is the owner's
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    assert not env_file.exists()

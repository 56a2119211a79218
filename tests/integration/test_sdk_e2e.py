"""The SDK end to end in the sandbox: a decorated function runs on a launched cluster; the daemon (a real `guard run`
process) sees it and what it does (S3 requests, log volume, finished tasks, from its heartbeats), and ends it when
the client dies; without a daemon the VMs' own dead-man switch ends it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from faults import FaultProxy
from rich.console import Console

import sdk
from guard.sandbox import SandboxServer, VmRunner, sandbox_client

ADMIN_TOKEN = "admin-token-0123456789"
OWNER_TOKEN = "tester-token-0123456789"
REGION = "us-east-1"
VM_TYPE = "m5.large"


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture
def daemon(runner: VmRunner, guard_run) -> str:
    """`guard run` in observe mode (keepalive expiry is on by default), checking clusters every second."""
    return guard_run(GUARD_REGIONS=REGION, GUARD_API_TOKEN=ADMIN_TOKEN, GUARD_API_TOKENS=f"tester={OWNER_TOKEN}",
                     GUARD_SCAN_INTERVAL="60s", GUARD_KEEPALIVE_CHECK_INTERVAL="1s")


def clusters(url: str, token: str = ADMIN_TOKEN) -> dict[str, dict]:
    response = httpx.get(f"{url}/v1/clusters", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return {cluster["cluster_id"]: cluster for cluster in response.json()}


def instance_states(ids: list[str]) -> set[str]:
    ec2 = sandbox_client(os.environ["AWS_ENDPOINT_URL"], "ec2", REGION)
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {instance["State"]["Name"] for r in reservations for instance in r["Instances"]}


def security_group_exists(group_id: str) -> bool:
    ec2 = sandbox_client(os.environ["AWS_ENDPOINT_URL"], "ec2", REGION)
    return any(g["GroupId"] == group_id for g in ec2.describe_security_groups()["SecurityGroups"])


def test_a_decorated_function_maps_on_its_cluster_and_the_daemon_sees_it(
        daemon: str, runner: VmRunner, sdk_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMGUARD_DAEMON_URL", daemon)
    monkeypatch.setenv("VMGUARD_TOKEN", OWNER_TOKEN)

    def square(x: int) -> int:
        return x * x

    remote = sdk.function(vm_type=VM_TYPE, region=REGION, n_workers=4, keepalive="2 minutes")(square)
    assert list(remote.map(range(100))) == [x * x for x in range(100)]
    cluster = remote.cluster
    assert remote(7) == 49 and remote.submit(3).result() == 9
    assert remote.cluster is cluster, "a second call reuses the running cluster"
    on_vm = cluster.get_client().submit(lambda: sys.prefix).result()
    assert on_vm != sys.prefix and "sandbox-venvs" in on_vm  # the VMs run this environment, replicated

    ids = [cluster.launched.scheduler["InstanceId"], *(w["InstanceId"] for w in cluster.launched.workers)]
    assert len(ids) == 5 and instance_states(ids) == {"running"}
    assert {p.role for p in runner.processes().values() if p.alive} >= {"scheduler", "worker"}
    seen = clusters(daemon, OWNER_TOKEN)[cluster.cluster_id]
    assert seen["state"] == "running" and sorted(seen["instance_ids"]) == sorted(ids)
    assert seen["owner"] == "tester" and seen["hourly_usd"] > 0
    metrics = httpx.get(f"{daemon}/metrics").text
    assert 'guard_clusters{state="running"} 1.0' in metrics
    assert f'cluster="{cluster.cluster_id}"' in metrics

    cluster.close()
    assert instance_states(ids) <= {"shutting-down", "terminated"}
    assert not security_group_exists(cluster.launched.security_group_id)
    wait_for(lambda: clusters(daemon)[cluster.cluster_id]["state"] == "closed", 10, "the daemon to see it closed")


def test_a_region_without_capacity_fails_over_to_the_next_in_the_list(
        runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)
    with FaultProxy(sandbox.endpoint_url) as proxy:
        proxy.fail("RunInstances", code="InsufficientInstanceCapacity", region=REGION,
                   message="We currently do not have sufficient m5.large capacity")
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        output = io.StringIO()
        with sdk.Cluster(vm_type=VM_TYPE, region=[REGION, "us-west-2"], n_workers=1, keepalive="2 minutes",
                         console=Console(file=output, width=200)) as cluster:
            assert cluster.get_client().submit(lambda: sys.prefix).result()
            assert cluster.spec.region == "us-west-2"
            assert cluster.launched.region == "us-west-2"
        assert proxy.faulted("RunInstances") >= 1  # us-east-1 was asked first, and refused
    text = output.getvalue()
    assert f"{REGION} cannot take {cluster.cluster_id}" in text and "InsufficientInstanceCapacity" in text
    assert "trying the next region" in text and "in us-west-2: about $" in text
    west = sandbox_client(sandbox.endpoint_url, "ec2", "us-west-2")
    states = {i["State"]["Name"] for r in west.describe_instances(InstanceIds=cluster.launched.instance_ids)[
        "Reservations"] for i in r["Instances"]}
    assert states <= {"shutting-down", "terminated"}
    east = sandbox_client(sandbox.endpoint_url, "ec2", REGION)
    assert not east.describe_instances(Filters=[{"Name": "tag:vmguard:cluster", "Values": [cluster.cluster_id]},
                                                {"Name": "instance-state-name", "Values": ["pending", "running"]}]
                                       )["Reservations"]  # nothing left behind where the launch failed


def test_the_daemon_sees_the_s3_requests_debug_logs_and_finished_tasks_of_a_cluster(
        daemon: str, runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMGUARD_DAEMON_URL", daemon)
    monkeypatch.setenv("VMGUARD_TOKEN", OWNER_TOKEN)
    bucket = f"features-{uuid.uuid4().hex[:10]}"
    sandbox_client(sandbox.endpoint_url, "s3", REGION).create_bucket(Bucket=bucket)
    aws = {"endpoint_url": sandbox.endpoint_url, "aws_access_key_id": sandbox.env["AWS_ACCESS_KEY_ID"],
           "aws_secret_access_key": sandbox.env["AWS_SECRET_ACCESS_KEY"]}

    def build_features(bucket: str, aws: dict[str, str]) -> int:
        """A task that writes, lists and reads S3 and logs at DEBUG (its module's logger was left at DEBUG)."""
        import logging

        import boto3
        from botocore.config import Config

        log = logging.getLogger("features")
        log.setLevel(logging.DEBUG)
        session = boto3.session.Session(aws_access_key_id=aws["aws_access_key_id"],
                                        aws_secret_access_key=aws["aws_secret_access_key"], region_name="us-east-1")
        s3 = session.client("s3", endpoint_url=aws["endpoint_url"], config=Config(s3={"addressing_style": "path"}))
        for part in range(3):
            s3.put_object(Bucket=bucket, Key=f"part-{part}", Body=b"x")
            log.debug("wrote part-%d", part)
        s3.get_object(Bucket=bucket, Key="part-0")["Body"].read()
        return s3.list_objects_v2(Bucket=bucket)["KeyCount"]

    with sdk.Cluster(vm_type=VM_TYPE, region=REGION, n_workers=1, keepalive="20s") as cluster:  # a beat every 5 s
        def mine() -> dict:
            return clusters(daemon, OWNER_TOKEN)[cluster.cluster_id]

        first = wait_for(lambda: (c := mine())["last_heartbeat"] > c["registered_at"] and c, 15, "a first heartbeat")
        assert first["last_activity"] == first["registered_at"]  # nothing ran yet: no activity
        assert cluster.get_client().submit(build_features, bucket, aws, pure=False).result() == 3
        # the task took well under a beat: the next beat reports it finished (not processing), and what it did;
        # the daemon counts a finished task as activity

        reports: dict[tuple[str, str], dict] = {}  # every usage report GET /v1/clusters showed, by field and time

        def reported() -> dict | None:
            seen = mine()
            for field, report in seen["usage"].items():
                reports[(field, report["at"])] = report["value"]
            s3: dict[str, dict[str, int]] = {}
            debug = 0
            for (field, _at), value in reports.items():
                if field == "s3_requests":
                    for name, by_class in value.items():
                        for cls, count in by_class.items():
                            s3.setdefault(name, {})[cls] = s3.get(name, {}).get(cls, 0) + count
                else:
                    debug += value.get("debug", 0)
            done = s3 == {bucket: {"PUT": 3, "GET": 1, "LIST": 1}} and debug and seen["last_activity"] > first[
                "last_activity"]
            return seen | {"debug_bytes": debug} if done else None

        seen = wait_for(reported, 20, "the cluster's S3 requests, debug log and finished task", poll=0.1)
        line = len("2026-01-01 00:00:00,000 DEBUG features: wrote part-0\n")  # the agent's log format
        assert seen["debug_bytes"] == 3 * line
        assert first["last_activity"] < seen["last_activity"] <= seen["last_heartbeat"]


CLIENT = textwrap.dedent("""
    import sys, time
    import sdk
    cluster = sdk.Cluster(vm_type=sys.argv[1], region=sys.argv[2], n_workers=1, keepalive="15s")
    cluster.get_client().submit(sum, [1, 2]).result()
    print(cluster.cluster_id, cluster.launched.security_group_id,
          " ".join([cluster.launched.scheduler["InstanceId"], *(w["InstanceId"] for w in cluster.launched.workers)]),
          flush=True)
    time.sleep(600)
""")


def launch_and_kill(tmp_path: Path, env: dict[str, str]) -> tuple[str, str, list[str], float]:
    """A client process launches a cluster, then dies by SIGKILL: (cluster id, security group, instances, when)."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    process = subprocess.Popen([sys.executable, str(script), VM_TYPE, REGION], env=os.environ | env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        cluster_id, group_id, *ids = line.split()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return cluster_id, group_id, ids, time.monotonic()
    finally:
        process.kill()


def test_a_client_killed_by_sigkill_has_its_cluster_ended_by_the_daemon(
        daemon: str, runner: VmRunner, sdk_env: dict[str, str], tmp_path: Path) -> None:
    env = sdk_env | {"VMGUARD_DAEMON_URL": daemon, "VMGUARD_TOKEN": OWNER_TOKEN}
    cluster_id, group_id, ids, killed = launch_and_kill(tmp_path, env)
    assert clusters(daemon)[cluster_id]["state"] == "running"

    wait_for(lambda: instance_states(ids) <= {"terminated"}, 15 + 60, "the cluster's instances to be terminated")
    wait_for(lambda: not security_group_exists(group_id), 30, "the cluster's security group to be deleted")
    assert time.monotonic() - killed <= 15 + 60
    wait_for(lambda: not any(p.alive for p in runner.processes().values()), 15, "the VM processes to end")
    assert clusters(daemon)[cluster_id]["state"] in ("expired", "terminating", "terminated")
    wait_for(lambda: clusters(daemon)[cluster_id]["state"] == "terminated", 30, "the cluster to be terminated")
    actions = httpx.get(f"{daemon}/v1/actions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    ended = [a for a in actions if a["action"] == "terminate-cluster" and a["resource_id"] == cluster_id]
    assert [a["status"] for a in ended] == ["done"], actions


def test_without_a_daemon_the_vms_dead_man_switch_ends_the_cluster(
        runner: VmRunner, sdk_env: dict[str, str], tmp_path: Path) -> None:
    cluster_id, _group_id, ids, killed = launch_and_kill(tmp_path, sdk_env)
    wait_for(lambda: instance_states(ids) <= {"terminated"}, 15 + 45, "the dead-man switch to end the cluster")
    assert time.monotonic() - killed >= 10, "the cluster ended before its keepalive ran out"
    assert not any(p.alive for p in runner.processes().values())


def test_the_readme_quick_start_runs_as_printed(daemon: str, runner: VmRunner, sdk_env: dict[str, str],
                                                tmp_path: Path) -> None:
    """The README's SDK block, run by bash where `guard demo` would have written .vmguard-sandbox.env."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- sdk-quickstart:begin -->")[1].split("<!-- sdk-quickstart:end -->")[0]
    script = block.strip().removeprefix("```sh").removesuffix("```")
    values = sdk_env | {"VMGUARD_DAEMON_URL": daemon, "VMGUARD_TOKEN": OWNER_TOKEN}
    (tmp_path / ".vmguard-sandbox.env").write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()))
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VMGUARD_"))}
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["49", "328350"], result.stdout + result.stderr
    assert "about $" in result.stderr and "shut down" in result.stderr

"""The sandbox's data plane: launched cluster VMs are real local processes on their own loopback addresses."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client

from guard.sandbox import SandboxServer, VmRunner, sandbox_client
from guard.sandbox.images import image_for

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TYPE = "m7g.large"


def _user_data(role: str, scheduler: str | None = None, **overrides) -> str:
    """A bootstrap script as the SDK writes it: the config on one marked line, then the agent's command."""
    config = {"role": role, "cluster_id": "vmg-sandboxvms", "scheduler_port": 8786, "dashboard_port": 8787,
              "keepalive_seconds": 120, "idle_timeout_seconds": None, "max_lifetime_seconds": 600,
              "log_level": "INFO", "nthreads": 2, "memory_limit": "auto"} | overrides
    line = json.dumps(config, separators=(",", ":"))
    target = f" --scheduler {scheduler}" if scheduler else ""
    return (
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        f"shutdown -h +{config['max_lifetime_seconds'] // 60}\n"
        f"# vmguard-vm-config: {line}\n"
        'TOKEN=$(curl -sX PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")\n'
        'IP=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/local-ipv4)\n'
        f"python3 -m sdk.vm --config '{line}' --host \"$IP\"{target} || true\n"
        "shutdown -h now\n"
    )


def _launch(region: str, user_data: str, count: int = 1) -> list[dict]:
    return sandbox_client(os.environ["AWS_ENDPOINT_URL"], "ec2", region).run_instances(
        ImageId=image_for(TYPE), InstanceType=TYPE, MinCount=count, MaxCount=count, UserData=user_data,
        InstanceInitiatedShutdownBehavior="terminate")["Instances"]


def _describe(region: str, instance_ids: list[str]) -> dict[str, dict]:
    reply = sandbox_client(os.environ["AWS_ENDPOINT_URL"], "ec2", region).describe_instances(InstanceIds=instance_ids)
    return {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}


def _states(region: str, instance_ids: list[str]) -> dict[str, str]:
    return {key: value["State"]["Name"] for key, value in _describe(region, instance_ids).items()}


@pytest.fixture
def runner(sandbox: SandboxServer, tmp_path: Path) -> Iterator[VmRunner]:
    sandbox.reset()
    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path) as running:
        yield running


@pytest.fixture
def wait_until(runner: VmRunner) -> Callable[..., None]:
    def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {vm.instance_id} ({vm.role}, alive={vm.alive}):\n{vm.log_path.read_text()[-3000:]}"
                         for vm in runner.processes().values())
        pytest.fail(f"not within {timeout}s: {what}\n{logs}")

    return wait


def test_a_cluster_runs_as_processes_on_its_instances_addresses(runner: VmRunner, wait_until) -> None:
    (scheduler,) = _launch(REGION, _user_data("scheduler"))
    (plain,) = _launch(REGION, "#!/bin/bash\necho not a vmguard VM\n")
    # what the SDK does: the workers' user-data names the scheduler's private IP, read right after launch
    workers = _launch(REGION, _user_data("worker", f"{scheduler['PrivateIpAddress']}:8786"), count=2)
    ids = [scheduler["InstanceId"], *(w["InstanceId"] for w in workers)]

    wait_until(lambda: len([p for p in runner.processes().values() if p.alive]) == 3, 15, "3 VM processes")
    processes = runner.processes()
    assert set(processes) == set(ids)
    assert processes[ids[0]].role == "scheduler" and {processes[i].role for i in ids[1:]} == {"worker"}
    ips = {p.ip for p in processes.values()}
    assert len(ips) == 3
    for ip in ips:
        address = ipaddress.ip_address(ip)
        assert address.is_loopback and ip != "127.0.0.1"
    described = _describe(REGION, [*ids, plain["InstanceId"]])
    for instance_id in ids:
        assert described[instance_id]["PrivateIpAddress"] == processes[instance_id].ip
        assert described[instance_id]["PublicIpAddress"] == processes[instance_id].ip
    assert not ipaddress.ip_address(described[plain["InstanceId"]]["PrivateIpAddress"]).is_loopback

    public_ip = described[ids[0]]["PublicIpAddress"]
    with Client(f"tcp://{public_ip}:8786", timeout=15) as client:
        client.wait_for_workers(2, timeout=20)
        assert client.gather(client.map(lambda x: x * 3 + 1, range(20))) == [x * 3 + 1 for x in range(20)]
        hosts = {info["host"] for info in client.scheduler_info()["workers"].values()}
        assert hosts == {processes[i].ip for i in ids[1:]}

        # terminating a worker's instance ends its process
        sandbox_client(runner.endpoint_url, "ec2", REGION).terminate_instances(InstanceIds=[ids[1]])
        wait_until(lambda: not runner.processes()[ids[1]].alive, 10, "the terminated worker's process ends")
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 10, "the scheduler sees one worker")
        assert client.submit(lambda: 42).result(timeout=10) == 42

    # the scheduler's process dies: its instance is terminated, the last worker exits and its instance goes too
    os.kill(processes[ids[0]].pid, signal.SIGKILL)
    wait_until(lambda: _states(REGION, [ids[0]])[ids[0]] == "terminated", 10, "the scheduler's instance terminates")
    wait_until(lambda: _states(REGION, [ids[2]])[ids[2]] == "terminated", 20, "the orphaned worker's instance ends")
    assert not any(p.alive for p in runner.processes().values())
    assert _states(REGION, [plain["InstanceId"]])[plain["InstanceId"]] == "running"


def test_the_dead_man_switch_alone_ends_a_cluster_nobody_connects_to(runner: VmRunner, wait_until) -> None:
    region = "us-west-2"
    (scheduler,) = _launch(region, _user_data("scheduler", keepalive_seconds=3))
    (worker,) = _launch(region, _user_data("worker", f"{scheduler['PrivateIpAddress']}:8786"))
    ids = [scheduler["InstanceId"], worker["InstanceId"]]
    wait_until(lambda: len(runner.processes()) == 2, 10, "2 VM processes")
    wait_until(lambda: set(_states(region, ids).values()) == {"terminated"}, 25, "both instances terminate")
    processes = runner.processes()
    assert processes[ids[0]].returncode == 0
    assert "vmguard-keepalive-expired" in processes[ids[0]].log_path.read_text()


def test_stopping_the_runner_ends_every_process(sandbox: SandboxServer, runner: VmRunner, wait_until) -> None:
    (scheduler,) = _launch(REGION, _user_data("scheduler"))
    wait_until(lambda: any(p.alive for p in runner.processes().values()), 10, "the VM process")
    (process,) = runner.processes().values()
    runner.stop()
    assert not runner.processes()[scheduler["InstanceId"]].alive
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def test_an_account_reset_ends_every_process(sandbox: SandboxServer, runner: VmRunner, wait_until) -> None:
    _launch(REGION, _user_data("scheduler"))
    wait_until(lambda: any(p.alive for p in runner.processes().values()), 10, "the VM process")
    sandbox.reset()
    wait_until(lambda: not any(p.alive for p in runner.processes().values()), 10, "the process ends")


def test_instances_beyond_the_process_cap_get_no_process(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.reset()
    with VmRunner(sandbox.endpoint_url, log_dir=tmp_path, max_processes=2) as capped:
        ids = [i["InstanceId"] for i in _launch(REGION, _user_data("worker", "127.0.0.1:9"), count=5)]
        time.sleep(1)
        assert len(capped.processes()) == 2
        addresses = {i: d["PrivateIpAddress"] for i, d in _describe(REGION, ids).items()}
        assert sum(ipaddress.ip_address(ip).is_loopback for ip in addresses.values()) == 2


def test_a_runner_needs_the_emulator_in_its_own_process() -> None:
    from guard.sandbox import SandboxError

    with pytest.raises(SandboxError, match="not a SandboxServer of this process"):
        VmRunner("http://127.0.0.1:9").start()

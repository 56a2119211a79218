"""sdk.compare in the sandbox: the same workload on an Intel and a Graviton cluster launched side by side, each
timed and priced, each torn down after; a comparison above the cap is refused before any RunInstances."""

from __future__ import annotations

import io
import signal
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from faults import FaultProxy
from polling import wait_for
from rich.console import Console

import sdk
from guard.sandbox import SandboxServer, VmRunner, sandbox_client
from sdk.errors import SdkError

REGION = "us-east-1"
TYPES = ["m5.large", "m7g.large"]


class FakePandas(types.ModuleType):
    """Stands in for pandas (not a dependency): records what ``DataFrame`` was built from."""

    def __init__(self) -> None:
        super().__init__("pandas")
        self.built: list[tuple[list[dict], list[str]]] = []

    def DataFrame(self, data: list[dict], columns: list[str]) -> tuple:  # noqa: N802 - pandas' name
        self.built.append((data, columns))
        return data, columns


def live_instances(endpoint_url: str, region: str = REGION) -> list[str]:
    ec2 = sandbox_client(endpoint_url, "ec2", region)
    found = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]


def test_two_configurations_run_the_same_inputs_each_timed_priced_and_torn_down(
        runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_inverse(x: int) -> float:  # defined here: pickled by value, the VMs cannot import tests
        import time

        time.sleep(0.05)
        return 1 / (x - 3)  # input 3 raises

    output = io.StringIO()
    comparison = sdk.compare(slow_inverse, range(8), vm_types=[*TYPES, "m5.nosuchsize"], regions=REGION,
                             n_workers=1, environment=False, keepalive="2 minutes",
                             console=Console(file=output, width=200))
    assert isinstance(comparison, sdk.Comparison) and comparison.function == "slow_inverse"
    ran = {row.vm_type: row for row in comparison.rows if row.wall_seconds is not None}
    assert sorted(ran) == sorted(TYPES)
    for row in ran.values():
        assert row.region == REGION and row.workers == 1 and row.inputs == 8
        assert row.wall_seconds > 8 * 0.05 / 2  # 8 calls of 50 ms on one worker of 2 vCPUs (threads)
        assert row.hourly_usd > 0
        assert row.run_usd == pytest.approx(row.hourly_usd * row.wall_seconds / 3600)
        assert row.usd_per_input == pytest.approx(row.run_usd / 8)
        assert row.failures == 1 and row.error == "input 3: ZeroDivisionError: division by zero"
    assert ran["m5.large"].arch == "x86_64" and ran["m7g.large"].arch == "arm64"
    unlaunched = comparison.rows[-1]  # the rows that did not run come last
    assert unlaunched.vm_type == "m5.nosuchsize" and unlaunched.workers == 0 and unlaunched.failures is None
    assert unlaunched.error.startswith("could not launch: ") and "m5.nosuchsize" in unlaunched.error
    costs = [row.usd_per_input for row in comparison.rows[:2]]
    assert costs == sorted(costs)  # cheapest per input first

    table = str(comparison)
    assert "slow_inverse over 8 input(s)" in table and "1 of 8" in table and "could not launch" in table
    text = output.getvalue()
    assert "comparing 3 configuration(s) of 1 worker(s) on 8 input(s)" in text
    assert text.count(" shut down") == 2 and "in us-east-1: about $" in text
    assert not live_instances(sandbox.endpoint_url), "every cluster of the comparison was torn down"

    pandas = FakePandas()
    monkeypatch.setitem(sys.modules, "pandas", pandas)
    data, columns = comparison.to_pandas()
    assert columns == ["vm_type", "region", "arch", "workers", "inputs", "wall_seconds", "hourly_usd", "run_usd",
                       "usd_per_input", "failures", "error"]
    assert [record["vm_type"] for record in data] == [row.vm_type for row in comparison.rows]


def test_a_configuration_whose_launch_fails_says_why_in_its_row_and_the_others_run(
        runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with FaultProxy(sandbox.endpoint_url) as proxy:
        proxy.fail("RunInstances", code="InsufficientInstanceCapacity", region="us-west-2",
                   message="We currently do not have sufficient m5.large capacity")
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
        comparison = sdk.compare(abs, range(-2, 2), vm_types="m5.large", regions=[REGION, "us-west-2"],
                                 environment=False, keepalive="2 minutes", console=Console(file=io.StringIO()))
        assert proxy.faulted("RunInstances") >= 1
    east, west = comparison.rows
    assert (east.region, east.failures, east.workers) == (REGION, 0, 1) and east.wall_seconds > 0
    assert west.region == "us-west-2" and west.wall_seconds is None and west.failures is None
    assert west.error.startswith("could not launch: ") and "InsufficientInstanceCapacity" in west.error
    assert not live_instances(sandbox.endpoint_url) and not live_instances(sandbox.endpoint_url, "us-west-2")


def test_a_comparison_above_the_cap_together_is_refused_before_any_launch(
        runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer) -> None:
    sandbox.clear_requests()
    with pytest.raises(SdkError, match=r"these 2 configuration\(s\) run at once and could cost up to \$0\.\d+/hour "
                                       r"together .* above max_hourly_usd=0\.3; pass max_hourly_usd=0\.\d") as caught:
        sdk.compare(abs, range(4), vm_types=TYPES, regions=REGION, environment=False, max_hourly_usd=0.3,
                    console=Console(file=io.StringIO()))
    assert "\n" not in str(caught.value)
    asked = {request.operation for request in sandbox.requests()}  # the types' details may be cached: no call
    assert "RunInstances" not in asked and "CreateSecurityGroup" not in asked
    assert not live_instances(sandbox.endpoint_url)


def test_ctrl_c_closes_every_cluster_of_the_comparison_before_it_goes_on(
        runner: VmRunner, sdk_env: dict[str, str], sandbox: SandboxServer, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()

    def sleepy(x: int, marks: str = str(started)) -> int:  # says it started (the VMs share this disk), sleeps
        import os
        import pathlib
        import time

        pathlib.Path(marks, f"{x}-{os.getpid()}").touch()
        time.sleep(120)
        return x

    sent: list[float] = []

    def interrupt_once_both_run() -> None:
        wait_for(lambda: len({p.name.split("-")[1] for p in started.iterdir()}) >= 2, 180, "both runs to start")
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what Ctrl-C does

    threading.Thread(target=interrupt_once_both_run, daemon=True).start()
    output = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        sdk.compare(sleepy, range(2), vm_types=TYPES, regions=REGION, environment=False, keepalive="2 minutes",
                    console=Console(file=output, width=200))
    assert time.monotonic() - sent[0] < 60, "the runs were stopped, not waited for"
    assert not live_instances(sandbox.endpoint_url), "every cluster was torn down before the interrupt went on"
    text = output.getvalue()
    assert "interrupted: closing the comparison's clusters" in text and text.count(" shut down") == 2

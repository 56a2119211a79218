"""``@sdk.function``'s ``retries=``, ``map(errors="skip")`` and the workers' threads and memory on a cluster launched
in the sandbox (its VMs are local processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdk
from guard.sandbox import VmRunner

CLUSTER = {"vm_type": "m5.large", "region": "us-east-1", "n_workers": 1, "keepalive": "2 minutes",
           "environment": False, "threads_per_worker": 3, "worker_memory": "1GiB"}


def test_retries_and_skipped_failures_on_a_launched_cluster(runner: VmRunner, sdk_env: dict[str, str],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)

    def flaky(x: int, fail_first: int = 0) -> int:
        """Fails for 13, and the first ``fail_first`` times for each other x (counted in a file on this machine,
        which the sandbox's VMs share)."""
        marker = tmp_path / f"tries-{x}-{fail_first}"
        tries = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(tries))
        if x == 13 or tries <= fail_first:
            raise ValueError(f"{x}: try {tries}")
        return x * 10

    remote = sdk.function(**CLUSTER, retries=1)(flaky)
    try:
        results = remote.map([1, 13, 2], errors="skip")
        assert list(results) == [10, 20]
        [failure] = results.failures
        assert failure.index == 1 and failure.args == (13,) and str(failure.error) == "13: try 2"  # retried once
        assert remote.submit(5, fail_first=2, retries=2).result() == 50
        with pytest.raises(ValueError, match="6: try 2"):
            remote(6, fail_first=2)  # the function's default: one retry
        (worker,) = remote.client.scheduler_info()["workers"].values()
        assert (worker["nthreads"], worker["memory_limit"]) == (3, 2**30)  # threads_per_worker, worker_memory
    finally:
        remote.cluster.close()


def test_worker_memory_above_the_vms_is_one_line_before_launch(runner: VmRunner, sdk_env: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMGUARD_DAEMON_URL", raising=False)
    with pytest.raises(sdk.SdkError, match=r"^worker_memory \(64 GiB\) is more than m5.large has \(8 GiB\); pass at "
                                           r"most that, or a larger vm_type$"):
        sdk.Cluster(**CLUSTER | {"worker_memory": "64GiB"})
    assert not runner.processes()

"""``@sdk.function``'s calling style on an in-process Dask cluster standing in for a launched one: the function's
arguments as they are, ``retries=``, ``errors="skip"`` with ``.failures``, ``dask_options``, one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from distributed import Client, LocalCluster

import sdk
from sdk.errors import SdkError
from sdk.remote import Function

FUNCTION = {"vm_type": "m5.large", "region": "us-east-1", "owner": "tester"}


class _Local:
    """What ``Function`` needs of a cluster: a client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_client(self) -> Client:
        return self.client


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as local:
        yield local


@pytest.fixture
def on_local(client: Client, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Function, "cluster", property(lambda self: _Local(client)))


def remote(fn, **kwargs: Any) -> Function:
    return sdk.function(**FUNCTION, **kwargs)(fn)


def test_the_functions_own_keywords_reach_it_in_submit_and_map(on_local) -> None:
    def scale(x: int, key: int = 1, workers: int = 0) -> int:  # named like Dask's options: still the function's
        return x * key + workers

    f = remote(scale)
    assert f(2, key=10, workers=1) == 21
    assert f.submit(3, key=5).result() == 15
    assert list(f.map([1, 2, 3], key=2, workers=1)) == [3, 5, 7]
    assert list(f.map([1, 2], [10, 20], workers=0)) == [10, 40]


def test_map_errors_skip_leaves_failed_inputs_out_and_lists_them(on_local) -> None:
    def invert(x: int) -> float:
        return 1 / x

    results = remote(invert).map([1, 0, 2, 0], errors="skip")
    assert list(results) == [1.0, 0.5]
    assert [(failure.index, failure.args) for failure in results.failures] == [(1, (0,)), (3, (0,))]
    assert all(isinstance(failure.error, ZeroDivisionError) for failure in results.failures)
    with pytest.raises(ZeroDivisionError):
        list(remote(invert).map([1, 0]))  # errors="raise", the default
    assert remote(invert).map([1, 2], errors="skip").failures == []


def test_retries_try_a_failed_call_again(on_local, tmp_path) -> None:
    def flaky(name: str) -> str:
        """Fails the first two times for each name (counted in a file: retries may run anywhere)."""
        marker = tmp_path / name
        tries = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(tries))
        if tries < 3:
            raise RuntimeError(f"try {tries}")
        return f"{name} after {tries}"

    assert remote(flaky, retries=2)("a") == "a after 3"  # the function's default
    assert remote(flaky).submit("b", retries=2).result() == "b after 3"
    assert list(remote(flaky).map(["c", "d"], retries=2)) == ["c after 3", "d after 3"]
    with pytest.raises(RuntimeError, match="try 2"):
        remote(flaky, retries=1).submit("e").result()
    with pytest.raises(RuntimeError, match="try 1"):
        remote(flaky, retries=3).submit("f", retries=0).result()  # a call's retries= beats the default


def test_dask_options_reach_dask(on_local, client: Client) -> None:
    (worker,) = client.scheduler_info()["workers"]
    f = remote(lambda x: x + 1)
    assert f.submit(1, dask_options={"workers": [worker], "priority": 10}).result() == 2
    assert list(f.map([1, 2], dask_options={"workers": [worker]})) == [2, 3]


@pytest.mark.parametrize("call, message", [
    (lambda f: f.submit(1, dask_options={"worker": ["x"]}), "unknown Dask option 'worker'; did you mean 'workers'?"),
    (lambda f: f.submit(1, dask_options={"retries": 2}), "unknown Dask option 'retries'; pass retries= itself"),
    (lambda f: f.submit(1, dask_options={"key": "k"}), "unknown Dask option 'key'; the options are workers"),
    (lambda f: f.map([1], dask_options=["workers"]), "dask_options must be a dict"),
    (lambda f: f.map([1], errors="ignore"), "errors='ignore' must be 'raise'"),
    (lambda f: f.map([1], retries=-1), "retries=-1 must be a whole number from 0 to 100"),
    (lambda f: f.submit(1, retries=True), "retries=True must be a whole number"),
])
def test_a_wrong_option_is_one_line_before_anything_runs(call, message: str) -> None:
    f = remote(lambda x: x)  # no cluster: the check comes first
    with pytest.raises(SdkError) as raised:
        call(f)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_function_with_a_reserved_parameter_or_bad_default_is_refused_when_decorated() -> None:
    def fetch(url: str, retries: int = 3) -> str:
        return url

    with pytest.raises(SdkError, match="fetch has a parameter named 'retries', which submit and map keep"):
        remote(fetch)
    with pytest.raises(SdkError, match="retries=2.5 must be a whole number"):
        remote(lambda x: x, retries=2.5)

"""``sdk.compare``: the same workload on several hardware configurations, timed and priced — which instance type
and region does this job fastest, and which does it cheapest per input.

Each configuration (one ``vm_type`` in one region: every pair of ``vm_types`` × ``regions``) gets a cluster of its
own, launched in a thread of its own so that they boot side by side; ``fn`` is mapped over the same inputs on each,
and each cluster is closed as soon as its run ends — also when the run fails, and on Ctrl-C. Before anything is
launched every configuration is priced, and the comparison is refused when together they could cost more per hour
than ``max_hourly_usd``: they run at the same time.

What a run costs is its cluster's estimated $/hour (``sdk.cost``) × the run's wall time, from the first submit to
the last result, once every worker has joined. Not counted, though they bill too: booting (launch, environment,
workers joining) and shutting down, which take about as long whatever the workload — EC2 bills a Linux VM by the
second with a minimum of one minute; nor what the workload itself spends outside the cluster (S3 requests, data
transfer).
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
from rich.console import Console
from rich.table import Table

from sdk.cluster import _AWS_CONFIG, Cluster
from sdk.cost import HOURS_PER_DAY, CostEstimate, _round_up, _usd, check_cap, estimate_cost
from sdk.errors import SdkError
from sdk.spec import MAX_HOURLY_ENV, ClusterSpec
from sdk.types import describe_types, resolve_instance_types, resolve_scheduler_types

SECONDS_PER_HOUR = 3600
POLL_SECONDS = 0.5
"""How often a run waiting for its workers or its results looks whether the comparison was interrupted."""
COLUMNS = ("vm_type", "region", "arch", "workers", "inputs", "wall_seconds", "hourly_usd", "run_usd",
           "usd_per_input", "failures", "error")
"""The fields of a row, in the order ``Comparison.to_pandas()`` gives them."""


@dataclass(frozen=True)
class ComparisonRow:
    """One configuration's run: what it ran on, how long the run took and what it cost."""

    vm_type: str
    region: str
    arch: str | None
    """``x86_64`` or ``arm64`` (None: the region does not offer the type)."""
    workers: int
    """Workers the run had (0: it did not run)."""
    inputs: int
    wall_seconds: float | None = None
    """From the first submit to the last result (None: it did not run)."""
    hourly_usd: float | None = None
    """The cluster's estimate: scheduler and workers, with their disks and public addresses (None: unknown)."""
    failures: int | None = None
    """Inputs whose call raised, or was lost with its worker (None: it did not run)."""
    error: str | None = None
    """Why the configuration did not run, or the first failing input's error."""

    @property
    def run_usd(self) -> float | None:
        """$/hour × wall time: the run's share of the cluster's bill (boot and shutdown not counted)."""
        if self.wall_seconds is None or self.hourly_usd is None:
            return None
        return self.hourly_usd * self.wall_seconds / SECONDS_PER_HOUR

    @property
    def usd_per_input(self) -> float | None:
        """The run's cost over every input, those that failed included."""
        cost = self.run_usd
        return None if cost is None else cost / self.inputs

    def record(self) -> dict[str, Any]:
        """The row as a dict of ``COLUMNS``."""
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass(frozen=True)
class Comparison:
    """One row per configuration, cheapest per input first — after the rows with fewer failing inputs, and those
    that did not run last; prints as a table."""

    function: str
    rows: tuple[ComparisonRow, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(sorted(self.rows, key=_cheapest_first)))

    def __rich__(self) -> Table:
        inputs = self.rows[0].inputs if self.rows else 0
        table = Table(title=f"{self.function} over {inputs} input(s), by configuration", title_justify="left",
                      caption="run = $/hour × wall time, first submit to last result; boot and shutdown not counted",
                      caption_justify="left")
        for column in ("type", "region", "arch", "workers", "wall", "$/hour", "run", "$/input", "failures"):
            table.add_column(column, justify="left" if column in ("type", "region", "arch") else "right",
                             no_wrap=True)
        table.add_column("error")
        for row in self.rows:
            wall = "—" if row.wall_seconds is None else f"{row.wall_seconds:.2f} s"
            failures = "—" if row.failures is None else f"{row.failures} of {row.inputs}" if row.failures else "0"
            table.add_row(row.vm_type, row.region, row.arch or "—", str(row.workers), wall, _money(row.hourly_usd),
                          _money(row.run_usd), _money(row.usd_per_input), failures, row.error or "")
        return table

    def __str__(self) -> str:
        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self)
        return console.export_text()

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` with the columns ``COLUMNS``, in the table's order."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Comparison.to_pandas() needs pandas, which is not installed; pip install pandas") \
                from None
        return pandas.DataFrame([row.record() for row in self.rows], columns=list(COLUMNS))


def _cheapest_first(row: ComparisonRow) -> tuple:
    """Rows that ran before those that did not; fewer failing inputs first (a run whose inputs failed ended early,
    so its cost per input says little); then cheapest per input."""
    cost = row.usd_per_input
    return (row.failures is None, row.failures or 0, cost is None, cost or 0.0, row.vm_type, row.region)


def _money(value: float | None) -> str:
    """Dollars to 3 significant digits, never in exponent notation ($0.210, $0.000583); — when unknown."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:,.{max(2, 2 - math.floor(math.log10(abs(value))))}f}"


@dataclass(frozen=True)
class _Plan:
    """A configuration before launch: its ``sdk.Cluster`` arguments and its price, or why it cannot launch."""

    kwargs: dict[str, Any]
    spec: ClusterSpec
    arch: str | None = None
    estimate: CostEstimate | None = None
    error: str | None = None

    def row(self, inputs: int, **ran: Any) -> ComparisonRow:
        """Its row: as planned, with what the run adds (workers, wall time, the cluster's estimate, failures)."""
        planned = {"workers": 0, "hourly_usd": self.estimate.hourly_usd if self.estimate else None,
                   "error": self.error}
        return ComparisonRow(vm_type=self.spec.vm_type[0], region=self.spec.region, arch=self.arch, inputs=inputs,
                             **(planned | ran))


class _Interrupted(Exception):
    """The comparison was interrupted (Ctrl-C): a run stops waiting, and its cluster is closed."""


def compare(fn: Callable[[Any], Any], inputs: Iterable[Any], vm_types: Sequence[str] | str,
            regions: Sequence[str] | str | None = None, n_workers: int = 1, *, console: Console | None = None,
            show: bool = True, **cluster_kwargs: Any) -> Comparison:
    """Map ``fn`` over ``inputs`` on a cluster of each ``vm_types`` × ``regions`` configuration, all at once;
    the wall time and cost of each run, cheapest per input first (printed unless ``show=False``).

    ``n_workers`` workers each (plus the scheduler); ``cluster_kwargs`` are :class:`sdk.Cluster`'s other
    arguments, the same for every configuration (``max_hourly_usd`` caps all of them together). ``regions``: by
    default the one ``sdk.Cluster`` would pick. A configuration that cannot launch — or an input that raises — is
    a row saying why; the others run. The cost of a run is its cluster's $/hour × its wall time, from the first
    submit to the last result once every worker has joined: booting and shutting down are not counted (see the
    module's docstring). ``console``: where the lines of the comparison and its clusters go (default stderr) and
    the table (default stdout).
    """
    items = _inputs(fn, inputs)
    plans = [_plan(kwargs, spec) for kwargs, spec in _configurations(vm_types, regions, n_workers, cluster_kwargs)]
    total = _hourly_total(plans)
    _check_cap_of_all(plans, total, plans[0].spec.max_hourly_usd)
    out = console or Console(stderr=True)
    out.print(f"vmguard: comparing {len(plans)} configuration(s) of {n_workers} worker(s) on {len(items)} input(s), "
              f"launched at once: up to {_usd(total)}/hour together", highlight=False, soft_wrap=True)
    comparison = Comparison(function=getattr(fn, "__name__", type(fn).__name__),
                            rows=tuple(_run_all(fn, items, plans, out)))
    if show:
        (console or Console()).print(comparison)
    return comparison


# -- arguments and prices -----------------------------------------------------------------------------------------


def _inputs(fn: object, inputs: Iterable[Any]) -> list[Any]:
    """The inputs as a list (each configuration maps the same ones); one line for a wrong ``fn`` or none."""
    if not callable(fn):
        raise SdkError(f"fn must be a function to map over the inputs, not {type(fn).__name__}")
    try:
        items = list(inputs)
    except TypeError:
        raise SdkError(f"inputs must be an iterable like range(100) or a list, not {type(inputs).__name__}") from None
    if not items:
        raise SdkError("inputs is empty; pass what to map fn over, e.g. range(100)")
    return items


def _configurations(vm_types: Sequence[str] | str, regions: Sequence[str] | str | None, n_workers: int,
                    cluster_kwargs: dict[str, Any]) -> list[tuple[dict[str, Any], ClusterSpec]]:
    """The ``sdk.Cluster`` arguments of each configuration, vm_types × regions, and their spec: a wrong argument is
    one line before any AWS call."""
    for name, instead in (("vm_type", "vm_types"), ("region", "regions"), ("fallback_regions", "regions")):
        if name in cluster_kwargs:
            raise SdkError(f"compare() takes {instead}=[...], not {name}=: each configuration is one type in one "
                           "region")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise SdkError(f"n_workers={n_workers!r} must be a whole number of 1 or more: the inputs run on the workers")
    types = _names("vm_types", vm_types, "['m5.large', 'm7g.large']")
    places = [{}] if regions is None else [{"region": r} for r in _names("regions", regions, "['us-east-1']")]
    configurations = [{**cluster_kwargs, "vm_type": name, "n_workers": n_workers, **place}
                      for name in types for place in places]
    return [(kwargs, ClusterSpec.from_kwargs(**kwargs)) for kwargs in configurations]


def _names(what: str, value: Sequence[str] | str, example: str) -> list[str]:
    """``vm_types`` or ``regions`` as a list (a string: a list of one), each named once."""
    if not isinstance(value, (str, list, tuple)):
        raise SdkError(f"{what} must be a list like {example}, not {value!r}")
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise SdkError(f"{what}=[] names nothing to compare; pass a list like {example}")
    cleaned = [name.strip().lower() if isinstance(name, str) else name for name in names]
    twice = next((name for i, name in enumerate(cleaned) if name in cleaned[:i]), None)
    if twice is not None:
        raise SdkError(f"{what} names {twice!r} twice; list each once")
    return cleaned


def _plan(kwargs: dict[str, Any], spec: ClusterSpec) -> _Plan:
    """Price a configuration as its cluster will (the region's types, the scheduler's own type); a type the region
    does not offer, or a price unknown under a cap, makes it a configuration that cannot launch."""
    ec2 = boto3.client("ec2", region_name=spec.region, config=_AWS_CONFIG)
    arch = None
    try:
        types = resolve_instance_types(spec, ec2)
        arch = describe_types(ec2, types[:1])[types[0]].arch
        estimate = estimate_cost(spec, types, scheduler_types=resolve_scheduler_types(spec, ec2, types))
        if estimate.capped_hourly_usd is None:
            check_cap(estimate, spec.max_hourly_usd)  # under a cap, an unknown price cannot launch: it says why
    except SdkError as exc:
        return _Plan(kwargs, spec, arch, error=f"could not launch: {exc}")
    return _Plan(kwargs, spec, arch, estimate)


def _hourly_total(plans: list[_Plan]) -> float:
    """What the configurations that can launch could cost per hour together (the worst case of each)."""
    return sum(plan.estimate.capped_hourly_usd or 0.0 for plan in plans if plan.estimate is not None)


def _check_cap_of_all(plans: list[_Plan], total: float, cap: float | None) -> None:
    """Refuse the comparison when its clusters, all up at once, could cost more per hour than the cap."""
    if cap is None or total <= cap:
        return
    priced = [plan for plan in plans if plan.estimate is not None and plan.estimate.capped_hourly_usd is not None]
    priciest = max(priced, key=lambda plan: plan.estimate.capped_hourly_usd)
    allow = _round_up(total)
    raise SdkError(f"these {len(priced)} configuration(s) run at once and could cost up to {_usd(total)}/hour "
                   f"together ({_usd(total * HOURS_PER_DAY)}/day; the priciest, {priciest.spec.vm_type[0]} in "
                   f"{priciest.spec.region}, {_usd(priciest.estimate.capped_hourly_usd)}/hour), above "
                   f"max_hourly_usd={cap:g}; pass max_hourly_usd={allow:g} or set {MAX_HOURLY_ENV}={allow:g} to "
                   "allow it, or compare fewer configurations at once")


# -- runs ---------------------------------------------------------------------------------------------------------


def _run_all(fn: Callable[[Any], Any], items: list[Any], plans: list[_Plan], console: Console) -> list[ComparisonRow]:
    """Every configuration that can launch, each in a thread of its own; the rows in the plans' order.

    On Ctrl-C every run is told to stop and closes its cluster (one still launching, once it has launched) before
    the interrupt goes on; a second Ctrl-C stops the wait, not the closing. A cluster that could not be shut down
    fails the whole comparison with its error (which says what to look for), once the other runs are over.
    """
    stop = threading.Event()
    rows = {i: plan.row(len(items)) for i, plan in enumerate(plans) if plan.error}
    launchable = {i: plan for i, plan in enumerate(plans) if not plan.error}
    pool = ThreadPoolExecutor(max_workers=max(1, len(launchable)), thread_name_prefix="vmguard-compare")
    try:
        futures = {i: pool.submit(_trial, fn, items, plan, _cluster_console(console), stop)
                   for i, plan in launchable.items()}
        rows |= {i: future.result() for i, future in futures.items()}
    except KeyboardInterrupt:
        stop.set()
        console.print("vmguard: interrupted: closing the comparison's clusters…", highlight=False)
        raise
    finally:
        pool.shutdown(wait=True)
    return [rows[i] for i in range(len(plans))]


def _cluster_console(console: Console) -> Console:
    """Where a configuration's cluster prints: the comparison's output, without live displays (rich shows one at a
    time, and the clusters launch at once)."""
    return Console(file=console.file, width=console.width, force_terminal=False, force_jupyter=False)


def _trial(fn: Callable[[Any], Any], items: list[Any], plan: _Plan, console: Console,
           stop: threading.Event) -> ComparisonRow:
    """Launch the configuration's cluster, run the workload on it, and close it whatever happened."""
    try:
        cluster = Cluster(console=console, **plan.kwargs)
    except Exception as exc:  # noqa: BLE001 - its row says why; the other configurations go on
        return plan.row(len(items), error=f"could not launch: {_text(exc)}")
    try:
        return _measured(cluster, fn, items, plan, stop)
    except _Interrupted:
        return plan.row(len(items), error="interrupted")
    except Exception as exc:  # noqa: BLE001 - a run that broke (workers that never joined, a lost scheduler)
        return plan.row(len(items), error=f"the run failed: {_text(exc)}")
    finally:
        cluster.close()


def _measured(cluster: Cluster, fn: Callable[[Any], Any], items: list[Any], plan: _Plan,
              stop: threading.Event) -> ComparisonRow:
    """The configuration's row once its run on ``cluster`` is over (read while the cluster is still up)."""
    workers = len(cluster.launched.workers)
    wall, futures = _timed_run(cluster, fn, items, workers, stop)
    failed = [(i, future) for i, future in enumerate(futures) if future.status != "finished"]
    return plan.row(len(items), workers=workers, wall_seconds=wall, hourly_usd=cluster.estimate.hourly_usd,
                    failures=len(failed), error=_first_failure(failed))


def _timed_run(cluster: Cluster, fn: Callable[[Any], Any], items: list[Any], workers: int,
               stop: threading.Event) -> tuple[float, list[Any]]:
    """The wall time of mapping ``fn`` over ``items``, from the first submit to the last result, and the futures.

    The clock starts once every worker has joined, so that a slow boot does not count as a slow run."""
    client = cluster.get_client()
    deadline = time.monotonic() + cluster.spec.boot_timeout.total_seconds()
    _until_done(lambda timeout: client.wait_for_workers(workers, timeout=timeout), stop, deadline)
    started = time.monotonic()
    futures = client.map(fn, items, pure=False)
    for future in futures:
        _until_done(lambda timeout, future=future: future.exception(timeout=timeout), stop)
    client.gather([future for future in futures if future.status == "finished"])
    return time.monotonic() - started, futures


def _until_done(wait: Callable[[float], object], stop: threading.Event, deadline: float = math.inf) -> None:
    """Call ``wait(POLL_SECONDS)`` until it no longer times out; in between, stop when the comparison is interrupted
    or ``deadline`` (``time.monotonic()``) has passed."""
    while True:
        if stop.is_set():
            raise _Interrupted
        try:
            wait(POLL_SECONDS)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _first_failure(failed: list[tuple[int, Any]]) -> str | None:
    """The first failing input's error, as ``input 3: ZeroDivisionError: division by zero``."""
    if not failed:
        return None
    index, future = failed[0]
    exc = future.exception() if future.status == "error" else None
    return f"input {index}: {_text(exc) if exc is not None else future.status}"


def _text(exc: BaseException) -> str:
    """An error on one line, named by its type unless it is the SDK's own (whose message says it all)."""
    text = str(exc) if isinstance(exc, SdkError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())

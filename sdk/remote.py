"""``@sdk.function(...)``: call a Python function on a guarded cluster as if it were local.

The cluster is launched on the first call and reused by later calls (and by other functions asking for the same
cluster) while it is alive; it closes when the process exits — or, if the process dies, when its keepalive runs out.
Arguments are checked when the decorator is applied, so a typo fails before anything is launched.

One calling style for ``f(...)``, ``f.submit(...)`` and ``f.map(...)``: every positional and keyword argument is the
function's own, passed as it is. What is about the call itself has names of its own, never taken from the
function's keywords: ``retries=`` (how often a failed call is tried again; ``sdk.function(retries=...)`` sets the
function's default), ``errors=`` for ``map`` (``"raise"``, or ``"skip"``: failed inputs are left out of the results
and listed in ``.failures``), and ``dask_options={...}`` for the rest of what ``Client.submit`` takes
(``DASK_OPTIONS``). A function with a parameter of one of those names is refused when decorated.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar

from sdk.cluster import Cluster
from sdk.errors import SdkError
from sdk.spec import ClusterSpec

P = ParamSpec("P")
R = TypeVar("R")

Errors = Literal["raise", "skip"]
RESERVED = ("retries", "errors", "dask_options")
"""The keywords ``submit``/``map`` keep for themselves: a function's own parameter may not be named so."""
DASK_OPTIONS = ("workers", "allow_other_workers", "resources", "priority", "fifo_timeout", "annotations")
"""What ``dask_options`` may hold: where and in which order Dask runs the calls. ``key`` and ``pure`` stay the
SDK's (every call runs, none is taken for another), ``retries`` has its own argument."""
MAX_RETRIES = 100

_clusters: dict[str, Cluster] = {}
"""Running clusters by their spec (as JSON: the same arguments share one cluster)."""
_clusters_lock = threading.Lock()


def _cluster_for(spec: ClusterSpec, kwargs: dict[str, Any]) -> Cluster:
    """The running cluster for this spec, launching one if there is none (or the last one died)."""
    key = spec.model_dump_json()
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is not None and not cluster.alive:
            cluster.close()  # never leave a broken cluster billing next to its replacement
        if cluster is None or not cluster.alive:
            cluster = Cluster(**kwargs)
            _clusters[key] = cluster
        return cluster


def check_retries(retries: object) -> int:
    """``retries`` as a count of extra attempts, or a one-line ``SdkError``."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise SdkError(f"retries={retries!r} must be a whole number from 0 to {MAX_RETRIES} (extra attempts of a "
                       "call that failed)")
    return retries


def check_dask_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``dask_options`` as keywords for ``Client.submit``/``Client.map``, or a one-line ``SdkError``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise SdkError(f"dask_options must be a dict like {{'resources': {{'GPU': 1}}}}, not {type(options).__name__}")
    for name in options:
        if name not in DASK_OPTIONS:
            own = f"pass {name}= itself" if name in RESERVED else None
            close = difflib.get_close_matches(str(name), DASK_OPTIONS, n=1, cutoff=0.6)
            hint = own or (f"did you mean {close[0]!r}?" if close else f"the options are {', '.join(DASK_OPTIONS)}")
            raise SdkError(f"unknown Dask option {name!r}; {hint}")
    return dict(options)


def _check_errors(errors: object) -> Errors:
    if errors not in ("raise", "skip"):
        raise SdkError(f"errors={errors!r} must be 'raise' (the first failure raises) or 'skip' (failed inputs are "
                       "left out of the results and listed in .failures)")
    return errors  # type: ignore[return-value]


def _check_parameters(fn: Callable[..., Any]) -> None:
    """A function whose own parameter is named like one of ``RESERVED`` could not be given it: say so now."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it has no such keyword to hide
        return
    clash = [name for name in RESERVED if name in parameters]
    if clash:
        raise SdkError(f"{getattr(fn, '__name__', fn)!s} has a parameter named {clash[0]!r}, which submit and map "
                       "keep for themselves; rename it (or wrap the function)")


@dataclass(frozen=True)
class Failure:
    """An input of ``map(..., errors="skip")`` whose call failed (after its retries)."""

    index: int
    """Its position among the inputs."""
    args: tuple[Any, ...]
    """The arguments it was called with (one from each iterable)."""
    error: BaseException
    """What the call raised on the cluster."""


class MapResults(Generic[R]):
    """The results of ``map``, in input order, as they come.

    With ``errors="raise"`` the first failed input raises its exception when iteration reaches it. With
    ``errors="skip"`` failed inputs are left out, and ``failures`` lists them (waiting for every call first).
    ``futures`` are the ``distributed.Future`` of every input, in order.
    """

    def __init__(self, futures: list[Any], inputs: list[tuple[Any, ...]], errors: Errors):
        self.futures = futures
        self._inputs = inputs
        self._errors = errors
        self._next = 0

    def __iter__(self) -> MapResults[R]:
        return self

    def __next__(self) -> R:
        while self._next < len(self.futures):
            future = self.futures[self._next]
            self._next += 1
            try:
                return future.result()
            except CancelledError:
                raise  # the cluster went away: not a failure of this input
            except Exception:  # noqa: BLE001 - skipped: listed in .failures
                if self._errors == "raise":
                    raise
        raise StopIteration

    @property
    def failures(self) -> list[Failure]:
        """Every input whose call failed, in input order (waits for all of them to finish)."""
        errors = [future.exception() for future in self.futures]  # waits for each; None for a success
        return [Failure(index, self._inputs[index], error) for index, error in enumerate(errors) if error is not None]


class Function(Generic[P, R]):
    """A function that runs on its cluster: ``f(x)`` blocks, ``f.submit(x)`` is a future, ``f.map(xs)`` fans out."""

    def __init__(self, fn: Callable[P, R], cluster_kwargs: dict[str, Any], retries: int = 0):
        _check_parameters(fn)
        self.fn = fn
        self.retries = check_retries(retries)
        self.spec = ClusterSpec.from_kwargs(**cluster_kwargs)
        self._cluster_kwargs = cluster_kwargs
        functools.update_wrapper(self, fn)

    @property
    def cluster(self) -> Cluster:
        return _cluster_for(self.spec, self._cluster_kwargs)

    @property
    def client(self):
        return self.cluster.get_client()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.submit(*args, **kwargs).result()

    def _options(self, retries: int | None, dask_options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The keywords for Dask: checked before anything is sent (or launched)."""
        return {"pure": False, "retries": self.retries if retries is None else check_retries(retries),
                **check_dask_options(dask_options)}

    def submit(self, *args: Any, retries: int | None = None, dask_options: Mapping[str, Any] | None = None,
               **kwargs: Any):
        """Run once on the cluster; returns a ``distributed.Future``.

        ``retries``: extra attempts if the call fails (default: the function's). ``dask_options``: see
        ``DASK_OPTIONS``. Everything else is the function's own arguments.
        """
        options = self._options(retries, dask_options)
        # bound here, so the function's keywords are never read as Dask's (key=, workers=, …)
        return self.client.submit(functools.partial(self.fn, *args, **kwargs), **options)

    def map(self, *iterables: Iterable[Any], retries: int | None = None, errors: Errors = "raise",
            dask_options: Mapping[str, Any] | None = None, **kwargs: Any) -> MapResults[R]:
        """Call the function on every input now (in parallel on the workers); iterate for the results in input
        order. One input is one item of each iterable, as with ``map``; ``kwargs`` go to every call.

        ``errors="skip"``: failed inputs are left out of the results and listed in the result's ``.failures``.
        """
        options = self._options(retries, dask_options)
        errors = _check_errors(errors)
        inputs = list(zip(*iterables, strict=False))
        call = functools.partial(self.fn, **kwargs) if kwargs else self.fn
        futures = self.client.map(call, *zip(*inputs, strict=True), **options) if inputs else []
        return MapResults(futures, inputs, errors)


def function(fn: Callable[P, R] | None = None, *, retries: int = 0, **cluster_kwargs: Any):
    """Decorate a function to run on a guarded cluster; takes :class:`sdk.Cluster`'s arguments.

    ``@sdk.function`` alone uses the defaults; ``@sdk.function(vm_type="m7g.large", n_workers=4)`` chooses.
    ``retries``: how many more times a failed call is tried by default (``submit``/``map`` may say otherwise).
    """
    if fn is not None:
        return Function(fn, cluster_kwargs, retries)
    return lambda f: Function(f, cluster_kwargs, retries)

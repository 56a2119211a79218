"""``@sdk.function(...)``: call a Python function on a guarded cluster as if it were local.

The cluster is launched on the first call and reused by later calls (and by other functions asking for the same
cluster) while it is alive; it closes when the process exits — or, if the process dies, when its keepalive runs out.
Arguments are checked when the decorator is applied, so a typo fails before anything is launched.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

from sdk.cluster import Cluster
from sdk.spec import ClusterSpec

P = ParamSpec("P")
R = TypeVar("R")

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


class Function(Generic[P, R]):
    """A function that runs on its cluster: ``f(x)`` blocks, ``f.submit(x)`` is a future, ``f.map(xs)`` fans out."""

    def __init__(self, fn: Callable[P, R], cluster_kwargs: dict[str, Any]):
        self.fn = fn
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

    def submit(self, *args: P.args, **kwargs: P.kwargs):
        """Run once on the cluster; returns a ``distributed.Future``."""
        # the function's own keyword arguments must not be taken for Dask's (key=, workers=, retries=, …)
        return self.client.submit(functools.partial(self.fn, *args, **kwargs), pure=False)

    def map(self, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[R]:
        """Submit every input now (in parallel on the workers); iterate for the results, in input order."""
        futures = self.client.map(self.fn, *iterables, pure=False, **kwargs)
        return (future.result() for future in futures)


def function(fn: Callable[P, R] | None = None, **cluster_kwargs: Any):
    """Decorate a function to run on a guarded cluster; takes :class:`sdk.Cluster`'s arguments.

    ``@sdk.function`` alone uses the defaults; ``@sdk.function(vm_type="m7g.large", n_workers=4)`` chooses.
    """
    if fn is not None:
        return Function(fn, cluster_kwargs)
    return lambda f: Function(f, cluster_kwargs)

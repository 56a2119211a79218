"""vmguard's SDK: launch guarded Dask clusters on EC2 and run Python on them with one decorator.

    import sdk

    @sdk.function(vm_type="m7g.large", region="us-west-2", keepalive="20 minutes", n_workers=4)
    def score(x): ...

    score(3)                     # runs remotely, blocks
    list(score.map(range(100)))  # fan-out, results in order

    sdk.price_table(cpu=4, memory="16GiB", regions=["us-east-1", "eu-west-1"])  # what to try, and its price

Names are imported on first use, so the on-VM agent (``python -m sdk.vm``) does not load the launch machinery.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk.cluster import Cluster
    from sdk.errors import SdkError
    from sdk.prices import PriceTable, price_table
    from sdk.remote import Function, function

__all__ = ["Cluster", "Function", "PriceTable", "SdkError", "function", "price_table"]

_HOME = {"Cluster": "sdk.cluster", "Function": "sdk.remote", "function": "sdk.remote", "SdkError": "sdk.errors",
         "price_table": "sdk.prices", "PriceTable": "sdk.prices"}
"""Where each public name lives. No submodule is named like a public name: importing ``sdk.<module>`` sets the
package attribute ``<module>``, which would then hide the name of the same spelling."""


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
        globals()[name] = value  # looked up once; later accesses do not come here
        return value
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")

"""vmguard's daemon: scan an AWS account, find and price waste, keep findings, serve metrics.

The public API for rule authors and embedders is re-exported here.
"""

from guard.durations import Duration, format_duration, parse_duration
from guard.model import Evaluation, Finding, Instance, MetricQuery, Series, Severity, Snapshot, Volume
from guard.pricing import HOURS_PER_MONTH, PriceCatalog, default_catalog
from guard.rule import Context, Registry, Rule, RuleConfig, discover_rules

__all__ = [
    "HOURS_PER_MONTH",
    "Context",
    "Duration",
    "Evaluation",
    "Finding",
    "Instance",
    "MetricQuery",
    "PriceCatalog",
    "Registry",
    "Rule",
    "RuleConfig",
    "Series",
    "Severity",
    "Snapshot",
    "Volume",
    "default_catalog",
    "discover_rules",
    "format_duration",
    "parse_duration",
]

"""What a rule is, the context it evaluates in, and how rules are discovered (entry points ``guard.rules``).

A rule is one class registered by name. It declares the snapshot parts it needs and the metric
series it wants; ``evaluate`` is a pure function of the snapshot and the context — no I/O.
Its docstring follows four headed sections (What it detects / Why it costs money / Example / Fix),
from which the README's rule table is generated.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import entry_points
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from guard.durations import Duration, Period, format_duration
from guard.model import SNAPSHOT_PARTS, Evaluation, LogSampleRequest, MetricQuery, Severity, Snapshot, Tags
from guard.pricing import PriceCatalog

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "guard.rules"


class RuleConfig(BaseModel):
    """Settings every rule has; a rule subclasses this with its thresholds (``[rules.<id>]``).

    ``action`` is what the daemon does about a finding once it is due (past ``grace``, announced, and past every
    safety gate); ``notify`` only tells people. Which actions a rule offers is its ``actions`` class attribute.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    action: str = Field("notify", description="what to do about a due finding: notify, or one of the rule's actions")
    grace: Duration = Field(timedelta(hours=24), description=(
        "how long a finding stays open (and announced) before its action is due; for terminate, also how long "
        "the stop must hold"))
    act_on_unmanaged: bool = Field(False, description=(
        "allow destructive actions on resources without the guard:managed tag (not launched by the SDK)"))
    act_on_instance_store: bool = Field(False, description=(
        "allow stop/terminate of instances whose type has instance-store volumes (m5d, g4dn, g5, p4d, i3…): "
        "a stop erases them"))


ACTION_SETTINGS = frozenset(RuleConfig.model_fields)
"""Settings of every rule (not thresholds): left out of the rule table's thresholds column."""


class WindowedConfig(RuleConfig):
    """Settings of a rule that reads CloudWatch over a window of whole periods (a subclass sets the defaults)."""

    window: Duration = Field(timedelta(hours=1), description="how far back the metrics are read")
    period: Period = Field(timedelta(minutes=5), description="CloudWatch period (5 min = basic monitoring)")

    @model_validator(mode="after")
    def _window_holds_a_period(self) -> WindowedConfig:
        if self.window < self.period:
            raise ValueError(f"window must be at least one period ({format_duration(self.period)})")
        return self


class MonthlySeverityConfig(RuleConfig):
    """Settings of a rule whose severity follows a finding's monthly cost (see ``severity_by_monthly``)."""

    high_monthly_usd: float = Field(50.0, ge=0, description="monthly cost from which a finding is high severity")
    medium_monthly_usd: float = Field(10.0, ge=0, description="monthly cost from which a finding is medium severity")

    @model_validator(mode="after")
    def _ordered_severities(self) -> MonthlySeverityConfig:
        if self.medium_monthly_usd > self.high_monthly_usd:
            raise ValueError("medium_monthly_usd must not exceed high_monthly_usd")
        return self


@dataclass(frozen=True)
class Context:
    """What a rule may know besides the snapshot: prices and the team's tag conventions."""

    prices: PriceCatalog
    owner_tag: str = "owner"
    protect_tag: str = "guard:protect"
    protect_value: str = "true"

    def owner_of(self, tags: Tags) -> str:
        return tags.get(self.owner_tag) or "unknown"

    def is_protected(self, tags: Tags) -> bool:
        return tags.get(self.protect_tag, "").lower() == self.protect_value.lower()


class Rule:
    """Base class of every rule plugin."""

    id: ClassVar[str]
    resource_type: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    """Snapshot parts the rule reads; it is skipped for the cycle when one of them is unknown."""
    uses: ClassVar[frozenset[str]] = frozenset()
    """Snapshot parts the rule reads when they are known, and does without when they are not."""
    inputs: ClassVar[str]
    waste_formula: ClassVar[str]
    suggested_action: ClassVar[str]
    iam_permissions: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[RuleConfig]] = RuleConfig
    billing: ClassVar[str | None] = None
    """The bill the waste is on; rules that price the same bill of a resource share it (default: the rule id)."""
    listings: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(namespace, metric) pairs whose available dimension sets the rule needs (part ``metric_listings``)."""
    actions: ClassVar[tuple[str, ...]] = ()
    """Actions (besides ``notify``) a finding of this rule may be configured to get, from ``guard.actions``."""
    stop_before_terminate: ClassVar[bool] = True
    """With ``action = "terminate"``: stop first, terminate only once the stop has held for ``grace``."""

    def __init__(self, config: RuleConfig | None = None):
        self.config = config if config is not None else self.Config()

    def metric_queries(self, snapshot: Snapshot, context: Context) -> Iterable[MetricQuery]:
        """The CloudWatch series this rule needs, given the resources (and listings) already in the snapshot."""
        return ()

    def log_sample_requests(self, snapshot: Snapshot, context: Context) -> Iterable[LogSampleRequest]:
        """The log groups whose recent events this rule needs, given the resources and metrics."""
        return ()

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        raise NotImplementedError

    def action_params(self) -> dict[str, int | str]:
        """Parameters the configured action takes from this rule's settings (e.g. the retention to set)."""
        return {}


def severity_by_monthly(monthly_usd: float | None, high: float, medium: float) -> Severity:
    """Severity from a finding's monthly cost; an unknown price is medium (worth a look, not an alarm)."""
    if monthly_usd is None:
        return Severity.medium
    if monthly_usd >= high:
        return Severity.high
    if monthly_usd >= medium:
        return Severity.medium
    return Severity.low


@dataclass(frozen=True)
class Registry:
    """The rules found through entry points, and the plugins that failed to load."""

    rules: Mapping[str, type[Rule]]
    errors: Mapping[str, str]


def discover_rules() -> Registry:
    """Load every ``guard.rules`` entry point; a broken plugin is reported, never hides the others."""
    rules: dict[str, type[Rule]] = {}
    errors: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a plugin's import error must not stop the daemon
            errors[ep.name] = f"{type(exc).__name__}: {exc}"
            log.error("rule plugin %s failed to load: %s", ep.name, exc)
            continue
        if not (inspect.isclass(cls) and issubclass(cls, Rule)):
            errors[ep.name] = f"{ep.value} is not a guard.rule.Rule subclass"
            continue
        if cls.id != ep.name:
            errors[ep.name] = f"entry point name {ep.name!r} differs from the rule id {cls.id!r}"
            continue
        unknown_parts = (set(cls.needs) | set(cls.uses)) - SNAPSHOT_PARTS
        if unknown_parts:
            errors[ep.name] = f"needs unknown snapshot parts {sorted(unknown_parts)}"
            continue
        rules[cls.id] = cls
    return Registry(rules=dict(sorted(rules.items())), errors=errors)


_SECTION = re.compile(r"^(What it detects|Why it costs money|Example|Fix)\s*$", re.MULTILINE)


def rule_doc(cls: type[Rule]) -> dict[str, str]:
    """The docstring's summary line and its four sections, as plain text."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    summary, _, body = doc.partition("\n")
    sections = {"summary": summary.strip()}
    pieces = _SECTION.split(body)
    for title, text in zip(pieces[1::2], pieces[2::2], strict=True):
        sections[title] = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return sections


def thresholds_doc(cls: type[Rule], markdown: bool = True) -> str:
    """``name`` = default for each threshold of a rule's config (all but ``enabled``)."""
    dumped = cls.Config().model_dump(mode="json")
    quote = "`" if markdown else ""
    names = [name for name in cls.Config.model_fields if name not in ACTION_SETTINGS]
    return ", ".join(f"{quote}{name}{quote} = {dumped[name]!r}" for name in names)

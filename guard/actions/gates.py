"""The safety gates, as one pure function: which candidate actions run, are planned, wait, or are held back.

Gates apply in DESIGN.md's order: mode → protection (tag; account/region allow-list; instances a stop is not harmless
for — spot, Auto Scaling, managed-service nodes, instance store without the rule's opt-in, see ``guard.stoppable``)
→ scope (guard:managed or the rule's opt-in) → grace (and the announcement) and minimum age → blast radius
(per-cycle and per-hour caps, circuit breaker). "Reversible first" is built into the candidates: a terminate that
must follow a stop is a stop until the stop has held. No I/O here, so the gates can be checked over any inventory
and configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from guard.actions.executors import EXECUTORS
from guard.audit import APPROVED, FAILED, PLANNED, Intent
from guard.model import Tags
from guard.stoppable import Hazard

EXECUTE = "execute"
PLAN = "would-do"
WAIT = "wait"
SKIPPED_PROTECTED = "skipped-protected"
SKIPPED_ACCOUNT = "skipped-not-allowed"
SKIPPED_UNMANAGED = "skipped-unmanaged"
SKIPPED_YOUNG = "skipped-young"
SKIPPED_CAP = "skipped-cap"
SKIPPED_BREAKER = "skipped-breaker"


@dataclass(frozen=True)
class Policy:
    """The daemon-wide gate settings."""

    mode: str
    allowed_accounts: frozenset[str]
    allowed_regions: frozenset[str]
    protect_tag: tuple[str, str]
    managed_tag: tuple[str, str]
    min_resource_age: timedelta
    max_per_cycle: int
    max_per_hour: int
    breaker_failures: int
    breaker_cooldown: timedelta
    notification_required: bool
    """A webhook is configured: a finding must have been announced before its action is due."""

    @classmethod
    def from_settings(cls, settings) -> Policy:
        return cls(mode=settings.mode, allowed_accounts=frozenset(settings.allowed_accounts),
                   allowed_regions=frozenset(settings.action_regions), protect_tag=settings.protect_tag_pair,
                   managed_tag=settings.managed_tag_pair, min_resource_age=settings.min_resource_age,
                   max_per_cycle=settings.max_actions_per_cycle, max_per_hour=settings.max_actions_per_hour,
                   breaker_failures=settings.breaker_failures, breaker_cooldown=settings.breaker_cooldown,
                   notification_required=settings.webhook_url is not None)

    def has_tag(self, tags: Tags, pair: tuple[str, str]) -> bool:
        key, value = pair
        return tags.get(key, "").lower() == value.lower()


@dataclass(frozen=True)
class Candidate:
    """An action that may be due: what, why, since when, and the resource as the snapshot saw it."""

    intent: Intent
    due_from: datetime
    """When the grace period started: the finding opened, or the stop a terminate follows finished."""
    grace: timedelta
    announced: bool
    act_on_unmanaged: bool
    tags: Tags
    created_at: datetime | None
    """When the resource was made, if AWS says (EIPs don't: the finding's first sighting stands in)."""
    existing_status: str | None = None
    """The audit row with this candidate's idempotency key, if any."""
    hazard: Hazard | None = None
    """Why a stop or terminate must leave this instance alone (``guard.stoppable.stop_hazard``), if it must."""


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    result: str


def breaker_open(last_outcomes: Sequence[tuple[str, datetime]], policy: Policy, now: datetime) -> bool:
    """Open after ``breaker_failures`` failed executions in a row, until ``breaker_cooldown`` after the last one."""
    recent = list(last_outcomes)[: policy.breaker_failures]
    return (len(recent) == policy.breaker_failures and all(status == FAILED for status, _ in recent)
            and now - recent[0][1] < policy.breaker_cooldown)


def decide(candidates: Iterable[Candidate], policy: Policy, now: datetime, started_this_cycle: int,
           started_last_hour: int, last_outcomes: Sequence[tuple[str, datetime]]) -> list[Verdict]:
    """One verdict per candidate; approved candidates first, then the costliest, so the caps admit those first."""
    if policy.mode == "observe":
        return []
    ordered = sorted(candidates, key=lambda c: (c.existing_status != APPROVED, -(c.intent.waste_hourly_usd or 0.0),
                                                c.intent.key))
    breaker = breaker_open(last_outcomes, policy, now)
    cycle, hour = started_this_cycle, started_last_hour
    verdicts = []
    # a resource+action under way (or finished) for one finding is not started again for another
    seen = {(c.intent.resource_id, c.intent.action) for c in ordered
            if c.existing_status not in (None, PLANNED, APPROVED)}
    for candidate in ordered:
        intent = candidate.intent
        if (intent.resource_id, intent.action) in seen:
            continue
        seen.add((intent.resource_id, intent.action))
        result = _static_gates(candidate, policy, now)
        if result is None:
            executes = policy.mode == "enforce" or candidate.existing_status == APPROVED
            if not executes:
                result = PLAN if candidate.existing_status is None else WAIT
            elif intent.account_id not in policy.allowed_accounts or intent.region not in policy.allowed_regions:
                result = SKIPPED_ACCOUNT
            elif breaker:
                result = SKIPPED_BREAKER
            elif cycle >= policy.max_per_cycle or hour >= policy.max_per_hour:
                result = SKIPPED_CAP
            else:
                result = EXECUTE
                cycle += 1
                hour += 1
        verdicts.append(Verdict(candidate, result))
    return verdicts


def _static_gates(candidate: Candidate, policy: Policy, now: datetime) -> str | None:
    """Protection, scope, grace/announcement and age: None when all pass, else the verdict."""
    intent = candidate.intent
    if policy.has_tag(candidate.tags, policy.protect_tag):
        return SKIPPED_PROTECTED
    if candidate.hazard is not None:
        return candidate.hazard.result
    if (EXECUTORS[intent.action].destructive and not candidate.act_on_unmanaged
            and not policy.has_tag(candidate.tags, policy.managed_tag)):
        return SKIPPED_UNMANAGED
    if now - candidate.due_from < candidate.grace or (policy.notification_required and not candidate.announced):
        return WAIT
    made = candidate.created_at or candidate.due_from
    if now - made < policy.min_resource_age:
        return SKIPPED_YOUNG
    return None


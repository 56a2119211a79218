"""The action phase of a scan: resume unfinished intents, pick due actions past the gates, carry them out.

Write-ahead: an action's row is committed as ``pending`` before its first AWS call and gets its outcome after.
Before any call the resource is read again (tags, state): a protection tag added since the snapshot, a volume
attached again or a stop undone stops the action; a goal that already holds (after a crash, say) is recorded as
done without calling again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from guard.actions.executors import ALL_EXECUTORS, UP_FRONT, Observed
from guard.actions.gates import (
    EXECUTE,
    PLAN,
    SKIPPED_ACCOUNT,
    SKIPPED_BREAKER,
    SKIPPED_PROTECTED,
    SKIPPED_UNMANAGED,
    Candidate,
    Policy,
    breaker_open,
    decide,
)
from guard.audit import (
    APPROVED,
    CANCELLED,
    DONE,
    FAILED,
    IN_PROGRESS,
    PENDING,
    PLANNED,
    SKIPPED,
    UNFINISHED,
    ActionRow,
    AuditLog,
    Intent,
    idempotency_key,
)
from guard.aws import Aws, describe_aws_error
from guard.model import Instance, Snapshot, Tags
from guard.rule import Rule, RuleConfig
from guard.stoppable import INSTANCE_ACTIONS, Hazard, facts_of, stop_hazard
from guard.store import FindingRow, Store

log = logging.getLogger(__name__)

UNDONE_SLACK = timedelta(minutes=2)
"""A stopped instance whose stop time is later than ours by more than this was started (and stopped) again."""


@dataclass
class ActionReport:
    """What one action phase did (rows as the API shows them) and the verdicts of the gates, for metrics."""

    planned: list[dict] = field(default_factory=list)
    executed: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    results: list[tuple[str, str, str]] = field(default_factory=list)
    """(rule, action, result) for every decision this phase: done, would-do, failed, skipped-…"""


def resource_facts(snapshot: Snapshot, resource_type: str, resource_id: str) -> tuple[Tags, datetime | None] | None:
    """(tags, created) of a resource in the snapshot; None when the snapshot does not know it."""
    parts: Mapping[str, tuple[str, Callable, Callable]] = {
        "instance": ("instances", lambda r: r.id, lambda r: r.launch_time),
        "volume": ("volumes", lambda r: r.id, lambda r: r.create_time),
        "elastic-ip": ("addresses", lambda r: r.allocation_id, lambda r: None),
        "log-group": ("log_groups", lambda r: r.name, lambda r: r.creation_time),
        "snapshot": ("snapshots", lambda r: r.id, lambda r: r.start_time),
    }
    if resource_type not in parts:
        return None
    part, ident, created = parts[resource_type]
    for resource in getattr(snapshot, part) or ():
        if ident(resource) == resource_id:
            return resource.tags, created(resource)
    return None


class Actuator:
    """Runs the action phase for the scanner; one phase at a time across regions (the hourly cap is global)."""

    def __init__(self, settings, rules: list[Rule], aws: Aws, store: Store, audit: AuditLog | None = None):
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.rules = {rule.id: rule for rule in rules}
        self.aws = aws
        self.store = store
        self.audit = audit or AuditLog(store)
        self._lock = threading.Lock()
        self._held_back: set[tuple[str, str]] = set()
        self.may_act: Callable[[], bool] = lambda: True
        """Whether this process is the one that acts on its database now (guard.lease); asked before each phase
        and right before every mutating call."""

    def _config(self, rule_id: str) -> RuleConfig:
        rule = self.rules.get(rule_id)
        return rule.config if rule is not None else RuleConfig(enabled=False)

    def run(self, account_id: str, region: str, snapshot: Snapshot, now: datetime) -> ActionReport:
        report = ActionReport()
        if not self.may_act():
            return report
        with self._lock:
            self._resume(account_id, region, now, report)
            if self.policy.mode == "observe":
                return report
            findings = self.store.open_findings(account_id, region)
            candidates = self._candidates(account_id, region, snapshot, findings, now)
            self._cancel_stale(account_id, region, {f.id for f in findings})
            verdicts = decide(candidates, self.policy, now, started_this_cycle=0,
                              started_last_hour=self.audit.started_since(now - timedelta(hours=1)),
                              last_outcomes=self.audit.last_outcomes(self.policy.breaker_failures))
            for verdict in verdicts:
                intent = verdict.candidate.intent
                result = verdict.result
                if result == EXECUTE and breaker_open(self.audit.last_outcomes(self.policy.breaker_failures),
                                                      self.policy, now):
                    result = SKIPPED_BREAKER  # failures earlier in this phase opened the breaker
                if result == PLAN:
                    row = self.audit.record(intent, PLANNED, self.policy.mode, now)
                    if row is not None:
                        report.planned.append(row.as_dict())
                        report.results.append((intent.rule, intent.action, PLAN))
                elif result == EXECUTE:
                    row = self._start(intent, verdict.candidate.existing_status, now)
                    if row is not None:
                        if intent.parent_id is not None:  # the stop's chain ends in this terminate
                            self.audit.set_fields(intent.parent_id, follow_up=None)
                        self._carry_out(row, now, report)
                elif result.startswith("skipped") and (intent.key, result) not in self._held_back:
                    self._held_back.add((intent.key, result))  # counted once, not every cycle
                    report.results.append((intent.rule, intent.action, result))
                    if verdict.candidate.hazard is not None:
                        log.info("%s %s %s %s: %s (%s)", intent.rule, intent.action, region, intent.resource_id,
                                 result, verdict.candidate.hazard.reason)
        return report

    # -- intents ----------------------------------------------------------------------------------------------------

    def _start(self, intent: Intent, existing_status: str | None, now: datetime) -> ActionRow | None:
        """Commit the intent (write-ahead) and return its row; None if another process got there first."""
        if existing_status is None:
            return self.audit.record(intent, PENDING, self.policy.mode, now, approved_by=f"mode:{self.policy.mode}")
        row = self.audit.by_key(intent.key)
        fields = {"started_at": now, "mode": self.policy.mode}
        if existing_status == PLANNED:
            fields["approved_by"] = f"mode:{self.policy.mode}"
        if row is None or not self.audit.move(row.id, (existing_status,), PENDING, **fields):
            return None
        return self.audit.get(row.id)

    def _candidates(self, account_id: str, region: str, snapshot: Snapshot, findings: list[FindingRow],
                    now: datetime) -> list[Candidate]:
        candidates = []
        instances = {instance.id: instance for instance in snapshot.instances or ()}
        for finding in findings:
            config = self._config(finding.rule)
            if not config.enabled or config.action == "notify":
                continue
            facts = resource_facts(snapshot, finding.resource_type, finding.resource_id)
            if facts is None:
                continue
            rule = self.rules[finding.rule]
            action, follow_up = config.action, None
            if action == "terminate" and rule.stop_before_terminate:
                action, follow_up = "stop", "terminate"
            key = idempotency_key(account_id, region, action, finding.resource_id, f"finding:{finding.id}")
            params = dict(rule.action_params()) | {"key": key, "finding_id": finding.id, "owner": finding.owner,
                                                   "snapshot_timeout_seconds":
                                                       self.settings.snapshot_timeout.total_seconds()}
            intent = Intent(key=key, rule=finding.rule, action=action, account_id=account_id, region=region,
                            resource_id=finding.resource_id, resource_type=finding.resource_type,
                            owner=finding.owner, finding_id=finding.id, summary=finding.summary,
                            waste_hourly_usd=finding.waste_hourly_usd, params=params, follow_up=follow_up)
            candidates.append(Candidate(intent=intent, due_from=finding.first_seen, grace=config.grace,
                                        announced=finding.notified_at is not None,
                                        act_on_unmanaged=config.act_on_unmanaged, tags=facts[0],
                                        created_at=facts[1],
                                        hazard=self._hazard(instances, snapshot, action, finding.resource_type,
                                                            finding.resource_id, config)))
        candidates += self._terminations(account_id, region, snapshot)
        statuses = {row.key: row.status for row in self.audit.by_keys([c.intent.key for c in candidates])}
        return [Candidate(**{**c.__dict__, "existing_status": statuses.get(c.intent.key)}) for c in candidates]

    @staticmethod
    def _hazard(instances: Mapping[str, Instance], snapshot: Snapshot, action: str, resource_type: str,
                resource_id: str, config: RuleConfig) -> Hazard | None:
        """Why a rule's stop or terminate must leave the instance alone, from the scan's facts."""
        if action not in INSTANCE_ACTIONS or resource_type != "instance":
            return None
        instance = instances.get(resource_id)
        if instance is None:
            return None
        return stop_hazard(facts_of(instance, snapshot.instance_storage), config.act_on_instance_store)

    def _terminations(self, account_id: str, region: str, snapshot: Snapshot) -> list[Candidate]:
        """Terminates that follow a stop which has not been undone; a stop that was undone ends its chain."""
        if snapshot.instances is None:
            return []
        instances = {instance.id: instance for instance in snapshot.instances}
        candidates = []
        for stop in self.audit.awaiting_follow_up(account_id, region):
            config = self._config(stop.rule)
            if not config.enabled or config.action != stop.follow_up:
                continue
            instance = instances.get(stop.resource_id)
            undone = (instance is None or instance.state != "stopped"
                      or (instance.stopped_since is not None and stop.finished_at is not None
                          and instance.stopped_since > stop.finished_at + UNDONE_SLACK))
            if undone:
                state = instance.state if instance else "gone"
                self.audit.set_fields(stop.id, follow_up=None,
                                      detail={**stop.detail, "follow_up": f"not terminated: instance {state}"})
                continue
            key = idempotency_key(account_id, region, "terminate", stop.resource_id, f"after:{stop.id}")
            intent = Intent(key=key, rule=stop.rule, action="terminate", account_id=account_id, region=region,
                            resource_id=stop.resource_id, resource_type=stop.resource_type, owner=stop.owner,
                            finding_id=stop.finding_id, summary=f"stopped since {stop.finished_at:%Y-%m-%d %H:%M} "
                                                            f"UTC and not restarted — {stop.summary}",
                            waste_hourly_usd=stop.waste_hourly_usd, params={"after_stop": True, "key": key},
                            parent_id=stop.id)
            candidates.append(Candidate(intent=intent, due_from=stop.finished_at, grace=config.grace, announced=True,
                                        act_on_unmanaged=config.act_on_unmanaged, tags=instance.tags,
                                        created_at=instance.launch_time,
                                        hazard=self._hazard(instances, snapshot, "terminate", "instance",
                                                            instance.id, config)))
        return candidates

    def _cancel_stale(self, account_id: str, region: str, open_finding_ids: set[int]) -> None:
        """Planned or approved actions whose finding resolved (or whose stop was undone) are no longer due."""
        for row in self.audit.in_status((PLANNED, APPROVED), account_id, region):
            if row.finding_id is not None and row.parent_id is None and row.finding_id not in open_finding_ids:
                self.audit.move(row.id, (PLANNED, APPROVED), CANCELLED, error="the finding resolved")
            elif row.parent_id is not None:
                parent = self.audit.get(row.parent_id)
                if parent is None or parent.follow_up is None:
                    self.audit.move(row.id, (PLANNED, APPROVED), CANCELLED, error="the stop was undone")

    # -- execution --------------------------------------------------------------------------------------------------

    def _resume(self, account_id: str, region: str, now: datetime, report: ActionReport) -> None:
        """Finish intents a crash (or a pending snapshot) left without outcome, by looking at the resource first."""
        for row in self.audit.in_status(UNFINISHED, account_id, region):
            if row.action not in UP_FRONT:  # carried on by their own job (act_up_front), every few seconds
                self._carry_out(row, now, report, resumed=True)

    def act_up_front(self, intents: list[Intent], action: str, now: datetime) -> ActionReport:
        """Actions the user asked for up front (a registered cluster's keepalive expiry): due at once, in every mode.

        No mode, grace, age or cap gate — the owner chose the keepalive at launch — but the rest is as for any
        action: the account/region allow-lists when set, the row committed as ``pending`` before the first AWS call,
        the fresh look at the resource (protection tag, managed tag) and the outcome after. Unfinished rows of
        ``action`` (a crash, or an action waiting for instances to terminate) are carried on first.
        """
        report = ActionReport()
        if not self.may_act():
            return report
        with self._lock:
            for row in self.audit.in_status(UNFINISHED):
                if row.action == action:
                    self._carry_out(row, now, report, resumed=True)
            for intent in intents:
                blocked = self._not_allowed(intent)
                row = self.audit.record(intent, SKIPPED if blocked else PENDING, self.policy.mode, now,
                                        approved_by=f"sdk:{intent.owner}")
                if row is None:
                    continue  # recorded already (another process, or before a crash): carried on above
                if blocked:
                    self.audit.set_fields(row.id, finished_at=now, error=blocked)
                    report.results.append((intent.rule, intent.action, SKIPPED_ACCOUNT))
                    continue
                self._carry_out(row, now, report)
        return report

    def _not_allowed(self, intent: Intent | ActionRow) -> str | None:
        """Why the allow-lists forbid changing this account or region (only when they are set); None if they don't."""
        accounts, regions = self.settings.allowed_accounts, self.settings.allowed_regions
        if accounts and intent.account_id not in accounts:
            return f"account {intent.account_id} is not in allowed_accounts"
        if regions is not None and intent.region not in regions:
            return f"region {intent.region} is not in allowed_regions"
        return None

    def _carry_out(self, row: ActionRow, now: datetime, report: ActionReport, resumed: bool = False) -> None:
        executor = ALL_EXECUTORS[row.action]
        try:
            observed = executor.observe(self.aws, row.region, row.resource_id, row.params)
        except Exception as exc:  # cannot see the resource: leave the intent for the next cycle
            log.warning("action %d (%s %s): could not read the resource: %s", row.id, row.action, row.resource_id,
                        describe_aws_error(exc))
            return
        verdict = self._last_check(row, observed)
        if verdict is not None:
            status, reason, result = verdict
            self._finish(row, status, now, report, result=result, error=reason,
                         detail={"state": observed.state, "called": False, "resumed": resumed})
            return
        if row.action in UP_FRONT and not self.settings.enforce_keepalive:
            self._finish(row, SKIPPED, now, report, result="skipped-off",
                         error="not carried out: keepalive enforcement is off (enforce_keepalive = false)")
            return
        if resumed:
            refused = self._refused_on_resume(row)
            if refused is not None:
                self._finish(row, CANCELLED, now, report, result=CANCELLED, error=f"not carried out: {refused}",
                             detail={"called": False, "resumed": True})
                return
            if row.action not in UP_FRONT and breaker_open(self.audit.last_outcomes(self.policy.breaker_failures),
                                                           self.policy, now):
                if (row.key, SKIPPED_BREAKER) not in self._held_back:  # waits, as new actions do; counted once
                    self._held_back.add((row.key, SKIPPED_BREAKER))
                    report.results.append((row.rule, row.action, SKIPPED_BREAKER))
                return
        if not self.may_act():  # the lease ran out mid-phase: the process that holds it now finishes the row
            log.info("action %d (%s %s): not carried out here: this process no longer holds the lease", row.id,
                     row.action, row.resource_id)
            return
        try:
            outcome = executor.execute(self.aws, row.region, row.resource_id, row.params, row.detail,
                                       row.started_at or now, now)
        except Exception as exc:
            self._finish(row, FAILED, now, report, result=FAILED, error=describe_aws_error(exc),
                         detail={"called": True, "resumed": resumed})
            return
        detail = {**row.detail, **outcome.detail, "called": True, "resumed": resumed}
        if outcome.status == IN_PROGRESS:
            self.audit.move(row.id, UNFINISHED, IN_PROGRESS, detail=detail)
            return
        self._finish(row, outcome.status, now, report, result=outcome.status, error=outcome.error, detail=detail)

    def _refused_on_resume(self, row: ActionRow) -> str | None:
        """Why the gates of today's configuration forbid finishing an intent an earlier run started; None if
        they allow it. A resumed intent passes the gates a new one would (protection and scope are re-read from
        the resource in ``_last_check``); the breaker only makes it wait."""
        if row.action in UP_FRONT:  # the owner asked for it at launch: only the allow-lists apply, as at the start
            return self._not_allowed(row)
        if self.policy.mode == "observe":
            return "the daemon now runs in observe mode"
        if self.policy.mode == "dry-run" and row.approved_at is None:
            return "the daemon now runs in dry-run mode and no one approved this action"
        if row.account_id not in self.policy.allowed_accounts:
            return f"account {row.account_id} is not in allowed_accounts"
        if row.region not in self.policy.allowed_regions:
            return f"region {row.region} is not in allowed_regions"
        config = self._config(row.rule)
        if not config.enabled:
            return f"rule {row.rule} is disabled"
        configured = config.action
        rule = self.rules.get(row.rule)
        if configured == "terminate" and rule is not None and rule.stop_before_terminate:
            configured = row.action if row.action in ("stop", "terminate") else configured
        if row.action != configured:
            return f"rule {row.rule} no longer has the action {row.action} (its action is {config.action})"
        return None

    def _last_check(self, row: ActionRow, observed: Observed) -> tuple[str, str | None, str] | None:
        """(status, reason, result) when the fresh look at the resource settles the action without a call."""
        if observed.goal_reached:
            return DONE, None, DONE
        if not observed.exists:
            return SKIPPED, "the resource is gone", "skipped-gone"
        if observed.blocker:
            return SKIPPED, observed.blocker, "skipped-changed"
        if self.policy.has_tag(observed.tags, self.policy.protect_tag):
            return SKIPPED, "protected by its tag", SKIPPED_PROTECTED
        if observed.instance is not None and row.action in INSTANCE_ACTIONS and row.action not in UP_FRONT:
            hazard = stop_hazard(observed.instance, self._config(row.rule).act_on_instance_store)
            if hazard is not None:
                return SKIPPED, hazard.reason, hazard.result
        if (ALL_EXECUTORS[row.action].destructive and not self._config(row.rule).act_on_unmanaged
                and not self.policy.has_tag(observed.tags, self.policy.managed_tag)):
            return SKIPPED, "not launched by the SDK (no managed tag) and the rule does not opt in", SKIPPED_UNMANAGED
        return None

    def _finish(self, row: ActionRow, status: str, now: datetime, report: ActionReport, result: str,
                error: str | None = None, detail: Mapping | None = None) -> None:
        fields = {"finished_at": now, "error": error, "detail": {**row.detail, **(detail or {})}}
        if not self.audit.move(row.id, UNFINISHED, status, **fields):
            return
        finished = self.audit.get(row.id).as_dict()
        report.results.append((row.rule, row.action, result))
        if status == DONE:
            report.executed.append(finished)
        elif status == FAILED:
            report.failed.append(finished | {"source": f"action:{row.action}"})
        log.info("action %d %s %s %s: %s%s", row.id, row.action, row.region, row.resource_id, status,
                 f" ({error})" if error else "")

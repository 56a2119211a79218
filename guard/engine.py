"""One scan of one account region: inventory → rules → reconcile findings → record the scan.

The snapshot holds the union of what the enabled rules need; a failed collector leaves its part unknown and
the rules that need it are skipped, so nothing they found before is resolved by a failed fetch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from guard.actions.runner import ActionReport, Actuator
from guard.aws import Aws, describe_aws_error
from guard.clusters import ClusterRegistry
from guard.collectors import RESOURCE_COLLECTORS, collect_listings, collect_log_samples, collect_metrics
from guard.collectors.instances import collect_instance_storage
from guard.model import (
    SNAPSHOT_PARTS,
    Evaluation,
    Finding,
    LogSample,
    LogSampleRequest,
    MetricQuery,
    Series,
    Snapshot,
)
from guard.pricing import PriceCatalog, default_catalog
from guard.rule import Context, Registry, Rule
from guard.settings import Settings
from guard.stoppable import acts_on_instances, facts_of, stop_hazard
from guard.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
"""Called with (region, what is happening now) during a scan."""


@dataclass
class ScanReport:
    """What one scan did, for the CLI and the metrics."""

    region: str
    account_id: str
    status: str
    started_at: datetime
    duration_seconds: float
    api_calls: dict[str, int]
    errors: list[dict[str, str]]
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    snapshot: Snapshot | None = None
    opened: list[dict] = field(default_factory=list)
    """Findings this scan opened (as the API shows them)."""
    actions: ActionReport = field(default_factory=ActionReport)

    @property
    def findings(self) -> list[Finding]:
        return [finding for evaluation in self.evaluations.values() for finding in evaluation.findings]


def _refreshed(caches: dict[str, tuple[datetime, dict]], region: str, wanted: list, now: datetime, every: timedelta,
               fetch: Callable[[list], dict]) -> dict:
    """Values for the wanted keys: cached ones until the region's cache is ``every`` old, only the missing fetched.

    The cache keeps only what was wanted this time, so resources that went away do not pile up.
    """
    cached_at, cache = caches.get(region, (None, {}))
    if cached_at is None or now - cached_at >= every:
        cached_at, cache = now, {}
    missing = [key for key in dict.fromkeys(wanted) if key not in cache]
    if missing:
        cache = cache | fetch(missing)
    keys = set(wanted)
    kept = {key: value for key, value in cache.items() if key in keys}
    caches[region] = (cached_at, kept)
    return kept


class Scanner:
    """Runs scans with the enabled rules; safe to call for different regions from different threads."""

    def __init__(self, settings: Settings, registry: Registry, aws: Aws, store: Store,
                 prices: PriceCatalog | None = None,
                 on_scan: Callable[[ScanReport], None] | None = None):
        self.settings = settings
        self.aws = aws
        self.store = store
        self.prices = prices or default_catalog()
        self.on_scan = on_scan
        self._metric_cache: dict[str, tuple[datetime, dict[MetricQuery, Series]]] = {}
        self._sample_cache: dict[str, tuple[datetime, dict[LogSampleRequest, LogSample]]] = {}
        self._storage_cache: dict[tuple[str, str], bool | None] = {}
        """(region, instance type) → has instance store (None: AWS did not describe it); types do not change."""
        self.rules: list[Rule] = [
            registry.rules[rule_id](settings.rule_configs[rule_id]) for rule_id in settings.enabled_rules()
        ]
        self.actuator = Actuator(settings, self.rules, aws, store)
        self.acts: Callable[[], bool] = lambda: True
        """Whether this process writes what its scans find and acts (guard.lease): a standby only scans."""
        self.clusters = ClusterRegistry(store)
        protect_key, protect_value = settings.protect_tag_pair
        self.context = Context(prices=self.prices, owner_tag=settings.owner_tag,
                               protect_tag=protect_key, protect_value=protect_value)

    def scan(self, region: str, progress: Progress | None = None) -> ScanReport:
        progress = progress or (lambda _region, _text: None)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        calls_before = self.aws.counter.by_operation(region)
        errors: list[dict[str, str]] = []
        try:
            progress(region, "identifying the account")
            account_id = self.aws.account_id(region)
        except Exception as exc:  # no credentials, no network: the whole scan failed
            errors.append({"source": "account", "error": describe_aws_error(exc)})
            return self._finish(region, "unknown", started, clock, calls_before, errors, {}, [], None)

        broken: dict[str, str] = {}
        opened: list[dict] = []
        writes = self.acts()
        snapshot = self._snapshot(account_id, region, started, errors, broken, progress)
        evaluations: dict[str, Evaluation] = {}
        skipped: list[str] = []
        for rule in self.rules:
            if rule.id in broken:
                skipped.append(rule.id)
                errors.append({"source": f"rule:{rule.id}", "error": broken[rule.id]})
                continue
            missing = sorted(part for part in rule.needs if not snapshot.known(part))
            if missing:
                skipped.append(rule.id)
                errors.append({"source": f"rule:{rule.id}", "error": f"skipped: {', '.join(missing)} unknown"})
                continue
            try:
                evaluation = rule.evaluate(snapshot, self.context)
            except Exception as exc:  # a broken rule must not hide the others
                log.exception("rule %s failed in %s", rule.id, region)
                skipped.append(rule.id)
                errors.append({"source": f"rule:{rule.id}", "error": f"{type(exc).__name__}: {exc}"})
                continue
            billing = rule.billing or rule.id
            evaluation = replace(evaluation, findings=tuple(replace(f, billing=billing) for f in evaluation.findings))
            evaluation = self._say_why_not_acted_on(rule, snapshot, evaluation)
            evaluations[rule.id] = evaluation
            if writes:
                reconciled = self.store.reconcile(account_id, region, rule.id, evaluation.findings,
                                                  evaluation.undetermined, now=started)
                opened.extend(reconciled.new)
        progress(region, "acting" if self.settings.mode != "observe" else "done")
        try:
            actions = self.actuator.run(account_id, region, snapshot, datetime.now(timezone.utc))
        except Exception as exc:  # the store or AWS failed mid-phase: intents left pending are resumed next time
            log.exception("action phase failed in %s", region)
            errors.append({"source": "actions", "error": describe_aws_error(exc)})
            actions = ActionReport()
        progress(region, "done")
        return self._finish(region, account_id, started, clock, calls_before, errors, evaluations, skipped, snapshot,
                            opened, actions)

    def _snapshot(self, account_id: str, region: str, now: datetime, errors: list[dict[str, str]],
                  broken: dict[str, str], progress: Progress) -> Snapshot:
        """Resources first, then what the rules derive from them: metric listings, series, log samples.

        The registered clusters' usage comes from the daemon's own database (the SDK's heartbeats), not from AWS.
        """
        needs = set().union(*(rule.needs | rule.uses for rule in self.rules)) if self.rules else set()
        parts: dict[str, object] = {}
        failures: dict[str, str] = {}

        def fetch(part: str, collect) -> None:
            try:
                parts[part] = collect()
            except Exception as exc:
                failures[part] = describe_aws_error(exc)

        for part, collector in RESOURCE_COLLECTORS.items():
            if part in needs:
                progress(region, f"listing {part.replace('_', ' ')}")
                fetch(part, lambda collector=collector: collector(self.aws, region))

        def requests(part: str, ask: Callable[[Rule, Snapshot], Iterable]) -> list:
            """What the rules that need or use ``part`` (and whose needed inputs so far are known) ask for; a rule that
            raises while asking is marked broken and skipped, never the whole scan."""
            snapshot = self._partial(account_id, region, now, parts)
            asked = []
            for rule in self.rules:
                if rule.id in broken or part not in rule.needs | rule.uses or not all(
                        snapshot.known(p) for p in rule.needs if p in parts or p in failures):
                    continue
                try:
                    asked.extend(ask(rule, snapshot))
                except Exception as exc:
                    log.exception("rule %s failed while asking for %s in %s", rule.id, part, region)
                    broken[rule.id] = f"{type(exc).__name__} while asking for {part}: {exc}"
            return asked

        acting = [rule for rule in self.rules if acts_on_instances(rule)]
        if acting and self.settings.mode != "observe" and parts.get("instances") is not None:
            types = {instance.instance_type for instance in parts["instances"]}  # type: ignore[attr-defined]
            progress(region, "reading instance types")
            fetch("instance_storage", lambda: MappingProxyType(self._instance_storage(region, types)))
        if "clusters" in needs:
            progress(region, "reading registered clusters' usage")
            fetch("clusters", lambda: self.clusters.usage(now))
        if "metric_listings" in needs:
            wanted = requests("metric_listings", lambda rule, _: rule.listings)
            progress(region, "listing available metrics")
            fetch("metric_listings",
                  lambda: MappingProxyType(collect_listings(self.aws, region, wanted)))
        if "metrics" in needs:
            queries = requests("metrics", lambda rule, snapshot: rule.metric_queries(snapshot, self.context))
            total, done = len(set(queries)), 0

            def advance(count: int) -> None:
                nonlocal done
                done += count
                progress(region, f"fetching metrics {done}/{total}")

            progress(region, f"fetching metrics 0/{total}")
            fetch("metrics", lambda: MappingProxyType(self._metrics(region, queries, now, advance)))
        if "log_samples" in needs:
            asked = requests("log_samples", lambda rule, snapshot: rule.log_sample_requests(snapshot, self.context))
            progress(region, f"sampling {len(set(asked))} log groups")
            fetch("log_samples", lambda: MappingProxyType(self._log_samples(region, asked, now)))
        for part, error in failures.items():
            errors.append({"source": f"collector:{part}", "error": error})
        return Snapshot(account_id=account_id, region=region, taken_at=now,
                        failures=MappingProxyType(failures), **parts)

    def _instance_storage(self, region: str, types: set[str]) -> dict[str, bool]:
        """Whether each type has instance-store volumes: read once per type and region for the process's life."""
        missing = sorted(t for t in types if (region, t) not in self._storage_cache)
        if missing:
            found = collect_instance_storage(self.aws, region, missing)
            self._storage_cache.update({(region, t): found.get(t) for t in missing})
        return {t: self._storage_cache[(region, t)] for t in types if self._storage_cache[(region, t)] is not None}

    def _say_why_not_acted_on(self, rule: Rule, snapshot: Snapshot, evaluation: Evaluation) -> Evaluation:
        """A finding whose instance a rule's stop or terminate must leave alone says so, and why, in its evidence."""
        if not acts_on_instances(rule) or self.settings.mode == "observe" or snapshot.instances is None:
            return evaluation
        instances = {instance.id: instance for instance in snapshot.instances}
        findings = []
        for finding in evaluation.findings:
            instance = instances.get(finding.resource_id)
            hazard = stop_hazard(facts_of(instance, snapshot.instance_storage),
                                 act_on_instance_store=rule.config.act_on_instance_store) if instance else None
            if hazard is not None:
                finding = replace(finding, evidence={**finding.evidence, "not_acted_on": {
                    "action": rule.config.action, "result": hazard.result, "reason": hazard.reason}})
            findings.append(finding)
        return replace(evaluation, findings=tuple(findings))

    def _log_samples(self, region: str, requests: list[LogSampleRequest], now: datetime) -> dict[str, LogSample]:
        """Log samples, read again only every ``metrics_refresh`` per log group (each read is several calls)."""
        fresh = _refreshed(self._sample_cache, region, requests, now, self.settings.metrics_refresh,
                           lambda missing: collect_log_samples(self.aws, region, missing, now))
        return {request.log_group: sample for request, sample in fresh.items()}

    def _metrics(self, region: str, queries: list[MetricQuery], now: datetime,
                 advance: Callable[[int], None]) -> dict[MetricQuery, Series]:
        """Series for the queries, fetched again only every ``metrics_refresh`` (GetMetricData bills per metric).

        Between refreshes only queries not seen before (a new instance, say) are fetched.
        """
        return _refreshed(self._metric_cache, region, queries, now, self.settings.metrics_refresh,
                          lambda missing: collect_metrics(self.aws, region, missing, now, advance))

    @staticmethod
    def _partial(account_id: str, region: str, now: datetime, parts: dict[str, object]) -> Snapshot:
        return Snapshot(account_id=account_id, region=region, taken_at=now, **parts)

    def _running_cost(self, snapshot: Snapshot | None) -> list[dict[str, object]] | None:
        """Running instances by (owner, type) with their $/hour; None when the instances are unknown."""
        if snapshot is None or snapshot.instances is None:
            return None
        groups: dict[tuple[str, str], list[float | None]] = defaultdict(list)
        for instance in snapshot.instances:
            if instance.state == "running":
                owner = self.context.owner_of(instance.tags)
                groups[(owner, instance.instance_type)].append(
                    self.prices.hourly_usd(instance.instance_type, snapshot.region))
        return [
            {"owner": owner, "instance_type": instance_type, "count": len(prices),
             "usd": round(sum(p for p in prices if p is not None), 6),
             "price_unknown": sum(1 for p in prices if p is None)}
            for (owner, instance_type), prices in sorted(groups.items())
        ]

    @staticmethod
    def _collectors(snapshot: Snapshot | None) -> dict[str, bool]:
        if snapshot is None:
            return {}
        ran = {part for part in SNAPSHOT_PARTS if snapshot.known(part)} | set(snapshot.failures)
        return {part: part not in snapshot.failures for part in sorted(ran)}

    def _finish(self, region: str, account_id: str, started: datetime, clock: float,
                calls_before: dict[str, int], errors: list[dict[str, str]], evaluations: dict[str, Evaluation],
                skipped: list[str], snapshot: Snapshot | None, opened: list[dict] | None = None,
                actions: ActionReport | None = None) -> ScanReport:
        duration = time.perf_counter() - clock
        calls_after = self.aws.counter.by_operation(region)
        api_calls = {op: n - calls_before.get(op, 0) for op, n in calls_after.items() if n - calls_before.get(op, 0)}
        if snapshot is None:
            status = "failed"
        elif errors:
            status = "partial" if evaluations else "failed"
        else:
            status = "ok"
        findings_open = sum(len(e.findings) for e in evaluations.values())
        if self.acts():
            self.store.add_scan(
                account_id=account_id, region=region, started_at=started,
                finished_at=datetime.now(timezone.utc), status=status, api_calls=sum(api_calls.values()),
                api_calls_by_operation=api_calls, errors=errors, rules_evaluated=sorted(evaluations),
                rules_skipped=sorted(skipped), findings_open=findings_open,
                running_hourly_usd=self._running_cost(snapshot), collectors=self._collectors(snapshot),
            )
        report = ScanReport(region=region, account_id=account_id, status=status, started_at=started,
                            duration_seconds=duration, api_calls=api_calls, errors=errors,
                            evaluations=evaluations, skipped=skipped, snapshot=snapshot, opened=opened or [],
                            actions=actions or ActionReport())
        if self.on_scan:
            self.on_scan(report)
        return report

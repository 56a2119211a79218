"""Prometheus exposition: findings, waste and spend rendered from the store at scrape time, plus scan health.

Labels are bounded (rule, region, owner, severity, instance_type, collector, service, operation) — never a
resource id, with one exception: the per-cluster series (``guard_cluster_hourly_usd``,
``guard_cluster_expiry_timestamp_seconds``, ``guard_cluster_last_heartbeat_timestamp_seconds``) carry the cluster id
of each registered cluster not yet closed or terminated (bounded by the clusters alive at once; a closed or
terminated cluster's series end). Money is in USD; rates per hour carry ``_hourly_usd``.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from guard.actions.runner import ActionReport
from guard.aws import CallCounter
from guard.clusters import EXPIRED, RUNNING, TERMINATING, ClusterRegistry
from guard.engine import ScanReport
from guard.store import Store

SCAN_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _StoreCollector(Collector):
    """Reads the store on each scrape, so a restarted daemon exports what it knew before."""

    def __init__(self, store: Store, calls: CallCounter, rules: list[str], regions: list[str],
                 clusters: ClusterRegistry | None = None):
        self.store = store
        self.calls = calls
        self.rules = rules
        self.regions = regions
        self.clusters = clusters

    def collect(self):
        findings = GaugeMetricFamily("guard_findings", "Open findings.", labels=["rule", "severity", "region"])
        waste = GaugeMetricFamily("guard_waste_hourly_usd", "Waste of open findings with a known price, USD per hour.",
                                  labels=["rule", "region", "owner"])
        unknown = GaugeMetricFamily("guard_findings_price_unknown",
                                    "Open findings whose resource has no price in the catalog.",
                                    labels=["rule", "region"])
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        usd: dict[tuple[str, str, str], float] = defaultdict(float)
        unpriced: dict[tuple[str, str], int] = defaultdict(int)
        for rule in self.rules:
            for region in self.regions:
                unpriced[(rule, region)] = 0
        for rule, region, owner, severity, count, hourly, price_unknown in self.store.open_summary():
            counts[(rule, severity, region)] += count
            usd[(rule, region, owner)] += hourly
            if severity != "info":  # informational findings are not waste: no price to know
                unpriced[(rule, region)] += price_unknown
        for labels, value in sorted(counts.items()):
            findings.add_metric(list(labels), value)
        for labels, value in sorted(usd.items()):
            waste.add_metric(list(labels), value)
        for labels, value in sorted(unpriced.items()):
            unknown.add_metric(list(labels), value)
        unique = GaugeMetricFamily("guard_waste_unique_hourly_usd",
                                   "Waste of open findings, each resource counted once across rules, USD per hour.",
                                   labels=["region", "owner"])
        per_owner: dict[tuple[str, str], float] = defaultdict(float)
        for region, owner, _resource, hourly in self.store.open_resource_waste():
            per_owner[(region, owner)] += hourly
        for labels, value in sorted(per_owner.items()):
            unique.add_metric(list(labels), value)
        yield findings
        yield waste
        yield unknown
        yield unique
        yield from self._scan_health()
        api = CounterMetricFamily("guard_aws_api_calls", "AWS API requests sent, retries included.",
                                  labels=["region", "service", "operation"])
        for (region, service, operation), count in sorted(self.calls.counts().items()):
            api.add_metric([region, service, operation], count)
        yield api
        if self.clusters is not None:
            yield from self._clusters()

    def _clusters(self):
        states = GaugeMetricFamily("guard_clusters", "Clusters the SDK registered, by state.", labels=["state"])
        for state, count in self.clusters.count_by_state().items():
            states.add_metric([state], count)
        cost = GaugeMetricFamily("guard_cluster_hourly_usd",
                                 "Estimated cost of each running registered cluster, USD per hour.",
                                 labels=["owner", "cluster"])
        for owner, cluster_id, hourly in self.clusters.running_costs():
            cost.add_metric([owner, cluster_id], hourly)
        beats = CounterMetricFamily("guard_cluster_heartbeats", "Heartbeats received from registered clusters.",
                                    labels=["owner"])
        for owner, count in sorted(self.clusters.heartbeats_by_owner().items()):
            beats.add_metric([owner], count)
        expiry = GaugeMetricFamily(
            "guard_cluster_expiry_timestamp_seconds",
            "When each registered cluster not yet closed or terminated reaches (or reached) its limit: keepalive, "
            "idle timeout or max lifetime, as the limit label says (Unix time).",
            labels=["owner", "cluster", "state", "limit"])
        heartbeat = GaugeMetricFamily("guard_cluster_last_heartbeat_timestamp_seconds",
                                      "Last heartbeat of each registered cluster not yet closed or terminated "
                                      "(Unix time).", labels=["owner", "cluster"])
        for row in sorted(self.clusters.clusters(states=(RUNNING, EXPIRED, TERMINATING)),
                          key=lambda row: (row.owner, row.cluster_id)):
            deadline, limit = row.deadline()
            expiry.add_metric([row.owner, row.cluster_id, row.state, limit], deadline.timestamp())
            heartbeat.add_metric([row.owner, row.cluster_id], row.last_heartbeat.timestamp())
        yield from (states, cost, beats, expiry, heartbeat)

    def _scan_health(self):
        running = GaugeMetricFamily("guard_running_hourly_usd", "What running instances cost now, USD per hour.",
                                    labels=["region", "owner", "instance_type"])
        instances = GaugeMetricFamily("guard_running_instances", "Running instances.",
                                      labels=["region", "owner", "instance_type"])
        last_success = GaugeMetricFamily("guard_last_scan_success_timestamp_seconds",
                                         "End of the last fully successful scan (Unix time).", labels=["region"])
        last_scan = GaugeMetricFamily("guard_last_scan_timestamp_seconds", "End of the last scan (Unix time).",
                                      labels=["region", "status"])
        collector_ok = GaugeMetricFamily("guard_scan_collector_success",
                                         "Whether a collector succeeded in the last scan (1) or not (0).",
                                         labels=["collector", "region"])
        rule_ok = GaugeMetricFamily("guard_scan_rule_success",
                                    "Whether a rule was evaluated in the last scan (1) or skipped/failed (0).",
                                    labels=["rule", "region"])
        running_unpriced = GaugeMetricFamily("guard_running_price_unknown_instances",
                                             "Running instances whose type has no price in the catalog.",
                                             labels=["region", "owner", "instance_type"])
        latest = self.store.latest_scans()
        for region, scan in sorted(latest.ok.items()):
            last_success.add_metric([region], scan.finished_at.timestamp())
        for region, scan in sorted(latest.inventory.items()):
            for row in scan.running_hourly_usd:
                labels = [region, row["owner"], row["instance_type"]]
                instances.add_metric(labels, row["count"])
                if row["price_unknown"]:
                    running_unpriced.add_metric(labels, row["price_unknown"])
                if row["price_unknown"] < row["count"]:
                    running.add_metric(labels, row["usd"])
        for region, scan in sorted(latest.newest.items()):
            last_scan.add_metric([region, scan.status], scan.finished_at.timestamp())
            for collector, succeeded in sorted((scan.collectors or {}).items()):
                collector_ok.add_metric([collector, region], 1 if succeeded else 0)
            for rule in self.rules:
                rule_ok.add_metric([rule, region], 1 if rule in scan.rules_evaluated else 0)
        yield from (running, instances, running_unpriced, last_success, last_scan, collector_ok, rule_ok)


class DaemonMetrics:
    """The daemon's own registry (never the global one) and the scan observer that feeds it."""

    def __init__(self, store: Store, calls: CallCounter, rules: list[str], regions: list[str],
                 clusters: ClusterRegistry | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store, calls, rules, regions, clusters))
        self.scan_duration = Histogram("guard_scan_duration_seconds", "Wall time of one region scan.",
                                       labelnames=["region"], buckets=SCAN_DURATION_BUCKETS, registry=self.registry)
        self.scan_errors = Counter("guard_scan_errors", "Errors met while scanning, by source.",
                                   labelnames=["region", "source"], registry=self.registry)
        self.scans = Counter("guard_scans", "Scans run, by result.", labelnames=["region", "status"],
                             registry=self.registry)
        self.actions = Counter("guard_actions", "Action decisions and outcomes: done, would-do, failed, skipped-….",
                               labelnames=["rule", "action", "result"], registry=self.registry)
        self.actor = Gauge("guard_actor", "1 while this process holds its database's lease and acts; 0 on standby "
                                          "(it scans and serves, another process acts).", registry=self.registry)

    def observe(self, report: ScanReport) -> None:
        self.scan_duration.labels(report.region).observe(report.duration_seconds)
        self.scans.labels(report.region, report.status).inc()
        for error in report.errors:
            self.scan_errors.labels(report.region, error["source"]).inc()
        self.observe_actions(report.actions)

    def observe_actions(self, report: ActionReport) -> None:
        for rule, action, result in report.results:
            self.actions.labels(rule, action, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

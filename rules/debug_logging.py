"""The ``debug-logging`` rule, and the log-level classifier it samples messages with."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from pydantic import Field, model_validator

from guard.durations import Duration, Period, format_duration
from guard.model import (
    CLUSTER_TAG,
    ClusterUsage,
    Evaluation,
    Finding,
    LogGroup,
    LogSample,
    LogSampleRequest,
    MetricQuery,
    Severity,
    Snapshot,
)
from guard.pricing import GB, HOURS_PER_MONTH, logs_ingest_usd_per_gb
from guard.rule import Context, Rule, WindowedConfig

EVENT_OVERHEAD_BYTES = 26
"""CloudWatch Logs bills each event as its UTF-8 message plus 26 bytes."""

DEBUG_LEVELS = frozenset({"debug", "trace"})
"""Levels counted as DEBUG: TRACE is even more verbose and just as avoidable."""
MIN_REPORTED_SECONDS = 60
"""Heartbeat reports covering less than this (a cluster that just started) are too short to price a rate from."""
_KNOWN_LEVELS = DEBUG_LEVELS | {"info", "notice", "warn", "warning", "error", "err", "critical", "fatal", "panic",
                                "severe", "alert", "emerg"}
_LEVEL_KEYS = ("level", "levelname", "log.level", "severity", "loglevel", "lvl")
"""JSON keys that name an event's level (structlog/zap/logrus, python-json-logger, ECS, GCP…)."""
_NUMERIC_LEVELS = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}
"""pino's and bunyan's numeric ``level``."""
_UPPER_WORDS = "|".join(sorted((level.upper() for level in _KNOWN_LEVELS), key=len, reverse=True))
_PLAIN_LEVEL = re.compile(
    # level=debug, lvl: info, "level": "debug" (a JSON line that did not parse) — any case
    r"(?i:\b(?:level|levelname|lvl|severity|loglevel)[\"']?\s*[=:]\s*[\"']?(?P<kv>[a-z]+))"
    # [debug], <DEBUG>, (trace) — any case
    r"|(?i:[\[<(]\s*(?P<bracket>[a-z]+)\s*[\])>])"
    # a bare upper-case level word: "… - distributed.worker - DEBUG - …", "DEBUG:root:…"
    rf"|\b(?P<word>{_UPPER_WORDS})\b"
)


def log_level(message: str) -> str | None:
    """The level of one log message, lower-cased ("debug", "info", …), or None when it names none.

    A JSON object is read by its level key (``level``, also pino's numbers, ``levelname``, ``severity``…); other
    lines (and JSON without a level key, such as ``{"log": "…"}`` wrappers) by the first level they name:
    ``level=debug``, ``[debug]`` or a bare upper-case ``DEBUG`` — so "INFO starting debug server" is INFO.
    """
    text = message.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            lowered = {str(key).lower(): value for key, value in parsed.items()}
            numeric = lowered.get("level")
            if isinstance(numeric, int) and numeric in _NUMERIC_LEVELS:
                return _NUMERIC_LEVELS[numeric]
            for key in _LEVEL_KEYS:
                value = lowered.get(key)
                if isinstance(value, str) and value.strip().lower() in _KNOWN_LEVELS:
                    return value.strip().lower()
    for match in _PLAIN_LEVEL.finditer(text):
        level = (match.group("kv") or match.group("bracket") or match.group("word")).lower()
        if level in _KNOWN_LEVELS:
            return level
    return None


def is_debug(message: str) -> bool:
    """Whether a message is at DEBUG or TRACE level; messages naming no level count as not DEBUG."""
    return log_level(message) in DEBUG_LEVELS


def billed_bytes(message: str) -> int:
    return len(message.encode()) + EVENT_OVERHEAD_BYTES


@dataclass(frozen=True)
class DebugShare:
    """How much of a sample is DEBUG, by billed bytes (what ingestion costs) and by events."""

    share: float
    debug_events: int
    events: int


def debug_share(messages: Sequence[str]) -> DebugShare:
    """The share of billed bytes at DEBUG/TRACE level in a non-empty sample."""
    total = debug = events = 0
    for message in messages:
        size = billed_bytes(message)
        total += size
        if is_debug(message):
            debug += size
            events += 1
    return DebugShare(share=debug / total, debug_events=events, events=len(messages))


class DebugLoggingConfig(WindowedConfig):
    window: Duration = Field(timedelta(hours=1), description="ingestion is averaged, and events sampled, over this")
    period: Period = Field(timedelta(minutes=5), description="CloudWatch period of the IncomingBytes sums")
    min_hourly_usd: float = Field(0.50, ge=0, description="log groups ingesting at least this $/hour at the $0.50/GB "
                                  "list price (1 GB/hour) are sampled")
    debug_share_min: float = Field(0.5, gt=0, le=1, description="share of ingested bytes at DEBUG/TRACE from which "
                                   "a sampled log group is a finding")
    max_groups_sampled: int = Field(20, ge=1, description="at most this many log groups, costliest first, are "
                                    "sampled per scan and region")
    sample_max_events: int = Field(2000, ge=1, description="events read per sampled log group")
    sample_max_bytes: int = Field(1_000_000, ge=1, description="message bytes read per sampled log group")
    max_stream_pages: int = Field(20, ge=1, description="pages of 50 streams read to count active streams")
    high_streams: int = Field(100, ge=1, description="active streams (≈ nodes) from which a finding is high severity")
    medium_streams: int = Field(10, ge=1, description="active streams from which a finding is medium severity")

    @model_validator(mode="after")
    def _ordered_streams(self) -> DebugLoggingConfig:
        if self.medium_streams > self.high_streams:
            raise ValueError("medium_streams must not exceed high_streams")
        return self


@dataclass(frozen=True)
class _Ingestion:
    group: LogGroup
    bytes_per_hour: float


class DebugLogging(Rule):
    """Log groups whose ingestion is expensive and mostly DEBUG: a cluster left at a verbose log level.

    What it detects
        A log group whose `AWS/Logs` `IncomingBytes` over the `window` cost at least `min_hourly_usd`, and whose
        sampled recent events (FilterLogEvents, at most `sample_max_events` events and `sample_max_bytes` bytes;
        the `max_groups_sampled` costliest groups only) are at least `debug_share_min` DEBUG or TRACE by billed
        bytes. Levels are read from plain text (`DEBUG`, `[debug]`, `level=debug`) and JSON (`"level": "debug"`,
        `"levelname": "DEBUG"`). Severity grows with the streams that wrote in the window (≈ nodes). A cluster
        the SDK launched is judged the same way on the bytes by level its heartbeats report, priced as CloudWatch
        Logs ingestion, unless a log group tagged `vmguard:cluster` with its id was already found.
    Why it costs money
        CloudWatch Logs bills $0.50 per GB ingested: every node of a cluster at DEBUG multiplies it — one team's
        1,000-node Dask cluster at DEBUG cost about $15,000 before anyone looked.
    Example
        400 Dask workers with `distributed` at DEBUG ingest 71 GB an hour ($35.50/hour); 87% of those bytes are
        DEBUG lines: $30.89/hour, $22,550 a month.
    Fix
        Set the log level to INFO (Dask: `DASK_LOGGING__DISTRIBUTED=info`, or `logging: distributed: info` in the
        Dask config); keep DEBUG on one node while debugging, or send verbose logs to the Infrequent Access class.
    """

    id = "debug-logging"
    resource_type = "log-group"
    needs = frozenset({"log_groups", "metrics", "log_samples"})
    uses = frozenset({"clusters"})
    inputs = ("CloudWatch Logs groups; CloudWatch AWS/Logs IncomingBytes (Sum) per log group; a bounded sample of "
              "recent events and the count of active streams of the expensive ones; log bytes by level from "
              "registered clusters' heartbeats, when they report them")
    waste_formula = "ingested GB/hour × $0.50/GB × the share of ingested bytes at DEBUG/TRACE level"
    suggested_action = "set-log-level"
    iam_permissions = ("logs:DescribeLogGroups", "tag:GetResources", "cloudwatch:GetMetricData",
                       "logs:FilterLogEvents", "logs:DescribeLogStreams")
    Config = DebugLoggingConfig
    config: DebugLoggingConfig

    def _query(self, group: LogGroup) -> MetricQuery:
        return MetricQuery(namespace="AWS/Logs", metric="IncomingBytes", dimensions=(("LogGroupName", group.name),),
                           stat="Sum", period_seconds=int(self.config.period.total_seconds()),
                           window_seconds=int(self.config.window.total_seconds()))

    def metric_queries(self, snapshot: Snapshot, context: Context) -> Iterable[MetricQuery]:
        for group in snapshot.log_groups or ():
            if not context.is_protected(group.tags):
                yield self._query(group)

    def _expensive(self, snapshot: Snapshot, context: Context) -> list[_Ingestion]:
        """Unprotected log groups ingesting at least ``min_hourly_usd`` at the list price, costliest first.

        CloudWatch reports IncomingBytes only for periods with data, so the window's sum over its length is the
        rate; a group with no datapoints ingested nothing.
        """
        window_hours = self.config.window.total_seconds() / 3600
        expensive = []
        for group in snapshot.log_groups or ():
            if context.is_protected(group.tags):
                continue
            bytes_per_hour = sum(snapshot.series(self._query(group)).values) / window_hours
            usd_per_gb = logs_ingest_usd_per_gb(group.log_group_class)
            if bytes_per_hour > 0 and bytes_per_hour / GB * usd_per_gb >= self.config.min_hourly_usd:
                expensive.append(_Ingestion(group, bytes_per_hour))
        return sorted(expensive, key=lambda ingestion: (-ingestion.bytes_per_hour, ingestion.group.name))

    def log_sample_requests(self, snapshot: Snapshot, context: Context) -> Iterable[LogSampleRequest]:
        if snapshot.metrics is None:
            return
        for ingestion in self._expensive(snapshot, context)[:self.config.max_groups_sampled]:
            yield LogSampleRequest(log_group=ingestion.group.name,
                                   window_seconds=int(self.config.window.total_seconds()),
                                   max_events=self.config.sample_max_events, max_bytes=self.config.sample_max_bytes,
                                   max_stream_pages=self.config.max_stream_pages)

    def evaluate(self, snapshot: Snapshot, context: Context) -> Evaluation:
        expensive = self._expensive(snapshot, context)
        sampled, beyond_cap = expensive[:self.config.max_groups_sampled], expensive[self.config.max_groups_sampled:]
        # expensive groups left unsampled this cycle, or sampled with nothing in the window, cannot be judged
        undetermined = {ingestion.group.name for ingestion in beyond_cap}
        samples = snapshot.log_samples or {}
        findings = []
        for ingestion in sampled:
            sample = samples.get(ingestion.group.name)
            if sample is None or not sample.messages:
                undetermined.add(ingestion.group.name)
                continue
            share = debug_share(sample.messages)
            if share.share >= self.config.debug_share_min:
                findings.append(self._finding(ingestion, sample, share, snapshot.region, context))
        measured = {group.tags[CLUSTER_TAG] for group in snapshot.log_groups or () if CLUSTER_TAG in group.tags
                    and any(finding.resource_id == group.name for finding in findings)}
        for cluster in snapshot.clusters or ():
            if cluster.region != snapshot.region or cluster.cluster_id in measured or context.is_protected(
                    cluster.tags):
                continue
            if not self._judgeable(cluster, snapshot):
                undetermined.add(cluster.cluster_id)
                continue
            finding = self._judge_cluster(cluster, snapshot, context)
            if finding is not None:
                findings.append(finding)
        return Evaluation(findings=tuple(findings), undetermined=frozenset(undetermined))

    def _logged(self, cluster: ClusterUsage, snapshot: Snapshot) -> tuple[dict[str, int], float]:
        """Bytes logged by level that the cluster's heartbeats reported in the window, and the seconds covered."""
        reports, covered = cluster.reported_since(snapshot.taken_at - self.config.window, snapshot.taken_at)
        by_level: dict[str, int] = {}
        for report in reports:
            for level, size in report.log_bytes_by_level.items():
                by_level[level.lower()] = by_level.get(level.lower(), 0) + size
        return by_level, covered

    def _judgeable(self, cluster: ClusterUsage, snapshot: Snapshot) -> bool:
        """False while a cluster's log reports cover too little time to price a rate (an open finding stays)."""
        by_level, covered = self._logged(cluster, snapshot)
        return not any(by_level.values()) or covered >= MIN_REPORTED_SECONDS

    def _judge_cluster(self, cluster: ClusterUsage, snapshot: Snapshot, context: Context) -> Finding | None:
        """A finding from the log volume a cluster's heartbeats reported, priced as CloudWatch Logs ingestion."""
        by_level, covered = self._logged(cluster, snapshot)
        total = sum(by_level.values())
        if total == 0:
            return None
        debug = sum(size for level, size in by_level.items() if level in DEBUG_LEVELS)
        share = debug / total
        bytes_per_hour = total * 3600 / covered
        usd_per_gb = logs_ingest_usd_per_gb("STANDARD") if snapshot.region in context.prices.regions else None
        ingestion = bytes_per_hour / GB * usd_per_gb if usd_per_gb is not None else None
        if share < self.config.debug_share_min or (ingestion is not None and ingestion < self.config.min_hourly_usd):
            return None
        waste = ingestion * share if ingestion is not None else None
        nodes = len(cluster.instance_ids)
        price_text = (f"${waste:.2f}/hour if CloudWatch Logs ingests it" if waste is not None else "price unknown")
        return Finding(
            rule=self.id,
            resource_id=cluster.cluster_id,
            resource_type="cluster",
            region=snapshot.region,
            owner=cluster.owner,
            severity=self._severity(nodes),
            waste_hourly_usd=waste,
            summary=(f"cluster {cluster.cluster_id} logs {bytes_per_hour / GB:.2f} GB/hour, {share:.0%} DEBUG, "
                     f"across {nodes} VMs: {price_text}"),
            suggested_action=self.suggested_action,
            evidence={
                "source": "cluster-heartbeats",
                "debug_share": round(share, 4),
                "log_bytes_by_level": by_level,
                "reported_over": format_duration(timedelta(seconds=round(covered))),
                "nodes": nodes,
                "logged_gb_per_hour": round(bytes_per_hour / GB, 6),
                "ingestion_usd_per_hour": ingestion,
                "usd_per_gb": usd_per_gb,
                "price_basis": "CloudWatch Logs Standard ingestion, where a cluster's logs are usually shipped",
                "window": format_duration(self.config.window),
                "monthly_usd": round(waste * HOURS_PER_MONTH, 2) if waste is not None else None,
                "price": "known" if waste is not None else "unknown",
                "fix": "sdk.Cluster(..., log_level=\"INFO\") or DASK_LOGGING__DISTRIBUTED=info",
            },
        )

    def _severity(self, streams: int) -> Severity:
        if streams >= self.config.high_streams:
            return Severity.high
        if streams >= self.config.medium_streams:
            return Severity.medium
        return Severity.low

    def _finding(self, ingestion: _Ingestion, sample: LogSample, share: DebugShare, region: str,
                 context: Context) -> Finding:
        known_region = region in context.prices.regions
        usd_per_gb = logs_ingest_usd_per_gb(ingestion.group.log_group_class) if known_region else None
        total = ingestion.bytes_per_hour / GB * usd_per_gb if usd_per_gb is not None else None
        waste = total * share.share if total is not None else None
        streams = f"{'≥' if sample.active_streams_capped else ''}{sample.active_streams}"
        price_text = f"${waste:.2f}/hour (of ${total:.2f}/hour ingested)" if waste is not None else "price unknown"
        return Finding(
            rule=self.id,
            resource_id=ingestion.group.name,
            resource_type=self.resource_type,
            region=region,
            owner=context.owner_of(ingestion.group.tags),
            severity=self._severity(sample.active_streams),
            waste_hourly_usd=waste,
            summary=f"{share.share:.0%} DEBUG across {streams} streams, {price_text}",
            suggested_action=self.suggested_action,
            evidence={
                "debug_share": round(share.share, 4),
                "debug_events": share.debug_events,
                "sampled_events": share.events,
                "sampled_bytes": sample.bytes_read,
                "sample_truncated": sample.truncated,
                "active_streams": sample.active_streams,
                "active_streams_capped": sample.active_streams_capped,
                "ingested_gb_per_hour": round(ingestion.bytes_per_hour / GB, 6),
                "ingestion_usd_per_hour": total,
                "usd_per_gb": usd_per_gb,
                "window": format_duration(self.config.window),
                "monthly_usd": round(waste * HOURS_PER_MONTH, 2) if waste is not None else None,
                "price": "known" if waste is not None else "unknown",
            },
        )

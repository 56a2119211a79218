"""Sandbox log groups for the ``debug-logging`` and ``log-retention`` rules, and what those rules must find.

Groups, streams and recent events are created over HTTP; ``AWS/Logs`` ``IncomingBytes`` is fed with
PutMetricData (nothing in the emulator generates it), so every group's ingestion rate is exact. A log group's
history — months of stored bytes and its creation time — cannot be written through the API in seconds, so,
as ``backdate`` does for creation times, it is set on the emulator's in-process objects (``_give_history``).
Log groups are tagged with their owner at creation; the daemon reads the tags through ``tag:GetResources``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from guard.pricing import GB, HOURS_PER_MONTH, LOGS_INGEST_USD_PER_GB, LOGS_STORAGE_USD_PER_GB_MONTH
from guard.sandbox.account import REGIONS, TEAMS
from guard.sandbox.server import seeding_client
from guard.sandbox.truth import (
    UNKNOWN_OWNER,
    ExpectedFinding,
    LiveLogStream,
    LiveSeries,
    NearMiss,
    SeedContext,
    Seeded,
)

DEBUG_LOGGING = "debug-logging"
LOG_RETENTION = "log-retention"

# The rules' defaults the ground truth is derived for.
WINDOW = timedelta(hours=1)
MIN_HOURLY_USD = 0.50
DEBUG_SHARE_MIN = 0.5
MIN_RECLAIMABLE_GB = 1.0
RETENTION_DAYS = 30
"""log-retention's defaults: what a 30-day policy would free must exceed 1 GB."""

PERIOD = timedelta(minutes=5)
INGEST_POINTS = 10
"""IncomingBytes datapoints per group, mid-period on the 5-minute grid, the newest in the period before the last
complete one: a one-hour window ending at the last complete period holds them all for any scan in the ten minutes
after seeding."""
EVENT_OVERHEAD_BYTES = 26
"""CloudWatch Logs bills an event as its UTF-8 message plus 26 bytes."""
JUST_BELOW = 0.1
"""A DEBUG share this close under the threshold is a near miss "just below"."""
OLD_EVENTS_AGE = timedelta(hours=3)
"""Events of stale streams, backfills and idle groups: before the window."""
LIVE_EVENTS_EVERY = WINDOW / 2
"""Live, each stream that wrote in the window writes its window events again this often, all at one instant: a
window then holds one to three whole copies, which have the seeded DEBUG share and active streams — and three
copies of the largest group's (300 events) stay far under the rule's 2,000-event sample. Only once, an hour after
seeding, does the window hold part of a copy: the seeded events, spread over 90 seconds, leave it one by one.
The copies add a few kB a day to a group's stored bytes, as ingestion does: log-retention's $/hour grows by some
3e-9 a day."""

_E, _W = REGIONS
DEBUG_LEVELS = ("debug", "trace")

Level = str
Formatter = Callable[[Level, datetime, int, random.Random], str]


@dataclass(frozen=True)
class _Group:
    """One log group: its streams and recent events, its ingestion, retention and history."""

    region: str
    name: str
    owner: str | None
    style: str
    """How its lines look: a key of ``_STYLES``."""
    levels: tuple[Level, ...]
    """The levels of its events in the window, cycled over streams × events."""
    streams: int
    events_per_stream: int
    ingest_gb_per_hour: float = 0.0
    retention_days: int | None = None
    stored_gb: float | None = None
    """Stored bytes its history adds up to; None: only the seeded events (a few kB)."""
    age_days: float = 30.0
    stale_streams: int = 0
    """Streams that stopped writing before the window (scaled-down nodes): not active."""
    backfill: bool = False
    """Its events in the window carry old timestamps (a replay of old files): the sample is empty."""
    stream_prefix: str = "stream-"


_SEVEN_IN_EIGHT_DEBUG = ("debug",) * 7 + ("info",)
GROUPS = (
    _Group(_E, "/dask/forecast-prod/workers", "maria.garcia", "dask", _SEVEN_IN_EIGHT_DEBUG, streams=100,
           events_per_stream=3, ingest_gb_per_hour=62.0, retention_days=14, stored_gb=1900.0, age_days=40,
           stale_streams=1, stream_prefix="worker-"),
    _Group(_E, "/ecs/feature-api", "tom.becker", "spring", ("info", "info", "warning", "trace", "info"),
           streams=4, events_per_stream=2, ingest_gb_per_hour=4.5, stored_gb=250.0, age_days=200,
           stream_prefix="ecs/feature-api/task-"),
    _Group(_E, "/aws/lambda/etl-nightly", "maria.garcia", "lambda-text", ("debug",), streams=2,
           events_per_stream=3, ingest_gb_per_hour=0.9, stored_gb=340.0, age_days=365,
           stream_prefix="2024/06/01/[$LATEST]"),
    _Group(_E, "/dask/nlp-embed/workers", "wei.chen", "dask", ("debug", "info") * 5 + ("debug",), streams=10,
           events_per_stream=3, ingest_gb_per_hour=10.0, retention_days=7, age_days=9, stream_prefix="worker-"),
    _Group(_E, "/ecs/legacy-batch", None, "logfmt", ("info",), streams=0, events_per_stream=0, stored_gb=1250.0,
           age_days=600, stale_streams=1, stream_prefix="ecs/legacy-batch/task-"),
    _Group(_E, "/aws/lambda/report-mailer", "sara.okafor", "lambda-json", ("info",), streams=1,
           events_per_stream=1, stored_gb=0.95, age_days=150, stream_prefix="2024/06/01/[$LATEST]"),
    _Group(_W, "/dask/vision-train/workers", "priya.patel", "dask", ("debug", "info") * 3 + ("debug",), streams=10,
           events_per_stream=3, ingest_gb_per_hour=6.0, retention_days=30, age_days=12, stream_prefix="worker-"),
    _Group(_W, "/aws/lambda/thumbnailer", "priya.patel", "lambda-json", ("debug",) * 4 + ("info",), streams=3,
           events_per_stream=3, ingest_gb_per_hour=2.4, stored_gb=48.0, age_days=120,
           stream_prefix="2024/06/01/[$LATEST]"),
    _Group(_W, "/ecs/kafka-connect", "tom.becker", "python-json", ("info", "info", "debug", "info", "error"),
           streams=3, events_per_stream=2, ingest_gb_per_hour=3.0, retention_days=30,
           stored_gb=800.0, age_days=300, stream_prefix="ecs/kafka-connect/task-"),
    _Group(_W, "/jupyterhub/singleuser", "sara.okafor", "logfmt", ("debug",), streams=4, events_per_stream=2,
           ingest_gb_per_hour=1.2, age_days=20, backfill=True, stream_prefix="jupyter-"),
    _Group(_W, "/aws/codebuild/nightly-images", None, "logfmt", ("info",), streams=0, events_per_stream=0,
           stored_gb=12.0, age_days=90, stale_streams=1, stream_prefix="build-"),
)
"""The team's log groups. The first is a 100-node Dask cluster left at DEBUG; ``nlp-embed`` (6 DEBUG lines in 11)
and ``vision-train`` (4 in 7) sit just under and just over half of the billed bytes at DEBUG, Dask's INFO lines
being longer than its DEBUG ones."""


def _iso(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _ip(rng: random.Random) -> str:
    return f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"


_DASK_TEXT = {
    "debug": ["Heartbeat: tcp://{ip}:8786", "Calling gc.collect(). 0.043s elapsed since previous call.",
              "Execute key: ('getitem-{hex}', {n}) worker: tcp://{ip}:40123", "Deleted 3 keys"],
    "info": ["Starting Worker plugin shuffle", "Run out-of-band function 'start_tracing' on worker tcp://{ip}:40123",
             "Registered to: tcp://{ip}:8786 after waiting for the scheduler for 0.31 seconds",
             "Stopping worker at tcp://{ip}:40123. Reason: scheduler-close (debug endpoint was not enabled)"],
}
_SPRING_TEXT = {
    "info": ["GET /features/user/{n} 200 in {n}ms", "Refreshed feature cache: {n} entries",
             "debug endpoint /actuator/loggers is disabled in production"],
    "warning": ["Slow query on features_v3: {n}ms"],
    "trace": ["Resolved [UserKey(id={n})] from cache region features-{hex}"],
}
_LAMBDA_TEXT = {
    "debug": ["Event: {{'Records': [{{'s3': {{'object': {{'key': 'raw/{hex}.parquet'}}}}}}]}}",
              "Response received: 200 in {n}ms from https://s3.us-east-1.amazonaws.com",
              "Reading batch {n} of s3://etl-nightly/raw/{hex}.parquet"],
    "info": ["Processed {n} records", "Sent report to 14 recipients"],
}
_JSON_TEXT = {
    "debug": ["resized image {hex}.jpg to 256x256 in {n}ms", "cache miss for thumbnail {hex}"],
    "info": ["processed batch of {n} images", "wrote report {hex}.pdf"],
}
_CONNECT_TEXT = {
    "info": ["WorkerSourceTask{{id=s3-sink-{n}}} Committing offsets", "Finished commitOffsets successfully in {n} ms"],
    "debug": ["Sending {n} records to partition 3"],
    "error": ["Connection to node 2 ({ip}:9092) could not be established. Broker may not be available."],
}
_LOGFMT_TEXT = {
    "info": ["request served", "job finished"],
    "debug": ["kernel message received", "websocket ping"],
}


def _text(table: dict[Level, list[str]], level: Level, index: int, rng: random.Random) -> str:
    choices = table[level]
    return choices[index % len(choices)].format(ip=_ip(rng), hex=f"{rng.getrandbits(32):08x}",
                                                n=rng.randrange(1, 5000))


def _dask(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    logger = "worker" if level == "debug" else "core"
    return (f"{stamp:%Y-%m-%d %H:%M:%S},{stamp.microsecond // 1000:03d} - distributed.{logger} - {level.upper()} - "
            f"{_text(_DASK_TEXT, level, index, rng)}")


def _spring(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    word = {"warning": "WARN"}.get(level, level.upper())
    return (f"{_iso(stamp)} {word:>5} 1 --- [nio-8080-exec-{index % 8 + 1}] c.t.features.FeatureController"
            f"   : {_text(_SPRING_TEXT, level, index, rng)}")


def _lambda_text(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    return f"[{level.upper()}]\t{_iso(stamp)}\t{rng.getrandbits(64):016x}\t{_text(_LAMBDA_TEXT, level, index, rng)}"


def _lambda_json(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    message = _text(_JSON_TEXT, level, index, rng)
    return json.dumps({"timestamp": _iso(stamp), "level": level.upper(), "message": message, "logger": "handler",
                       "requestId": f"{rng.getrandbits(64):016x}"})


def _python_json(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    return json.dumps({"asctime": _iso(stamp), "levelname": level.upper(), "name": "connect.runtime",
                       "message": _text(_CONNECT_TEXT, level, index, rng)})


def _logfmt(level: Level, stamp: datetime, index: int, rng: random.Random) -> str:
    return f'time={_iso(stamp)} level={level} msg="{_text(_LOGFMT_TEXT, level, index, rng)}" pid={rng.randrange(9999)}'


_STYLES: dict[str, Formatter] = {"dask": _dask, "spring": _spring, "lambda-text": _lambda_text,
                                 "lambda-json": _lambda_json, "python-json": _python_json, "logfmt": _logfmt}


@dataclass(frozen=True)
class _Written:
    """What was put into one group: the levels and messages of its events in the window, and its streams that
    keep writing them."""

    group: _Group
    window_events: tuple[tuple[Level, str], ...]
    live: tuple[LiveLogStream, ...]


def _events(group: _Group, stream: int, now: datetime, rng: random.Random, old: bool) -> list[tuple[Level, dict]]:
    """One stream's events, oldest first: a minute or more before ``now``, or before the window if ``old``."""
    newest = now - (OLD_EVENTS_AGE if old else timedelta(minutes=1)) - timedelta(seconds=stream % 50)
    count = max(group.events_per_stream, 1)
    events = []
    for number in range(count):
        index = stream * count + number
        level = group.levels[index % len(group.levels)]
        stamp = newest - timedelta(seconds=20 * (count - 1 - number))
        message = _STYLES[group.style](level, stamp, index, rng)
        events.append((level, {"timestamp": int(stamp.timestamp() * 1000), "message": message}))
    return events


def _write(context: SeedContext, group: _Group, rng: random.Random) -> _Written:
    logs = seeding_client(context.endpoint_url, "logs", group.region)
    tags = {"owner": group.owner, "team": TEAMS[group.owner]} if group.owner else {}
    logs.create_log_group(logGroupName=group.name, **({"tags": tags} if tags else {}))
    if group.retention_days is not None:
        logs.put_retention_policy(logGroupName=group.name, retentionInDays=group.retention_days)
    window_events: list[tuple[Level, str]] = []
    live: list[LiveLogStream] = []
    for stream in range(group.streams + group.stale_streams):
        old = stream >= group.streams or group.backfill
        name = f"{group.stream_prefix}{stream + 1:04d}"
        events = _events(group, stream, context.now, rng, old=old)
        logs.create_log_stream(logGroupName=group.name, logStreamName=name)
        logs.put_log_events(logGroupName=group.name, logStreamName=name, logEvents=[event for _, event in events])
        if not old:
            window_events.extend((level, event["message"]) for level, event in events)
            live.append(LiveLogStream(group.region, group.name, name, tuple(event["message"] for _, event in events),
                                      context.now, LIVE_EVENTS_EVERY))
    return _Written(group, tuple(window_events), tuple(live))


def _point_bytes(group: _Group) -> float:
    return round(group.ingest_gb_per_hour * GB * (WINDOW / timedelta(hours=1))) / INGEST_POINTS


def _ingestion(context: SeedContext, region: str) -> tuple[LiveSeries, ...]:
    """IncomingBytes of every ingesting group of a region: ``INGEST_POINTS`` equal sums adding up to one hour.

    Live, that hour repeats every hour: each one-hour window holds exactly its datapoints, however aligned.
    """
    epoch = int(context.now.timestamp())
    grid = datetime.fromtimestamp(epoch - epoch % int(PERIOD.total_seconds()), tz=timezone.utc)
    stamps = [grid - PERIOD * (k + 2) + PERIOD / 2 for k in range(INGEST_POINTS)]
    data = [{"MetricName": "IncomingBytes", "Dimensions": [{"Name": "LogGroupName", "Value": group.name}],
             "Timestamp": stamp, "Value": _point_bytes(group), "Unit": "Bytes"}
            for group in GROUPS if group.region == region and group.ingest_gb_per_hour for stamp in stamps]
    if data:
        seeding_client(context.endpoint_url, "cloudwatch", region).put_metric_data(Namespace="AWS/Logs",
                                                                                    MetricData=data)
    return LiveSeries.of(region, "AWS/Logs", WINDOW, data)


def _give_history(context: SeedContext, region: str) -> None:
    """Creation times in the past and the bytes months of logging left behind, on the in-process emulator.

    The extra bytes go to a group's first stream, so the group's storedBytes add up to its ``stored_gb``.
    """
    from moto.logs.models import logs_backends

    backend = logs_backends[context.account_id][region]
    for group in GROUPS:
        if group.region != region:
            continue
        emulated = backend.groups[group.name]
        emulated.creation_time = (context.now - timedelta(days=group.age_days)).astimezone(timezone.utc).replace(
            tzinfo=None)
        if group.stored_gb is not None:
            streams = list(emulated.streams.values())
            streams[0].stored_bytes += round(group.stored_gb * GB) - sum(s.stored_bytes for s in streams)


def _billed(message: str) -> int:
    return len(message.encode()) + EVENT_OVERHEAD_BYTES


def _debug_share(written: _Written) -> float:
    """The share of billed bytes at DEBUG/TRACE among the group's events in the window (by the levels written)."""
    total = sum(_billed(message) for _, message in written.window_events)
    debug = sum(_billed(message) for level, message in written.window_events if level in DEBUG_LEVELS)
    return debug / total


def _ingest_bytes_per_hour(group: _Group) -> float:
    """The IncomingBytes rate the window's datapoints add up to."""
    return sum([_point_bytes(group)] * INGEST_POINTS) / (WINDOW / timedelta(hours=1))


def _debug_logging_truth(written: _Written) -> ExpectedFinding | NearMiss:
    group = written.group
    hourly = _ingest_bytes_per_hour(group) / GB * LOGS_INGEST_USD_PER_GB
    if hourly < MIN_HOURLY_USD:
        return NearMiss(DEBUG_LOGGING, group.region, group.name, "cheap" if hourly else "not-ingesting")
    if not written.window_events:
        return NearMiss(DEBUG_LOGGING, group.region, group.name, "no-sample", undetermined=True)
    share = _debug_share(written)
    if share < DEBUG_SHARE_MIN:
        reason = "debug-share-just-below" if share >= DEBUG_SHARE_MIN - JUST_BELOW else "mostly-info"
        return NearMiss(DEBUG_LOGGING, group.region, group.name, reason)
    return ExpectedFinding(DEBUG_LOGGING, group.region, group.name, group.owner or UNKNOWN_OWNER, hourly * share)


def _log_retention_truth(group: _Group) -> ExpectedFinding | NearMiss:
    if group.retention_days is not None:
        return NearMiss(LOG_RETENTION, group.region, group.name, "retention-set")
    stored_bytes = round(group.stored_gb * GB) if group.stored_gb is not None else 0
    reclaimable_gb = stored_bytes / GB * max(0.0, 1 - RETENTION_DAYS / group.age_days)
    if reclaimable_gb <= MIN_RECLAIMABLE_GB:
        return NearMiss(LOG_RETENTION, group.region, group.name, "below-threshold")
    return ExpectedFinding(LOG_RETENTION, group.region, group.name, group.owner or UNKNOWN_OWNER,
                           reclaimable_gb * LOGS_STORAGE_USD_PER_GB_MONTH / HOURS_PER_MONTH)


def seed(context: SeedContext) -> Seeded:
    rng = random.Random("guard.sandbox.seed_logs")
    written = [_write(context, group, rng) for group in GROUPS]
    live_series: list[LiveSeries] = []
    for region in REGIONS:
        live_series.extend(_ingestion(context, region))
        _give_history(context, region)
    truths = [truth for w in written for truth in (_debug_logging_truth(w), _log_retention_truth(w.group))]
    return Seeded(findings=tuple(t for t in truths if isinstance(t, ExpectedFinding)),
                  near_misses=tuple(t for t in truths if isinstance(t, NearMiss)),
                  live_series=tuple(live_series), live_logs=tuple(stream for w in written for stream in w.live))

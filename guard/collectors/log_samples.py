"""The ``log_samples`` collector: a bounded read of recent events of the log groups a rule asked about.

Reads stop at the request's event, byte and page caps, so the cost is bounded per log group, and only the log
groups a rule already found expensive (from metrics) are read. A group that cannot be read (deleted since it
was listed, say) is left out — its rule treats it as undetermined — and never fails the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError

from guard.aws import Aws
from guard.model import LogSample, LogSampleRequest

log = logging.getLogger(__name__)

STREAMS_PAGE_SIZE = 50
MAX_FILTER_PAGES = 5
"""FilterLogEvents may return empty pages with a token while it searches: stop after this many."""
STREAM_TIMESTAMP_LAG_MS = 3_600_000
"""AWS updates a stream's lastEventTimestamp eventually ("typically in less than an hour")."""


def collect_log_samples(aws: Aws, region: str, requests: Iterable[LogSampleRequest], now: datetime
                        ) -> dict[LogSampleRequest, LogSample]:
    client = aws.client("logs", region)
    samples = {}
    for request in dict.fromkeys(requests):
        try:
            samples[request] = _sample(client, request, now)
        except (ClientError, BotoCoreError) as exc:
            log.warning("log group %s in %s could not be sampled: %s", request.log_group, region, exc)
    return samples


def _sample(client, request: LogSampleRequest, now: datetime) -> LogSample:
    start_ms = int((now - timedelta(seconds=request.window_seconds)).timestamp() * 1000)
    messages: list[str] = []
    streams: set[str] = set()
    bytes_read = 0
    truncated = False
    kwargs = {"logGroupName": request.log_group, "startTime": start_ms, "limit": min(request.max_events, 10000)}
    for _ in range(MAX_FILTER_PAGES):
        reply = client.filter_log_events(**kwargs)
        for event in reply.get("events", []):
            message = event.get("message", "")
            size = len(message.encode())
            if len(messages) >= request.max_events or bytes_read + size > request.max_bytes:
                truncated = True
                break
            messages.append(message)
            streams.add(event.get("logStreamName", ""))
            bytes_read += size
        token = reply.get("nextToken")
        if truncated or not token:
            truncated = truncated or bool(token)
            break
        kwargs["nextToken"] = token
    else:
        truncated = True
    described, capped = _active_streams(client, request, start_ms - STREAM_TIMESTAMP_LAG_MS)
    return LogSample(log_group=request.log_group, messages=tuple(messages), bytes_read=bytes_read,
                     truncated=truncated, active_streams=max(described, len(streams - {""})),
                     active_streams_capped=capped)


def _active_streams(client, request: LogSampleRequest, since_ms: int) -> tuple[int, bool]:
    """Streams that wrote since ``since_ms``, newest first, reading at most ``max_stream_pages`` pages."""
    kwargs = {"logGroupName": request.log_group, "orderBy": "LastEventTime", "descending": True,
              "limit": STREAMS_PAGE_SIZE}
    active = 0
    for _ in range(request.max_stream_pages):
        reply = client.describe_log_streams(**kwargs)
        for stream in reply.get("logStreams", []):
            if stream.get("lastEventTimestamp", 0) < since_ms:
                return active, False
            active += 1
        token = reply.get("nextToken")
        if not token:
            return active, False
        kwargs["nextToken"] = token
    return active, True

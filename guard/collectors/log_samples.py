"""The ``log_samples`` collector: a bounded read of recent events of the log groups a rule asked about.

Reads stop at the request's event and byte caps, so the cost is bounded per log group, and only the log
groups a rule already found expensive (from metrics) are read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from guard.aws import Aws
from guard.model import LogSample, LogSampleRequest

STREAMS_PAGE_SIZE = 50


def collect_log_samples(aws: Aws, region: str, requests: Iterable[LogSampleRequest], now: datetime
                        ) -> dict[str, LogSample]:
    client = aws.client("logs", region)
    samples = {}
    for request in dict.fromkeys(requests):
        start_ms = int((now - timedelta(seconds=request.window_seconds)).timestamp() * 1000)
        messages: list[str] = []
        bytes_read = 0
        truncated = False
        kwargs = {"logGroupName": request.log_group, "startTime": start_ms,
                  "limit": min(request.max_events, 10000)}
        while True:
            reply = client.filter_log_events(**kwargs)
            for event in reply.get("events", []):
                message = event.get("message", "")
                if len(messages) >= request.max_events or bytes_read + len(message) > request.max_bytes:
                    truncated = True
                    break
                messages.append(message)
                bytes_read += len(message.encode())
            token = reply.get("nextToken")
            if truncated or not token:
                truncated = truncated or bool(token)
                break
            kwargs["nextToken"] = token
        active, capped = _active_streams(client, request, start_ms)
        samples[request.log_group] = LogSample(log_group=request.log_group, messages=tuple(messages),
                                               bytes_read=bytes_read, truncated=truncated,
                                               active_streams=active, active_streams_capped=capped)
    return samples


def _active_streams(client, request: LogSampleRequest, start_ms: int) -> tuple[int, bool]:
    """Streams that wrote since ``start_ms``, newest first, reading at most ``max_stream_pages`` pages."""
    kwargs = {"logGroupName": request.log_group, "orderBy": "LastEventTime", "descending": True,
              "limit": STREAMS_PAGE_SIZE}
    active = 0
    for _ in range(request.max_stream_pages):
        reply = client.describe_log_streams(**kwargs)
        for stream in reply.get("logStreams", []):
            if stream.get("lastEventTimestamp", 0) < start_ms:
                return active, False
            active += 1
        token = reply.get("nextToken")
        if not token:
            return active, False
        kwargs["nextToken"] = token
    return active, True

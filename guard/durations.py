"""Human durations for settings: "20 minutes", "2h", "90s", "1h30m", or plain seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")
MAX_SECONDS = 10 * 365 * 86400
DURATION_HELP = "a duration like '90s', '20 minutes', '2h' or '1h30m'"


def parse_duration(value: object) -> timedelta:
    """Parse a human duration; raise ValueError naming what is allowed."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected {DURATION_HELP}, not a negative number")
        return _seconds(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {DURATION_HELP}")
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _seconds(float(text))
    seconds = 0.0
    position = 0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        unit = _UNITS.get(match.group(2).lower())
        if unit is None:
            raise ValueError(f"unknown unit {match.group(2)!r}; expected {DURATION_HELP}")
        seconds += float(match.group(1)) * unit
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"expected {DURATION_HELP}")
    return _seconds(seconds)


def _seconds(seconds: float) -> timedelta:
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"expected {DURATION_HELP} of at most 10 years")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way a person writes it: 3600 s -> '1h', 90 s -> '1m30s'."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A pydantic field type that accepts human durations and serialises back to them."""


def _whole_minutes(value: timedelta) -> timedelta:
    seconds = value.total_seconds()
    if seconds < 60 or seconds % 60:
        raise ValueError("AWS publishes these metrics per minute at best: use a multiple of 60s, e.g. '5 minutes'")
    return value


Period = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_whole_minutes),
    PlainSerializer(format_duration, return_type=str),
]
"""A CloudWatch period for AWS-published metrics: whole minutes (sub-minute periods only exist for custom
high-resolution metrics, and would make every series look incomplete)."""

"""guard.durations: human durations in settings ("20 minutes", "2h", "90s", "1h30m") and back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from guard.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20 minutes", 1200),
        ("2h", 7200),
        ("90s", 90),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1.5h", 5400),
        (90, 90),
        (2.5, 2.5),
        ("  3 days ", 3 * 86400),
        ("1 week", 7 * 86400),
        ("45", 45),
        ("2H", 7200),
        ("0s", 0),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_parse_duration_passes_timedeltas_through() -> None:
    assert parse_duration(timedelta(minutes=7)) == timedelta(minutes=7)


@pytest.mark.parametrize("text", ["", "   ", "2x", "h", "-5", "abc", "1h30", "5 m s", "1e3s", None, [], "--"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans(value: bool) -> None:
    # bool is an int subclass: True must not silently mean "1 second".
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-5)


def test_unknown_unit_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="unknown unit 'x'"):
        parse_duration("2x")


@pytest.mark.parametrize("value", ["9999999999 days", float("inf")])
def test_parse_duration_out_of_range_is_a_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86400 + 61, "1d1m1s"), (7 * 86400, "7d")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    text = format_duration(value)
    assert " " not in text
    assert parse_duration(text) == value


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=999_999))
def test_format_drops_only_sub_second_parts(seconds: int, microseconds: int) -> None:
    value = timedelta(seconds=seconds, microseconds=microseconds)
    assert parse_duration(format_duration(value)) == timedelta(seconds=seconds)


def test_duration_field_type_validates_and_serialises() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("20 minutes") == timedelta(minutes=20)
    assert adapter.dump_python(timedelta(minutes=90), mode="json") == "1h30m"
    with pytest.raises(ValidationError, match="expected a duration like"):
        adapter.validate_python("soon")

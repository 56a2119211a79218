"""Slack-compatible webhook notifications: one batched message per event, delivered with bounded retries.

The daemon tells people about new findings, planned actions (dry-run), executed actions and failures. Each call sends
ONE message for its whole batch — a scan of 500 findings is one message with the costliest items and "… and N more",
never 500 messages. Payloads are built from an allow-list of fields (never a finding's evidence), with token-looking
strings redacted, because a chat channel is a much wider audience than the guard's database.

Delivery never raises: a notifier that could crash a scan would be worse than a missed message. It retries what can
succeed later (connection errors, timeouts, 5xx, 429 with Retry-After) with capped exponential backoff, gives up on
other 4xx at once, and returns a :class:`Delivery` saying what happened. The webhook URL carries a token (Slack's
does), so it is only ever logged masked, as ``scheme://host/…`` — including in httpx's own request log.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from guard.model import Finding

log = logging.getLogger(__name__)

HOURS_PER_MONTH = 730
"""AWS's own convention for monthly prices (8,760 hours / 12)."""

# Slack's limits are 3,000 characters per section text and 50 blocks per message; stay well inside them.
_SECTION_CHARS = 2_900
_MAX_ITEM_SECTIONS = 40
_ITEMS_CHARS_BUDGET = 12_000
_HEADER_CHARS = 150
_FIELD_CHARS = {"rule": 64, "region": 32, "resource_id": 160, "owner": 64, "action": 32, "source": 64,
                "id": 32, "summary": 300, "error": 300}
_ERROR_BODY_CHARS = 200

Item = Mapping[str, Any] | Finding
"""A finding, action or failure: a mapping (e.g. ``FindingRow.as_dict()``) or an object with the same attributes."""


@dataclass(frozen=True)
class Delivery:
    """The outcome of one notification: whether it arrived, after how many attempts, and the last status/error."""

    delivered: bool
    attempts: int
    status: int | None = None
    """HTTP status of the last attempt; None when it got no response (or nothing was sent)."""
    error: str | None = None
    """One line saying why it was not delivered (URL masked); None when delivered."""
    shown: tuple[Item, ...] = dataclasses.field(default=(), compare=False, repr=False)
    """The items the message listed one by one (the rest were only counted in "… and N more")."""


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell which endpoint is meant, without the token in its path or query."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"
    if not host:
        return "<invalid url>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{host}{port}/…"


# --- redaction -------------------------------------------------------------------------------------------------------

_SECRET_PATTERNS = re.compile(
    "|".join([
        r"https?://hooks\.slack\.com/\S+",                                  # Slack webhook URLs
        r"https?://[^\s/]+/(?:services|hooks|webhooks?)/\S+",               # other webhook-style URLs
        r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)",                                 # user:password@ in any URL
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",                                 # Slack tokens
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",     # AWS access key ids
        r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",                                  # GitHub tokens
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",    # JWTs
        r"(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{12,}",                # Authorization header values
        r"(?i:\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|credentials?)[\w.-]*)"
        r"[\"']?\s*[:=]\s*[\"']?[^\s\"',;]+",                               # secret=value, "token": "value"
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    ])
)
_RANDOM_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")
REDACTED = "[redacted]"


def _looks_random(run: str) -> bool:
    """A long run that is all hex, or mixes upper case, lower case and digits: the shape of keys and tokens."""
    if _HEX.fullmatch(run):
        return True
    return any(c.isdigit() for c in run) and any(c.isupper() for c in run) and any(c.islower() for c in run)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[redacted]``."""
    text = _SECRET_PATTERNS.sub(REDACTED, text)
    return _RANDOM_RUN.sub(lambda m: REDACTED if _looks_random(m.group()) else m.group(), text)


# --- payload ---------------------------------------------------------------------------------------------------------

def _field(item: Item, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def _usd_hourly(item: Item) -> float | None:
    value = _field(item, "waste_hourly_usd")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _clean(value: Any, name: str) -> str:
    """One line of plain text: redacted, length-capped, with Slack's control characters (&, <, >) escaped."""
    if value is None or value == "":
        return ""
    text = redact(" ".join(str(value).split()))
    limit = _FIELD_CHARS[name]
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _money(usd: float) -> str:
    return f"${usd:,.4f}" if 0 < abs(usd) < 1 else f"${usd:,.2f}"


def _line(item: Item, kind: str) -> str:
    """One bullet: [*#id action* ·] rule · region · `resource` · owner · $/hour — summary [— error: …]."""
    parts = []
    if kind != "new_findings":
        item_id = _clean(_field(item, "id"), "id")
        head = " ".join(p for p in (f"#{item_id}" if item_id else "", _clean(_field(item, "action"), "action")) if p)
        if head:
            parts.append(f"*{head}*")
    parts.append(_clean(_field(item, "rule"), "rule") or _clean(_field(item, "source"), "source") or "?")
    region = _clean(_field(item, "region"), "region")
    if region:
        parts.append(region)
    resource = _clean(_field(item, "resource_id"), "resource_id").replace("`", "'")
    if resource:
        parts.append(f"`{resource}`")
    parts.append(f"owner {_clean(_field(item, 'owner'), 'owner') or 'unknown'}")
    hourly = _usd_hourly(item)
    parts.append(f"{_money(hourly)}/h" if hourly is not None else "$?/h")
    line = "• " + " · ".join(parts)
    summary = _clean(_field(item, "summary"), "summary")
    if summary:
        line += f" — {summary}"
    error = _clean(_field(item, "error"), "error")
    if error:
        line += f" — error: {error}"
    return line


_TITLES = {
    "new_findings": ("new finding", "new findings"),
    "planned_actions": ("action planned", "actions planned"),
    "executed_actions": ("action executed", "actions executed"),
    "failures": ("failure", "failures"),
}


def build_message(kind: str, items: Sequence[Item], max_items: int = 20) -> dict[str, Any]:
    """The Slack payload ``{"text", "blocks"}`` of one batch: totals, the costliest ``max_items``, the rest counted.

    Only rule, region, resource id, owner, $/hour and summary (plus id/action for actions, source/error for failures)
    are read from an item; evidence and any other field never reach the payload.
    """
    return _compose(kind, items, max_items)[0]


def _compose(kind: str, items: Sequence[Item], max_items: int) -> tuple[dict[str, Any], list[Item]]:
    """The payload and the items it lists one by one (the costliest that fit)."""
    singular, plural = _TITLES[kind]
    count = len(items)
    noun = singular if count == 1 else plural
    title = f"vmguard: {count:,} {noun}"
    priced = [usd for usd in map(_usd_hourly, items) if usd is not None]
    totals = ""
    if kind == "new_findings" or priced:
        hourly = sum(priced)
        totals = f"{_money(hourly)}/hour · {_money(hourly * HOURS_PER_MONTH)}/month"
        if len(priced) < count:
            totals += f" ({count - len(priced):,} not priced)"
    group_by = ("rule",) if kind == "new_findings" else ("action", "source")
    by_group = Counter(next((_clean(_field(item, name), name) for name in group_by if _field(item, name)), "other")
                       for item in items)
    breakdown = ", ".join(f"{name} {n:,}" for name, n in by_group.most_common(12))
    if len(by_group) > 12:
        breakdown += ", …"
    overview = " · ".join(p for p in (f"*{count:,} {noun}*", totals) if p) + f"\n{breakdown}"

    # Costliest first; unpriced items last (sorted() is stable, so equal costs keep the caller's order).
    ranked = [item for _, item in sorted(((_usd_hourly(item), item) for item in items),
                                         key=lambda pair: -pair[0] if pair[0] is not None else math.inf)]
    sections: list[str] = []
    listed: list[Item] = []
    used = 0
    for item in ranked[: max(max_items, 0)]:
        line = _line(item, kind)
        if used + len(line) > _ITEMS_CHARS_BUDGET:
            break
        if sections and len(sections[-1]) + 1 + len(line) <= _SECTION_CHARS:
            sections[-1] += "\n" + line
        elif len(sections) < _MAX_ITEM_SECTIONS:
            sections.append(line)
        else:
            break
        listed.append(item)
        used += len(line) + 1

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:_HEADER_CHARS]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": overview[:_SECTION_CHARS]}},
    ]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in sections]
    if count > len(listed):
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn",
                                                         "text": f"… and {count - len(listed):,} more"}]})
    return {"text": f"{title} · {totals}" if totals else title, "blocks": blocks}, listed


# --- delivery --------------------------------------------------------------------------------------------------------

class _MaskWebhookUrls(logging.Filter):
    """httpx logs every request's full URL at INFO; rewrite our webhook URLs in those records to their masked form."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls and isinstance(record.args, tuple):
            record.args = tuple(self.urls.get(str(arg), arg) if isinstance(arg, str | httpx.URL) else arg
                                for arg in record.args)
        return True


_httpx_filter = _MaskWebhookUrls()
logging.getLogger("httpx").addFilter(_httpx_filter)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


class Notifier:
    """Posts batched event messages to a Slack-compatible incoming webhook.

    ``retries`` is how many times a failed attempt is retried (so at most ``retries + 1`` POSTs); the wait before
    retry *n* is ``backoff × 2ⁿ⁻¹``, or the server's Retry-After, either capped at ``max_delay`` seconds so a
    misbehaving endpoint cannot stall the daemon. ``timeout`` applies to connect, write, read and pool waits alike.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_items: int = 20, transport: httpx.BaseTransport | None = None, max_delay: float = 10.0):
        masked = mask_url(url)
        if masked == "<invalid url>" or httpx.URL(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook url {masked}: expected an http(s) URL such as https://hooks.slack.com/services/…")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_items < 0 or max_delay < 0:
            raise ValueError("webhook notifier: timeout must be > 0; retries, backoff, max_items, max_delay >= 0")
        self._url = url
        self.target = masked
        """The webhook as it may be shown: ``scheme://host/…``."""
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_items = max_items
        self.max_delay = max_delay
        # No redirects: a webhook that redirects is misconfigured, and following it would send the payload elsewhere.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False,
                                    headers={"User-Agent": "vmguard-notifier"})
        _httpx_filter.urls[url] = masked
        _httpx_filter.urls[str(httpx.URL(url))] = masked

    def __repr__(self) -> str:
        return f"Notifier({self.target!r})"

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # One method per event kind; each sends one message for its whole batch.

    def new_findings(self, findings: Sequence[Item]) -> Delivery:
        """Findings that just opened (mappings like ``FindingRow.as_dict()``, or ``Finding`` objects).

        Only the findings in the delivered message's ``shown`` were announced; the ones counted in "… and N more"
        were not (an action's grace must not end on a line nobody could read)."""
        return self._notify("new_findings", findings)

    def planned_actions(self, actions: Sequence[Item]) -> Delivery:
        """Actions recorded as "would do" (dry-run) or due, awaiting approval or the next cycle."""
        return self._notify("planned_actions", actions)

    def executed_actions(self, actions: Sequence[Item]) -> Delivery:
        """Actions that were carried out against AWS."""
        return self._notify("executed_actions", actions)

    def failures(self, failures: Sequence[Item]) -> Delivery:
        """Actions or collectors that failed (items may carry ``source`` and ``error``)."""
        return self._notify("failures", failures)

    def _notify(self, kind: str, items: Sequence[Item]) -> Delivery:
        if not items:
            return Delivery(delivered=True, attempts=0)
        try:
            payload, listed = _compose(kind, items, self.max_items)
            body = json.dumps(payload).encode()
        except Exception as exc:  # a malformed item must not break the caller's scan
            return self._give_up(kind, len(items), Delivery(False, 0, None, f"could not build the message: "
                                                                            f"{type(exc).__name__}"))
        delivery = self._deliver(kind, len(items), body)
        return dataclasses.replace(delivery, shown=tuple(listed)) if delivery.delivered else delivery

    def _deliver(self, kind: str, count: int, body: bytes) -> Delivery:
        status: int | None = None
        error: str | None = None
        attempt = 0
        for attempt in range(1, self.retries + 2):
            wait: float | None = None
            try:
                response = self._client.post(self._url, content=body, headers={"Content-Type": "application/json"})
            except httpx.TimeoutException as exc:
                status, error = None, f"timed out after {self.timeout:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:  # connection refused/reset, DNS, TLS, protocol errors
                status, error = None, f"{type(exc).__name__}: {self._scrub(str(exc)) or 'connection failed'}"
            except Exception as exc:  # anything else is not going to get better by retrying
                status, error = None, f"{type(exc).__name__}: {self._scrub(str(exc))}"
                break
            else:
                status = response.status_code
                if response.is_success:
                    return Delivery(delivered=True, attempts=attempt, status=status)
                snippet = self._scrub(" ".join(response.text.split()))[:_ERROR_BODY_CHARS]
                error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
                if status != 429 and status < 500:
                    break  # 3xx/4xx: the request itself is wrong (bad payload, revoked hook) — retrying won't help
                wait = _retry_after(response.headers.get("Retry-After"))
            if attempt > self.retries:
                break
            delay = wait if wait is not None else self.backoff * 2 ** (attempt - 1)
            time.sleep(min(delay, self.max_delay))
        return self._give_up(kind, count, Delivery(False, attempt, status, error))

    def _give_up(self, kind: str, count: int, delivery: Delivery) -> Delivery:
        log.warning("webhook %s: %s (%d) not delivered after %d attempt(s): %s", self.target,
                    kind.replace("_", " "), count, delivery.attempts, delivery.error)
        return delivery

    def _scrub(self, text: str) -> str:
        """Error text with the webhook URL masked and anything token-like redacted."""
        for url in (self._url, str(httpx.URL(self._url))):
            text = text.replace(url, self.target)
        return redact(text)

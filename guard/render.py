"""How findings look on a terminal (rich tables grouped by rule) and as JSON (the stable contract)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from guard.pricing import HOURS_PER_MONTH

WIDE_TERMINAL = 150
"""Columns from which the summary gets a column of its own."""
SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim", "info": "cyan"}


def unique_waste_hourly_usd(findings: Iterable[dict[str, Any]]) -> float:
    """Total known waste, counting a resource's bill once (at its largest figure) when several rules report it."""
    largest: dict[tuple[str, str, str], float] = {}
    for finding in findings:
        if finding["waste_hourly_usd"] is not None:
            key = (finding["region"], finding["resource_id"], finding.get("billing", ""))
            largest[key] = max(largest.get(key, 0.0), finding["waste_hourly_usd"])
    return sum(largest.values())


def findings_json(findings: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(findings), indent=2, sort_keys=True)


def _money(value: float | None, digits: int = 3) -> str:
    return "unknown" if value is None else f"${value:,.{digits}f}"


def print_findings(console: Console, findings: list[dict[str, Any]], title: str = "Findings") -> None:
    """One table per rule, costliest first, with per-rule and overall $/hour and $/month."""
    if not findings:
        console.print(f"[green]{title}: nothing found.[/green]")
        return
    total = unique_waste_hourly_usd(findings)
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for finding in findings:
        by_rule[finding["rule"]].append(finding)
    unknown = 0
    # On a narrow terminal the summary goes under the resource id instead of in a column of its own.
    wide = console.width >= WIDE_TERMINAL
    for rule, rows in sorted(by_rule.items()):
        table = Table(title=f"{rule} — {len(rows)} finding{'s' if len(rows) != 1 else ''}", title_justify="left",
                      show_footer=True, expand=False, show_lines=not wide)
        subtotal = sum(r["waste_hourly_usd"] or 0.0 for r in rows)
        if wide:
            table.add_column("region", no_wrap=True)
        table.add_column("resource" if wide else "resource, region, severity, why", footer="total", overflow="fold",
                         min_width=min(max(len(r["resource_id"]) for r in rows), 40))
        table.add_column("owner", overflow="fold")
        if wide:
            table.add_column("severity", no_wrap=True)
        table.add_column("$/hour", justify="right", no_wrap=True, footer=_money(subtotal))
        table.add_column("$/month", justify="right", no_wrap=True, footer=_money(subtotal * HOURS_PER_MONTH, 2))
        if wide:
            table.add_column("why")
        for row in sorted(rows, key=lambda r: (-(r["waste_hourly_usd"] or 0), r["region"], r["resource_id"])):
            hourly = row["waste_hourly_usd"]
            if row["severity"] == "info":
                per_hour = per_month = "—"
            else:
                per_hour = _money(hourly)
                per_month = _money(hourly * HOURS_PER_MONTH if hourly is not None else None, 2)
            severity = f"[{SEVERITY_STYLE.get(row['severity'], '')}]{row['severity']}[/]"
            resource, summary = escape(row["resource_id"]), escape(row["summary"])
            if wide:
                table.add_row(row["region"], resource, escape(row["owner"]), severity, per_hour, per_month, summary)
            else:
                table.add_row(f"{resource}\n{row['region']} · {severity}\n[dim]{summary}[/dim]",
                              escape(row["owner"]), per_hour, per_month)
            unknown += hourly is None and row["severity"] != "info"
        console.print(table)
    line = (f"[bold]Total waste: {_money(total)}/hour, {_money(total * HOURS_PER_MONTH, 2)}/month[/bold] "
            f"across {len(findings)} findings (a bill found by two rules counts once)")
    if unknown:
        line += f" ({unknown} with price unknown, not counted)"
    console.print(line)

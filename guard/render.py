"""How findings look on a terminal (rich tables grouped by rule) and as JSON (the stable contract)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from guard.pricing import HOURS_PER_MONTH

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}


def findings_json(findings: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(findings), indent=2, sort_keys=True)


def _money(value: float | None, digits: int = 3) -> str:
    return "price unknown" if value is None else f"${value:,.{digits}f}"


def print_findings(console: Console, findings: list[dict[str, Any]], title: str = "Findings") -> None:
    """One table per rule, costliest first, with per-rule and overall $/hour and $/month."""
    if not findings:
        console.print(f"[green]{title}: nothing found.[/green]")
        return
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for finding in findings:
        by_rule[finding["rule"]].append(finding)
    total = 0.0
    unknown = 0
    for rule, rows in sorted(by_rule.items()):
        table = Table(title=f"{rule} — {len(rows)} finding{'s' if len(rows) != 1 else ''}", title_justify="left",
                      show_footer=True, expand=False)
        subtotal = sum(r["waste_hourly_usd"] or 0.0 for r in rows)
        table.add_column("region")
        table.add_column("resource", footer="total")
        table.add_column("owner")
        table.add_column("severity")
        table.add_column("$/hour", justify="right", footer=_money(subtotal))
        table.add_column("$/month", justify="right", footer=_money(subtotal * HOURS_PER_MONTH, 2))
        table.add_column("why")
        for row in sorted(rows, key=lambda r: (-(r["waste_hourly_usd"] or 0), r["region"], r["resource_id"])):
            hourly = row["waste_hourly_usd"]
            table.add_row(row["region"], row["resource_id"], row["owner"],
                          f"[{SEVERITY_STYLE.get(row['severity'], '')}]{row['severity']}[/]",
                          _money(hourly), _money(hourly * HOURS_PER_MONTH if hourly is not None else None, 2),
                          row["summary"])
            unknown += hourly is None
        total += subtotal
        console.print(table)
    line = (f"[bold]Total waste: {_money(total)}/hour, {_money(total * HOURS_PER_MONTH, 2)}/month[/bold] "
            f"across {len(findings)} findings")
    if unknown:
        line += f" ({unknown} with price unknown, not counted)"
    console.print(line)

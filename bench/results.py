"""bench/RESULTS.md: written section by section, each ``## `` section replaced only by the case that owns it.

Sections this package does not own (another benchmark's) are kept as they are, where they are; the text above the
first section (the intro) is this package's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

INTRO = """\
# Benchmarks

vmguard side by side with what users would pick instead, measured in one run on one machine against the same
emulated AWS account: Cloud Custodian for the daemon's scan, one `RunInstances` per VM (dask-cloudprovider's way) for
the SDK's launch, and a real load generator (`wrk`) on the daemon's heartbeat endpoint; and pip for environment
replication (its own section, `python -m bench.env_bench`). Everything below a section's heading is written by
`make bench` (or `python -m bench CASE` for one section): never edited by hand.

How it is measured (code in `bench/`):

- The emulated AWS account (moto, `python -m bench.emulator`) is a process of its own, and so is each client: the
  vmguard scan (`python -m bench.vmguard_scan`: the daemon's `Scanner`, idle-vms and detached-volumes enabled),
  Cloud Custodian (`custodian run` in a virtualenv of its own under `.bench/`, policies in `bench/c7n_policy.yml`),
  each launcher, the daemon (`guard run`).
- Client CPU seconds: user + system time of the client's process only, from `os.wait4`, interpreter start-up
  included; peak RSS: that process's `ru_maxrss`; wall time: from spawning it to its exit.
- AWS API calls, counted twice: by the client (botocore's `before-send` event, once per HTTP request, retries
  included: vmguard's own call counter, and for Custodian a handler added by `bench/c7n_run.py` around its unchanged
  `custodian` command) and by the emulator's own request log.
- Seeding is deterministic (fixed seeds for values and ids) and not measured.
- The emulator is moto with its CloudWatch datapoints and EC2 tags indexed (`bench/moto_index.py`: moto's own code
  answers, over what can match). Stock moto scans every stored datapoint for each query and period, and every tag
  for each resource it describes: at 1,000 instances its answers to vmguard's GetMetricData outlast botocore's read
  timeout. Wall times still mostly measure the emulator; API calls and client CPU measure the clients.
"""

SECTION_ORDER = ("Scan", "Launch", "Heartbeat", "Daemon memory", "Store")
"""The sections this package writes, by heading prefix, in the order they appear."""


@dataclass(frozen=True)
class Section:
    heading: str
    """Without the leading ``## ``."""
    body: str

    def text(self) -> str:
        return f"## {self.heading}\n\n{self.body.strip()}\n"


def split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text before the first ``## `` heading, [(heading, the section's text including its heading line)])."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(heading, "".join(lines)) for heading, lines in sections]


def _rank(heading: str, order: Sequence[str]) -> int | None:
    for rank, prefix in enumerate(order):
        if heading.startswith(prefix):
            return rank
    return None


def _sort_key(heading: str, order: Sequence[str]) -> tuple[int, int, str]:
    """By kind, then by size (``Scan: 100 instances`` before ``Scan: 1,000 instances``)."""
    rank = _rank(heading, order)
    size = re.search(r"\d[\d,]*", heading)
    return (rank if rank is not None else len(order), int(size.group().replace(",", "")) if size else 0, heading)


def replace_sections(text: str, new: Iterable[Section], intro: str = INTRO,
                     order: Sequence[str] = SECTION_ORDER) -> str:
    """``text`` with the intro and the given sections replaced (or added among this package's sections, in order);
    every other section kept as it was, in place."""
    _, sections = split(text)
    fresh = {section.heading: section.text() for section in new}
    merged = [(heading, fresh.pop(heading, body)) for heading, body in sections]
    for heading, body in sorted(fresh.items(), key=lambda item: _sort_key(item[0], order)):
        key = _sort_key(heading, order)
        position = len(merged)
        mine = [i for i, (existing, _) in enumerate(merged) if _rank(existing, order) is not None]
        after = [i for i in mine if _sort_key(merged[i][0], order) > key]
        if after:
            position = after[0]
        elif mine:
            position = mine[-1] + 1
        merged.insert(position, (heading, body))
    parts = [intro.rstrip() + "\n"]
    parts.extend("\n" + body.rstrip() + "\n" for _, body in merged)
    return "".join(parts)


def update(path: Path, new: Iterable[Section]) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_sections(text, list(new)))


# -- formatting ----------------------------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table; ``align``: one character per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def count(n: float | int | None) -> str:
    return "—" if n is None else f"{n:,.0f}"


def seconds(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def mib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    """vmguard / peer, as a decimal, and as 1/N when below one tenth."""
    if ours is None or theirs in (None, 0):
        return "—"
    value = ours / theirs
    if value and value < 0.1:
        return f"{value:.4f} (1/{theirs / ours:,.0f})"
    return f"{value:.2f}"


def verdict(met: bool) -> str:
    return "**met**" if met else "**MISSED**"


def header(command: str, date: str, machine: str, versions: dict[str, str], wall_seconds: float | None = None,
           in_make_bench: bool = False) -> str:
    """The lines every section starts with: how to reproduce it, when, where, with what."""
    took = f" · the case took {wall_seconds:,.0f} s" if wall_seconds is not None else ""
    part = " (part of `make bench`)" if in_make_bench else ""
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    return (f"Command: `{command}`{part} · {date}{took}  \n"
            f"Machine: {machine}  \n"
            f"Versions: {listed}")

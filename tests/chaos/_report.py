"""The chaos suite's summary: one row per broker and scenario, printed at the end of
the run (`conftest.py`) and written to `$CHAOS_REPORT` when that is set.

Scenarios record their row before they assert, so a failing scenario still shows what
it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Row", "record", "rows", "table"]


@dataclass
class Row:
    broker: str
    scenario: str
    jobs: int = 0
    faults: int = 0
    lost: int = 0
    overlapping: int | None = 0  # None: not measured by that scenario
    stuck: int = 0
    notes: list[str] = field(default_factory=list)


_ROWS: dict[tuple[str, str], Row] = {}


def record(
    broker: str,
    scenario: str,
    *,
    jobs: int,
    faults: int,
    lost: int,
    overlapping: int | None,
    stuck: int,
    note: str = "",
) -> None:
    """Add to the row of (broker, scenario): counts add up over the tests of a row."""
    row = _ROWS.setdefault((broker, scenario), Row(broker, scenario))
    row.jobs += jobs
    row.faults += faults
    row.lost += lost
    if overlapping is None or row.overlapping is None:
        row.overlapping = None
    else:
        row.overlapping += overlapping
    row.stuck += stuck
    if note:
        row.notes.append(note)


def rows() -> list[Row]:
    return sorted(_ROWS.values(), key=lambda r: (r.broker, r.scenario))


def table() -> str:
    """A Markdown table of every recorded row."""
    lines = [
        "| broker | scenario | jobs | faults | lost | overlapping runs | stuck | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows():
        notes = "; ".join(r.notes)
        lines.append(
            f"| {r.broker} | {r.scenario} | {r.jobs} | {r.faults} | {r.lost} "
            f"| {'n/a' if r.overlapping is None else r.overlapping} | {r.stuck} | {notes} |"
        )
    return "\n".join(lines)

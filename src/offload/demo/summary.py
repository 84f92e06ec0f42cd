"""What a demo run measured (`DemoSummary`, with its verdict `ok`), and how it is
printed (`render_summary`): the sign-up latency beside the SMTP delay it avoided, the
delivery accounting, the story's lines.

Apart from the orchestrator (`run.py`): the summary is the demo's result, a value its
callers (the CLI, the tests) read, whatever ran to produce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table

__all__ = ["DemoSummary", "percentile", "render_summary"]


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What a run measured. `ok` is the demo's verdict: every email exactly once.

    Attributes:
        latency_p50_ms / latency_p99_ms: sign-up request latency, as the client saw it.
        smtp_delay_ms: how long the SMTP server took per message (what a synchronous
            sign-up would have waited for, at least once per attempt).
        delivered: distinct emails (by Message-ID) the sign-up users received.
        users_emailed_once: sign-up users whose inbox holds exactly one message.
        duplicates: messages accepted again under a Message-ID already delivered.
        retries: sum over jobs of attempts beyond the first (from the broker).
        refused: 451 answers of the SMTP server (each should cost one retry).
    """

    signups: int
    accepted: int
    latency_p50_ms: float
    latency_p99_ms: float
    smtp_delay_ms: float
    failure_rate: float
    delivered: int
    users_emailed_once: int
    duplicates: int
    retries: int
    refused: int
    dead: int
    expired: int
    wall_s: float
    timed_out: bool
    workdir: str
    story: tuple[str, ...] = ()
    story_ok: bool = True

    @property
    def ok(self) -> bool:
        return (
            not self.timed_out
            and self.story_ok
            and self.accepted == self.signups
            and self.delivered == self.signups
            and self.users_emailed_once == self.signups
            and self.duplicates == 0
            and self.dead == 0
        )


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (0 for no values): the smallest value that at least
    `p` percent of the values do not exceed."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def render_summary(s: DemoSummary) -> Group:
    """The summary: latency next to the delay it avoided, the delivery accounting, the
    resend story, and the verdict."""
    table = Table(
        title=f"offload demo: {s.signups} sign-ups", title_justify="left", show_header=False
    )
    table.add_column("")
    table.add_column("", justify="right")
    table.add_column("", style="dim")
    table.add_row("sign-ups answered 201", f"{s.accepted} / {s.signups}")
    table.add_row(
        "sign-up latency p50 / p99",
        f"{s.latency_p50_ms:.1f} / {s.latency_p99_ms:.1f} ms",
        "never waits for the email",
    )
    table.add_row(
        "SMTP delay per message", f"{s.smtp_delay_ms:.0f} ms", f"{s.failure_rate:.0%} refused (451)"
    )
    table.add_section()
    table.add_row(
        "emails delivered", f"{s.delivered} / {s.signups}", f"{s.users_emailed_once} users got one"
    )
    table.add_row("duplicates", str(s.duplicates), "Message-ID seen twice")
    table.add_row("retries", str(s.retries), f"{s.refused} SMTP refusals")
    table.add_row("dead letters", str(s.dead))
    table.add_row("expired", str(s.expired))
    table.add_row("wall time", f"{s.wall_s:.1f} s", "timed out" if s.timed_out else "")
    verdict = (
        "[bold green]every email delivered exactly once"
        if s.ok
        else "[bold red]not every email was delivered exactly once"
    )
    return Group(table, *s.story, verdict, f"[dim]databases and logs: {s.workdir}")

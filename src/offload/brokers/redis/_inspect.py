"""Inspection on Redis: counts, one job (by id or key), listings, and the dead-letter
operations (`replay_dead`, `purge_dead`).

What the CLI, the dashboard and the tests use, kept apart from the worker's hot path in
`__init__.py`. Jobs live in per-queue keys, so each of these runs one script or a few
commands per known queue (pipelined) and merges the replies: a job id or an
idempotency key is looked up in every queue, and `list_jobs` merges the newest of each.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from offload.brokers.base import Finished, JobInfo, Outcome, Page, QueueStats
from offload.brokers.records import minute_of
from offload.brokers.redis import keys as K
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._records import job_info, num, text
from offload.brokers.redis._scripts import Call
from offload.clock import Clock
from offload.codec import decode_value
from offload.envelope import JobState

__all__ = ["Inspector"]

#: Most jobs `list_jobs` inspects per script call when it walks the listing set.
SCAN_BUDGET = 2000
#: A state whose own set holds at most this many jobs of a queue is listed from that
#: set, read whole, instead of by walking the listing set: a few dead jobs among a
#: million are found at once (`list_jobs.lua`). Above it the state is common enough
#: that walking finds a page within a budget or two.
DIRECT_MAX = 10_000
_OUTCOMES = frozenset(o.value for o in Outcome)
_STATE_ORDER = (
    JobState.SCHEDULED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.DEAD,
    JobState.EXPIRED,
    JobState.CANCELLED,
)


@dataclass(frozen=True, slots=True)
class _Span:
    """A time range of `list_jobs` as `list_jobs.lua` takes it: the creation times (''
    when unbounded), then the lex range of the `created` index that holds them."""

    since: float | None
    until: float | None

    @property
    def args(self) -> list[str]:
        since, until = self.since, self.until
        return [
            "" if since is None else num(since),
            "" if until is None else num(until),
            "-" if since is None else "[" + K.created_prefix(since),
            "+" if until is None else "(" + K.created_prefix(until, after=True),
        ]


class Inspector:
    """Counts, one job, listings and the dead-letter operations, on an `Executor`."""

    def __init__(self, x: Executor, clock: Clock) -> None:
        self._x = x
        self._clock = clock

    async def counts(self, queues: Sequence[str] | None) -> dict[str, QueueStats]:
        names = await self._x.known_queues() if queues is None else list(dict.fromkeys(queues))
        replies = await self._x.run_many([("counts", self._x.q(q), []) for q in names])
        out: dict[str, QueueStats] = {}
        for queue, reply in zip(names, replies, strict=True):
            states = {s: int(n) for s, n in zip(_STATE_ORDER, reply[:7], strict=True)}
            oldest = None if reply[7] in (None, False, 0) else float(reply[7])
            out[queue] = QueueStats(states, oldest)
        return dict(sorted(out.items()))

    async def finished(self, since: float, queues: Sequence[str] | None) -> list[Finished]:
        """One HGETALL of each queue's `finished` hash, pipelined (a few hundred fields
        each at most: `sweep` keeps two hours)."""
        names = await self._x.known_queues() if queues is None else list(dict.fromkeys(queues))
        replies = await self._x.commands([("HGETALL", self._x.q(q).finished) for q in names])
        first = minute_of(since)
        out: list[Finished] = []
        for queue, reply in zip(names, replies, strict=True):
            pairs = (
                reply.items()
                if isinstance(reply, dict)
                else zip(reply[::2], reply[1::2], strict=True)
            )
            for field, n in pairs:
                minute, _, outcome = text(field).partition(":")
                if minute.isdigit() and int(minute) >= first and outcome in _OUTCOMES:
                    out.append(Finished(queue, int(minute), Outcome(outcome), int(n)))
        return sorted(out, key=lambda f: (f.queue, f.minute, f.outcome))

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await self._fetch(await self._x.known_queues(), job_id)

    async def _fetch(
        self, names: Sequence[str], job_id: str, expanded: bool = False
    ) -> JobInfo | None:
        """The job with its progress, from the first of `names` that holds it. A payload
        without its record is a job still in its queue's inbox: the inbox is expanded
        (`expand.lua`) and the job read again."""
        commands: list[tuple[Any, ...]] = [("GET", K.progress_key(self._x.prefix, job_id))]
        for queue in names:
            q = self._x.q(queue)
            commands += [("HGET", q.record, job_id), ("HGET", q.payload, job_id)]
            commands.append(("HGET", q.result, job_id))
        progress, *replies = await self._x.commands(commands)
        for n, queue in enumerate(names):
            raw, payload, result = replies[3 * n : 3 * n + 3]
            if raw is None and payload is not None and not expanded:
                await self._x.run("expand", self._x.q(queue), [])
                return await self._fetch([queue], job_id, expanded=True)
            if raw is not None:
                info = job_info(job_id, queue, raw, payload, result)
                return info if progress is None else replace(info, progress=decode_value(progress))
        return None

    async def find(self, key: str) -> JobInfo | None:
        names = await self._x.known_queues()
        ids = await self._x.commands([("HGET", self._x.q(q).keys, key) for q in names])
        for queue, job_id in zip(names, ids, strict=True):
            if job_id is not None:
                return await self._fetch([queue], text(job_id))
        return None

    async def list_jobs(
        self,
        queue: str | None,
        state: JobState | None,
        limit: int,
        cursor: str | None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        names = [queue] if queue else await self._x.known_queues()
        want = limit + 1
        span = _Span(since, until)
        found = await asyncio.gather(
            *(self._list_queue(q, state, want, cursor or "", span) for q in names)
        )
        merged = heapq.nlargest(want, (item for items in found for item in items))
        infos = [job_info(*item[1:]) for item in merged]
        if len(infos) <= limit:
            return Page(infos, None)
        return Page(infos[:limit], merged[limit - 1][0] if limit > 0 else None)

    async def _list_queue(
        self, queue: str, state: JobState | None, want: int, below: str, span: _Span
    ) -> list[tuple[str, str, str, bytes, bytes, bytes | None]]:
        items: list[tuple[str, str, str, bytes, bytes, bytes | None]] = []
        wanted = "" if state is None else JobState(state).value
        while len(items) < want:
            args = [below, wanted, str(want - len(items)), str(SCAN_BUDGET), str(DIRECT_MAX)]
            reply = await self._x.run("list_jobs", self._x.q(queue), args + span.args)
            # A member of `created` starts with 15 digits of creation time (keys.py).
            id_at = 42 if text(reply[2]) == "created" else 27
            for i in range(3, len(reply), 4):
                member = text(reply[i])
                job_id = member[id_at:]
                items.append((member, job_id, queue, reply[i + 1], reply[i + 2], reply[i + 3]))
            below = text(reply[0])
            if reply[1] or not below:
                break
        return items

    async def replay_dead(self, queue: str | None, job_ids: Sequence[str] | None) -> int:
        if job_ids is not None and not job_ids:
            return 0
        names = [queue] if queue else await self._x.known_queues()
        now = num(self._clock.now())
        ids = list(job_ids or [])
        calls: list[Call] = [
            ("replay_dead", self._x.q(q), [now, self._x.channel(q), *ids]) for q in names
        ]
        return sum(int(n) for n in await self._x.run_many(calls))

    async def purge_dead(
        self,
        queue: str | None,
        job_ids: Sequence[str] | None,
        older_than: float | None,
    ) -> int:
        if job_ids is not None and not job_ids:
            return 0
        names = [queue] if queue else await self._x.known_queues()
        cutoff = "" if older_than is None else num(self._clock.now() - older_than)
        ids = list(job_ids or [])
        calls: list[Call] = [("purge_dead", self._x.q(q), [cutoff, *ids]) for q in names]
        return sum(int(n) for n in await self._x.run_many(calls))

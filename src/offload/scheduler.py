"""The leaderless scheduler: enqueue every fire of the app's schedules, once.

Run as many replicas as you like (`offload scheduler`, or `offload worker
--scheduler` in every worker). Each replica computes the same fire instants and
enqueues each under the key `schedule:{id}:{fire_ts}`; the broker stores a key once,
so a tick seen by three replicas is one job. Nothing else is shared and nothing is
locked, so a replica that dies holds nothing up.

Each replica keeps, per schedule, a cursor in memory: the time up to which it has
handled ticks. `tick(now)` handles the ticks in `(cursor, now]`:

- a tick at most `grace` old is on time and is enqueued (subject to `overlap`);
- an older tick was *missed*, and `misfire` decides: `skip` none, `run_once` the
  latest, `run_all` each of the latest `max_catch_up`.

A replica that starts has no cursor. The jobs are the scheduler's only memory: it
looks up the keys of the last `max_catch_up + 1` ticks older than the grace, newest
first, and resumes after the newest that exists, so the ticks after it are missed ones
and those before it are done. If none exists (a new schedule, or a downtime longer
than that look-back) only the latest tick fires, if it is on time: nothing is caught
up, nothing fires twice. Fire jobs are kept (result TTL) at least as long as the
look-back spans, so a restarted replica finds them.

Overlap is judged against the newest fire this replica has enqueued or found (not
merely the previous tick, which may itself have been skipped for overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Literal

import msgspec

from offload.codec import encode_envelope
from offload.job import ACTIVE_STATES
from offload.schedule import ScheduleEntry, utc_iso
from offload.task import Call, make_overrides

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Broker
    from offload.clock import Clock

__all__ = ["Fire", "Scheduler"]

logger = logging.getLogger("offload.scheduler")

#: Longest sleep of `run()` between ticks, in seconds, when no fire is due sooner;
#: bounds how late a replica notices a schedule's change of clock.
MAX_SLEEP_S = 1.0
#: `run()` wakes this long (seconds) after a fire instant, so that tick includes it.
WAKE_LAG_S = 0.005

#: What one replica did with one tick.
Outcome = Literal["enqueued", "existing", "replaced", "overlap_skipped", "missed"]


@dataclass(frozen=True, slots=True)
class Fire:
    """One tick as a replica handled it. `existing`: another replica (or an earlier
    tick of this one) had enqueued it; `missed`: dropped by the misfire policy."""

    schedule_id: str
    fire_ts: int
    key: str
    outcome: Outcome
    job_id: str | None = None


@dataclass(slots=True)
class _State:
    cursor: float  # ticks at or before this are handled
    last_key: str | None  # the newest fire enqueued or found: the overlap reference
    next_fire: int  # the first tick after the cursor (fast path)


class Scheduler:
    """Enqueues the fires of `app.schedules` (or of the ids in `only`).

    Args:
        clock: time source (default: the app's); `tick(now)` also takes `now`.
        only: schedule ids to run, default all.
    """

    def __init__(
        self, app: Offload, *, clock: Clock | None = None, only: Iterable[str] | None = None
    ) -> None:
        self.app = app
        self.clock = clock or app.clock
        self._only = set(only) if only is not None else None
        self._states: dict[str, _State] = {}
        self._stopping = asyncio.Event()

    @property
    def entries(self) -> list[ScheduleEntry]:
        return [e for e in self.app.schedules.values() if self._only is None or e.id in self._only]

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return after the current tick. Safe from a signal handler."""
        self._stopping.set()

    async def run(self) -> None:
        """Tick until `stop()`, waking at each fire instant (at least every second)."""
        await self.app.connected_broker()
        logger.info(
            "scheduler started: %d schedules",
            len(self.entries),
            extra={"action": "scheduler_started"},
        )
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("scheduler tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._sleep_s())
        logger.info("scheduler stopped", extra={"action": "scheduler_stopped"})

    def _sleep_s(self) -> float:
        now = self.clock.now()
        due = min((s.next_fire for s in self._states.values()), default=now + MAX_SLEEP_S)
        return min(max(due - now + WAKE_LAG_S, 0.0), MAX_SLEEP_S)

    # -- one tick ----------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[Fire]:
        """Handle every tick due at or before `now` (default: the clock's time) that
        this replica has not handled yet; returns what it did with each."""
        now = self.clock.now() if now is None else now
        broker = await self.app.connected_broker()
        fires: list[Fire] = []
        for entry in self.entries:
            fires.extend(await self._tick_entry(broker, entry, now))
        return fires

    async def _tick_entry(self, broker: Broker, entry: ScheduleEntry, now: float) -> list[Fire]:
        state = self._states.get(entry.id)
        if state is None:
            state = self._states[entry.id] = await self._resume(broker, entry, now)
        if state.next_fire > now:
            return []
        missed, on_time = _due(entry, state.cursor, now)
        chosen = _catch_up(entry, missed)
        fires = [Fire(entry.id, f, entry.key(f), "missed") for f in missed if f not in chosen]
        if fires:
            logger.warning(
                "schedule %s: %d missed ticks skipped (misfire=%s), latest %s",
                entry.id,
                len(fires),
                entry.misfire,
                utc_iso(fires[-1].fire_ts),
                extra={"action": "skipped", "schedule": entry.id},
            )
        due = [*chosen, *on_time]
        keep_s = entry.keep_s(due[0], due[-1]) if due else 0.0
        for fire_ts in due:
            fires.append(await self._fire(broker, entry, state, fire_ts, now, keep_s))
        state.cursor = now
        state.next_fire = next(entry.schedule.after(now))
        return fires

    async def _resume(self, broker: Broker, entry: ScheduleEntry, now: float) -> _State:
        """A fresh replica's cursor: after the newest missed-window tick that exists."""
        horizon = now - entry.grace_s
        probes = 0
        for fire_ts in entry.schedule.until(horizon):
            info = await broker.find(entry.key(fire_ts))
            if info is not None:
                return _State(fire_ts, entry.key(fire_ts), next(entry.schedule.after(fire_ts)))
            probes += 1
            if probes > entry.max_catch_up:
                break
        # Nothing to resume from: only the latest tick, if on time, is due (a
        # per-second schedule must not fire the whole grace window at its first start).
        _latest, previous = islice(entry.schedule.until(now), 2)
        cursor = max(horizon, previous)
        return _State(cursor, None, next(entry.schedule.after(cursor)))

    async def _fire(
        self,
        broker: Broker,
        entry: ScheduleEntry,
        state: _State,
        fire_ts: int,
        now: float,
        keep_s: float,
    ) -> Fire:
        key = entry.key(fire_ts)
        outcome: Outcome = "enqueued"
        if entry.overlap != "allow":
            # Another replica may have enqueued it: then it is the overlap reference
            # (and must not be judged against itself).
            existing = await broker.find(key)
            if existing is not None:
                state.last_key = key
                return Fire(entry.id, fire_ts, key, "existing", existing.id)
        if entry.overlap != "allow" and state.last_key is not None:
            previous = await broker.find(state.last_key)
            if previous is not None and previous.state in ACTIVE_STATES:
                if entry.overlap == "skip":
                    logger.info(
                        "schedule %s: tick %s skipped, job %s still %s",
                        entry.id,
                        utc_iso(fire_ts),
                        previous.id,
                        previous.state,
                        extra={"action": "skipped", "schedule": entry.id, "job_id": previous.id},
                    )
                    return Fire(entry.id, fire_ts, key, "overlap_skipped", previous.id)
                await broker.cancel(previous.id)
                outcome = "replaced"
        job_id, created = await self._enqueue(broker, entry, fire_ts, now, keep_s)
        state.last_key = key
        if not created:
            return Fire(entry.id, fire_ts, key, "existing", job_id)
        logger.info(
            "schedule %s: tick %s enqueued as job %s",
            entry.id,
            utc_iso(fire_ts),
            job_id,
            extra={"action": "enqueued", "schedule": entry.id, "job_id": job_id},
        )
        return Fire(entry.id, fire_ts, key, outcome, job_id)

    async def _enqueue(
        self, broker: Broker, entry: ScheduleEntry, fire_ts: int, now: float, keep_s: float
    ) -> tuple[str, bool]:
        """Enqueue one fire under its key, kept long enough for `_resume` to find it."""
        task = self.app.tasks.get(entry.task)
        defaults = task.defaults if task is not None else None
        overrides = make_overrides(key=entry.key(fire_ts))
        call = Call(entry.args, dict(entry.kwargs))
        envelope = self.app._envelope(entry.task, call, defaults, overrides, now)
        own_ttl = defaults.result_ttl_s if defaults is not None else None
        ttl_s = max(own_ttl or broker.retention_s, keep_s)
        envelope = msgspec.structs.replace(envelope, result_ttl_s=ttl_s)
        [result] = await broker.enqueue([(envelope, encode_envelope(envelope))])
        return result.id, result.created


def _due(entry: ScheduleEntry, cursor: float, now: float) -> tuple[list[int], list[int]]:
    """Ticks in (cursor, now], ascending: the missed ones (only the newest
    `max_catch_up`, since no policy uses more) and the on-time ones."""
    missed: list[int] = []
    on_time: list[int] = []
    for fire_ts in entry.schedule.until(now):
        if fire_ts <= cursor:
            break
        if now - fire_ts <= entry.grace_s:
            on_time.append(fire_ts)
        elif len(missed) < entry.max_catch_up:
            missed.append(fire_ts)
        else:
            break
    return missed[::-1], on_time[::-1]


def _catch_up(entry: ScheduleEntry, missed: list[int]) -> list[int]:
    if entry.misfire == "run_all":
        return missed
    if entry.misfire == "run_once":
        return missed[-1:]
    return []

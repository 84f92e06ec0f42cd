"""The leaderless scheduler: enqueue every fire of the app's schedules, once.

Run as many replicas as you like (`offload scheduler`, or `offload worker
--scheduler` in every worker). Each replica computes the same fire instants and
enqueues each under the key `schedule:{id}:{fire_ts}`; the broker stores a key once,
so a tick seen by three replicas is one job. Nothing is locked, so a replica that dies
holds nothing up; with `overlap` `skip` or `replace` the broker also keeps each
schedule's current fire (below).

Each replica keeps, per schedule, a cursor in memory: the time up to which it has
handled ticks. `tick(now)` handles the ticks in `(cursor, now]`:

- a tick at most `grace` old is on time and is enqueued (subject to `overlap`);
- an older tick was *missed*, and `misfire` decides: `skip` none, `run_once` the
  latest, `run_all` each of the latest `max_catch_up`.

A replica that starts has no cursor. The broker is the scheduler's only memory: it
looks up the keys of the last `max_catch_up + 1` ticks older than the grace, newest
first, and resumes after the newest that exists, so the ticks after it are missed ones
and those before it are done. If none exists (a new schedule, or a downtime longer
than that look-back) only the latest tick fires, if it is on time: nothing is caught
up, nothing fires twice. Fire jobs are kept (result TTL) at least as long as the
look-back spans, so a restarted replica finds them.

A paused schedule (`offload schedules pause ID`, `offload.pausing`) fires nothing: each
tick moves its cursor past the ticks that fell in the pause, so a resume fires from
the next tick on and catches none up (a replica that starts after the resume treats
the pause as downtime, under the misfire policy).

Overlap (`skip`, `replace`) is decided by the broker, never by a replica's memory: the
broker keeps each schedule's current fire in the register `schedule:{id}`
(`Broker.compare_and_set`). A replica fires tick T only by moving the register from the
current fire C to T, and only if C's job has ended (`skip`) or after deciding to cancel
it (`replace`). The move is atomic, so of the replicas that saw C end, one moves it and
the others learn T (or a later tick) from the broker: two fires of one schedule are
never unfinished at once, however many replicas start, lag or disagree. A replica that
moved the register and died before its enqueue leaves a fire without a job; the next
replica to look enqueues it under its key, if that fire is still within the grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from offload import pausing, validation
from offload._health import BrokerHealth
from offload.envelope import ACTIVE_STATES
from offload.errors import BrokerError, ConfigurationError
from offload.options import Call, make_overrides
from offload.schedule import ScheduleEntry, utc_iso

if TYPE_CHECKING:
    from offload.brokers.base import Broker, JobInfo
    from offload.clock import Clock
    from offload.producer import Producer

__all__ = ["Fire", "Scheduled", "Scheduler"]

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


#: Most times one tick re-reads the schedule's register after another replica moved it.
MAX_ROUNDS = 8
#: How often (seconds) a schedule whose ticks keep failing is logged again.
FAILURE_LOG_S = 60.0


@dataclass(slots=True)
class _State:
    cursor: float  # ticks at or before this are handled
    current: int | None  # the current fire as last seen: a first guess, the broker decides
    next_fire: int  # the first tick after the cursor (fast path)


class Scheduled(Protocol):
    """What a scheduler reads of its app (an `Offload`): the schedules, the producer
    that enqueues their fires, and the queues whose broker it probes."""

    @property
    def producer(self) -> Producer: ...

    @property
    def schedules(self) -> Mapping[str, ScheduleEntry]: ...

    def queues(self) -> list[str]: ...


class Scheduler:
    """Enqueues the fires of `app.schedules` (or of the ids in `only`).

    Args:
        app: the schedules and their producer (an `Offload`).
        clock: time source (default: the producer's); `tick(now)` also takes `now`.
        only: schedule ids to run, default all.
    """

    def __init__(
        self, app: Scheduled, *, clock: Clock | None = None, only: Iterable[str] | None = None
    ) -> None:
        self.producer = app.producer
        self.schedules = app.schedules
        self._queues = app.queues
        self.clock = clock or app.producer.clock
        self._only = set(only) if only is not None else None
        self._states: dict[str, _State] = {}
        self._failing: dict[str, float] = {}  # schedule id -> when its failure was logged
        self._stopping = asyncio.Event()

    @property
    def entries(self) -> list[ScheduleEntry]:
        return [e for e in self.schedules.values() if self._only is None or e.id in self._only]

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run()` return after the current tick. Safe from a signal handler."""
        self._stopping.set()

    async def run(self) -> None:
        """Tick until `stop()`, waking at each fire instant (at least every second).
        A broker outage is logged once, and ticks are retried with backoff meanwhile
        (what they missed is then handled by the misfire policy)."""
        health = BrokerHealth(logger, probe=self._probe)
        if not await health.reach(self.producer.connected_broker, self._stopping):
            return
        await self.check(await self.producer.connected_broker())
        logger.info(
            "scheduler started: %d schedules",
            len(self.entries),
            extra={"action": "scheduler_started"},
        )
        await health.every("scheduler tick", self._sleep_s, self.tick, self._stopping)
        logger.info("scheduler stopped", extra={"action": "scheduler_stopped"})

    async def check(self, broker: Broker) -> None:
        """Refuse now a broker that cannot keep what the schedules need (a fire's job
        looked up by its key, the fire registers): RabbitMQ or SQS without a state
        store. Else every tick failed on it, logged with a traceback each time, for as
        long as the scheduler (or a `--scheduler` worker) ran. An outage now is left to
        the ticks, which ride it out.

        Raises:
            ConfigurationError: naming the schedules and the setting that gives a store.
        """
        entries = self.entries
        if not entries:
            return
        try:
            await broker.find(entries[0].key(0))
        except ConfigurationError as exc:
            ids = ", ".join(entry.id for entry in entries)
            raise ConfigurationError(f"the schedules ({ids}) cannot run: {exc}") from exc
        except BrokerError:
            return

    async def _probe(self) -> None:
        """A cheap call that reaches the broker (see `BrokerHealth`)."""
        await self.producer.broker.next_due(self._queues())

    def _sleep_s(self) -> float:
        now = self.clock.now()
        due = min((s.next_fire for s in self._states.values()), default=now + MAX_SLEEP_S)
        return min(max(due - now + WAKE_LAG_S, 0.0), MAX_SLEEP_S)

    # -- one tick ----------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[Fire]:
        """Handle every tick due at or before `now` (default: the clock's time) that
        this replica has not handled yet; returns what it did with each."""
        now = self.clock.now() if now is None else now
        broker = await self.producer.connected_broker()
        held = (await pausing.paused(broker)).schedules
        fires: list[Fire] = []
        for entry in self.entries:
            if entry.id in held:
                self._hold(entry, now)
                continue
            try:
                fires.extend(await self._tick_entry(broker, entry, now))
            except BrokerError:
                raise  # an outage: `run()` retries the whole tick with backoff
            except Exception:
                # One schedule whose fire cannot be enqueued (its job refused by the
                # broker, say SQS's size limit) used to fail the whole tick: no other
                # schedule fired either. Its ticks stay due and are tried again.
                self._failed(entry)
            else:
                if self._failing.pop(entry.id, None) is not None:
                    logger.info("schedule %s: fires again", entry.id)
        return fires

    def _failed(self, entry: ScheduleEntry) -> None:
        """Log a schedule's failed tick: with its traceback the first time, then once a
        minute until it fires again."""
        now = time.monotonic()
        last = self._failing.get(entry.id)
        if last is None or now - last >= FAILURE_LOG_S:
            self._failing[entry.id] = now
            logger.exception(
                "schedule %s: its tick failed; the other schedules go on, it is tried again",
                entry.id,
                extra={"action": "schedule_failed", "schedule": entry.id},
            )

    def _hold(self, entry: ScheduleEntry, now: float) -> None:
        """A paused schedule (`offload.pausing`): its ticks up to `now` are handled by
        firing nothing, so a resume starts from the next tick and catches none up."""
        state = self._states.get(entry.id)
        if state is None:
            state = self._states[entry.id] = _State(now, None, 0)
        state.cursor = now
        state.next_fire = next(entry.schedule.after(now))

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
                return _State(fire_ts, fire_ts, next(entry.schedule.after(fire_ts)))
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
        if entry.overlap == "allow":
            job_id, created = await self._enqueue(broker, entry, fire_ts, now, keep_s)
            return self._fired(entry, fire_ts, "enqueued" if created else "existing", job_id)
        register = f"schedule:{entry.id}"
        ttl_s = max(keep_s, broker.retention_s)
        current = state.current
        for _ in range(MAX_ROUNDS):
            if current is not None and current >= fire_ts:
                state.current = current
                return await self._decided(broker, entry, fire_ts, current, now, keep_s)
            unfinished = None
            if current is not None:
                unfinished = await self._unfinished(broker, entry, current, now)
            if current is not None and unfinished is not None and entry.overlap == "skip":
                # Still the current fire? (Renews the register; adopts the fire if the
                # register is unset: it lapsed, or an older offload fired it.)
                held = await broker.compare_and_set(
                    register, str(current), str(current), ttl_s=ttl_s
                )
                if held is None:
                    held = await broker.compare_and_set(register, None, str(current), ttl_s=ttl_s)
                if held == str(current):
                    state.current = current
                    return self._skipped(entry, fire_ts, unfinished)
            else:
                expected = None if current is None else str(current)
                held = await broker.compare_and_set(register, expected, str(fire_ts), ttl_s=ttl_s)
                if held == str(fire_ts):
                    state.current = fire_ts
                    if unfinished is not None:  # replace
                        await broker.cancel(unfinished.id)
                    job_id, created = await self._enqueue(broker, entry, fire_ts, now, keep_s)
                    outcome: Outcome = "enqueued" if unfinished is None else "replaced"
                    return self._fired(entry, fire_ts, outcome if created else "existing", job_id)
            current = None if held is None else int(held)  # another replica moved it
        logger.warning(
            "schedule %s: tick %s not decided, the schedule's fire kept moving",
            entry.id,
            utc_iso(fire_ts),
            extra={"action": "skipped", "schedule": entry.id},
        )
        return Fire(entry.id, fire_ts, entry.key(fire_ts), "overlap_skipped")

    async def _unfinished(
        self, broker: Broker, entry: ScheduleEntry, current: int, now: float
    ) -> JobInfo | None:
        """The job of the schedule's current fire if it is unfinished, else None.

        A fire moved into the register but without a job yet (its replica is between
        the two steps, or died there) is enqueued now on its behalf if still on time,
        else counts as ended (as does a job purged after its result TTL)."""
        info = await broker.find(entry.key(current))
        if info is None and now - current <= entry.grace_s:
            keep_s = entry.keep_s(current, current)
            job_id, _ = await self._enqueue(broker, entry, current, now, keep_s)
            info = await broker.get_job(job_id)
        return info if info is not None and info.state in ACTIVE_STATES else None

    async def _decided(
        self,
        broker: Broker,
        entry: ScheduleEntry,
        fire_ts: int,
        current: int,
        now: float,
        keep_s: float,
    ) -> Fire:
        """A tick the broker has already decided: it is the current fire (enqueue it,
        in case its replica died before doing so), or a later tick has fired."""
        if current == fire_ts:
            job_id, created = await self._enqueue(broker, entry, fire_ts, now, keep_s)
            return self._fired(entry, fire_ts, "enqueued" if created else "existing", job_id)
        existing = await broker.find(entry.key(fire_ts))
        if existing is not None:
            return Fire(entry.id, fire_ts, entry.key(fire_ts), "existing", existing.id)
        return Fire(entry.id, fire_ts, entry.key(fire_ts), "overlap_skipped")

    def _skipped(self, entry: ScheduleEntry, fire_ts: int, previous: JobInfo) -> Fire:
        logger.info(
            "schedule %s: tick %s skipped, job %s still %s",
            entry.id,
            utc_iso(fire_ts),
            previous.id,
            previous.state,
            extra={"action": "skipped", "schedule": entry.id, "job_id": previous.id},
        )
        return Fire(entry.id, fire_ts, entry.key(fire_ts), "overlap_skipped", previous.id)

    def _fired(self, entry: ScheduleEntry, fire_ts: int, outcome: Outcome, job_id: str) -> Fire:
        if outcome != "existing":
            logger.info(
                "schedule %s: tick %s enqueued as job %s",
                entry.id,
                utc_iso(fire_ts),
                job_id,
                extra={"action": "enqueued", "schedule": entry.id, "job_id": job_id},
            )
        return Fire(entry.id, fire_ts, entry.key(fire_ts), outcome, job_id)

    async def _enqueue(
        self, broker: Broker, entry: ScheduleEntry, fire_ts: int, now: float, keep_s: float
    ) -> tuple[str, bool]:
        """Enqueue one fire under its key, kept long enough for `_resume` to find it."""
        task = self.producer.tasks.get(entry.task)
        defaults = task.defaults if task is not None else None
        overrides = make_overrides(key=entry.key(fire_ts))
        call = Call(entry.args, dict(entry.kwargs))
        envelope = self.producer.envelope(entry.task, call, overrides, now)
        own_ttl = defaults.result_ttl_s if defaults is not None else None
        ttl_s = max(own_ttl or broker.retention_s, keep_s)
        envelope = msgspec.structs.replace(envelope, result_ttl_s=ttl_s)
        hooks = self.producer.hooks
        if not hooks:
            items = [validation.checked(envelope)]
            [result] = await broker.enqueue(items)
            return result.id, result.created
        envelope = hooks.before_enqueue(envelope)
        items = [(envelope, b"")]
        try:  # a hook's `before_enqueue` is always answered (Tracing ends its span)
            items = [validation.checked(envelope)]
            results = await broker.enqueue(items)
        except BaseException as exc:
            self.producer.not_sent(items, exc)
            raise
        [result] = self.producer.sent(items, results)
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

"""The leaderless scheduler on every broker, driven by a FakeClock: replicas, restarts,
daylight saving, overlap and misfire policies."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from offload import Cron, Every, JobState, Offload, Scheduler
from offload.brokers.base import Broker, JobInfo, Lease
from offload.envelope import ACTIVE_STATES, Envelope
from offload.hooks import Hook
from offload.schedule import Misfire, Overlap
from offload.testing import FakeClock


def on(broker: Broker, clock: FakeClock) -> Offload:
    """An app whose broker is the test's (one per replica, as in separate processes)."""
    app = Offload("memory://", clock=clock)
    app.broker = broker
    return app


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


async def all_jobs(broker: Broker) -> list[JobInfo]:
    jobs: list[JobInfo] = []
    cursor = None
    while True:
        page = await broker.list_jobs(limit=500, cursor=cursor)
        jobs.extend(page.items)
        if page.cursor is None:
            return jobs
        cursor = page.cursor


def fired(jobs: list[JobInfo]) -> dict[str, list[int]]:
    """Fire instants per schedule id, from the jobs' keys."""
    out: dict[str, list[int]] = {}
    for job in jobs:
        assert job.key is not None
        _, schedule_id, ts = job.key.split(":")
        out.setdefault(schedule_id, []).append(int(ts))
    return {k: sorted(v) for k, v in out.items()}


# -- 3 replicas, 48 simulated hours, both DST changes -----------------------------------

#: Wall-clock rules, matched by hand (not by croniter) to compute the expected fires.
CRONS: dict[str, tuple[str, Callable[[datetime], bool]]] = {
    "daily-0230": ("30 2 * * *", lambda w: (w.hour, w.minute) == (2, 30)),
    "daily-0130": ("30 1 * * *", lambda w: (w.hour, w.minute) == (1, 30)),
    "hourly": ("0 * * * *", lambda w: w.minute == 0),
    "quarter": ("*/15 * * * *", lambda w: w.minute % 15 == 0),
}
#: Two windows of 24 hours around each change: 48 simulated hours per zone.
TRANSITIONS = {
    "Europe/Paris": [utc(2025, 3, 30, 1), utc(2025, 10, 26, 1)],
    "America/New_York": [utc(2025, 3, 9, 7), utc(2025, 11, 2, 6)],
}


def expected_fires(tz: str, start: int, end: int) -> dict[str, list[int]]:
    """Every fire in (start, end], minute by minute in UTC: a cron fires at the first
    occurrence of a matching wall time (fold=0), and once at the end of a spring gap if
    a wall time inside the gap matches."""
    zone = ZoneInfo(tz)
    out: dict[str, list[int]] = {name: [] for name in [*CRONS, "every-10m"]}
    for minute in range(start // 60 + 1, end // 60 + 1):
        ts = minute * 60
        wall = datetime.fromtimestamp(ts, zone)
        before = datetime.fromtimestamp(ts - 60, zone)
        skipped: list[datetime] = []  # wall times the clock jumped over, before `wall`
        if (wall.utcoffset() or timedelta()) > (before.utcoffset() or timedelta()):  # spring
            last_wall = before.replace(tzinfo=None)
            minutes = int((wall.replace(tzinfo=None) - last_wall).total_seconds() // 60)
            skipped = [last_wall + timedelta(minutes=k) for k in range(1, minutes)]
        for name, (_, match) in CRONS.items():
            if (match(wall) and wall.fold == 0) or any(match(w) for w in skipped):
                out[name].append(ts)
        if ts % 600 == 0:
            out["every-10m"].append(ts)
    return out


@dataclass
class Replica:
    app: Offload
    scheduler: Scheduler | None = None


@pytest.mark.parametrize("tz", sorted(TRANSITIONS))
async def test_three_replicas_fire_every_tick_exactly_once_across_dst(
    broker: Broker, clock: FakeClock, tz: str
) -> None:
    # Given three replicas of the same app (overlap allowed: no worker runs the jobs)
    replicas = []
    for _ in range(3):
        app = on(broker, clock)
        for name, (expr, _) in CRONS.items():
            app.schedule("report", Cron(expr, tz=tz), id=name, overlap="allow", misfire="run_all")
        app.schedule("report", Every(600), id="every-10m", overlap="allow", misfire="run_all")
        replicas.append(Replica(app))
    rng = random.Random(f"dst-{tz}")
    enqueued: Counter[str] = Counter()
    expected: dict[str, list[int]] = {}
    for transition in TRANSITIONS[tz]:
        # When each ticks at random moments for 24 hours around a DST change, killed,
        # restarted and stalling at random (ticks minutes apart, past the 60 s grace)
        start = transition - 12 * 3600 + 300  # HH:05, no tick within the grace before it
        end = transition + 12 * 3600
        for name, fires in expected_fires(tz, start - 60, end).items():
            expected.setdefault(name, []).extend(fires)
        for r in replicas:
            r.scheduler = None  # months later: every replica starts afresh
        now = start
        clock.set(now)
        await _step(replicas, rng, enqueued, final=True)
        while now < end:
            now = min(now + rng.randint(30, 600), end)
            clock.set(now)
            await _step(replicas, rng, enqueued, final=now == end)
    # Then the jobs are exactly the expected fires, each enqueued by one replica only
    jobs = await all_jobs(broker)
    assert fired(jobs) == expected
    assert len(jobs) == sum(map(len, expected.values())) == sum(enqueued.values())
    assert len(jobs) == len({j.key for j in jobs})
    assert set(enqueued.values()) == {1}


async def _step(
    replicas: list[Replica], rng: random.Random, enqueued: Counter[str], *, final: bool
) -> None:
    for r in rng.sample(replicas, len(replicas)):
        if r.scheduler is None:
            if rng.random() < 0.3 or final:
                r.scheduler = Scheduler(r.app)  # (re)start: no memory but the jobs
            else:
                continue
        elif rng.random() < 0.1 and not final:
            r.scheduler = None  # killed
            continue
        elif rng.random() < 0.3 and not final:
            continue  # stalled: misses this moment
        for fire in await r.scheduler.tick():
            if fire.outcome == "enqueued":
                enqueued[fire.key] += 1


# -- restarts --------------------------------------------------------------------------------


async def test_restarted_replica_does_not_fire_again(broker: Broker, clock: FakeClock) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(60), overlap="allow")
    clock.set(6000)
    first = await Scheduler(app).tick()
    assert [(f.fire_ts, f.outcome) for f in first] == [(6000, "enqueued")]
    clock.set(6030)
    again = await Scheduler(app).tick()  # a fresh replica within the grace
    assert [(f.fire_ts, f.outcome) for f in again] == [(6000, "existing")]
    assert len(await all_jobs(broker)) == 1


async def test_new_schedule_does_not_catch_up_the_past(broker: Broker, clock: FakeClock) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(60), misfire="run_all")
    clock.set(6030)  # the 6000 tick is on time (grace 60 s); earlier ones never existed
    assert [f.fire_ts for f in await Scheduler(app).tick()] == [6000]
    assert [f.outcome for f in await Scheduler(app).tick()] == ["existing"]


async def test_first_start_fires_only_the_latest_tick_of_the_grace_window(
    broker: Broker, clock: FakeClock
) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(1), overlap="allow")
    s = Scheduler(app)
    assert [f.fire_ts for f in await s.tick(6000.5)] == [6000]  # not 5941..6000
    assert [f.fire_ts for f in await s.tick(6003.2)] == [6001, 6002, 6003]


# -- misfire -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("misfire", "caught_up"),
    [("skip", []), ("run_once", [6180]), ("run_all", [6060, 6120, 6180])],
)
@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "stalled"])
async def test_misfire_policy_after_downtime(
    broker: Broker, clock: FakeClock, misfire: Misfire, caught_up: list[int], restart: bool
) -> None:
    # Given a schedule that last fired at 6000 (every minute, grace 60 s)
    app = on(broker, clock)
    app.schedule("t", Every(60), overlap="allow", misfire=misfire, max_catch_up=4)
    scheduler = Scheduler(app)
    await scheduler.tick(6000)
    # When no scheduler ticked until 6250: 6060, 6120, 6180 missed, 6240 on time
    if restart:
        scheduler = Scheduler(app)
    fires = await scheduler.tick(6250)
    # Then the policy decides which missed ticks run; the on-time one always does
    assert [f.fire_ts for f in fires if f.outcome == "enqueued"] == [*caught_up, 6240]
    assert fired(await all_jobs(broker))["t"] == [6000, *caught_up, 6240]
    dropped = [f.fire_ts for f in fires if f.outcome == "missed"]
    assert dropped == [t for t in (6060, 6120, 6180) if t not in caught_up]


async def test_run_all_is_bounded_by_max_catch_up(broker: Broker, clock: FakeClock) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(60), overlap="allow", misfire="run_all", max_catch_up=4)
    scheduler = Scheduler(app)
    await scheduler.tick(6000)
    fires = await scheduler.tick(6630)  # 6060..6540 missed (9), 6600 on time
    assert [f.fire_ts for f in fires if f.outcome == "enqueued"] == [6360, 6420, 6480, 6540, 6600]


async def test_restart_after_downtime_longer_than_the_look_back_catches_up_nothing(
    broker: Broker, clock: FakeClock
) -> None:
    """A fresh replica cannot tell a long downtime from a new schedule (or a purged
    history): it catches up nothing rather than risk firing a tick twice."""
    app = on(broker, clock)
    app.schedule("t", Every(60), overlap="allow", misfire="run_all", max_catch_up=4)
    await Scheduler(app).tick(6000)
    fires = await Scheduler(app).tick(6630)  # 9 missed > look-back of 4 + 1
    assert [(f.fire_ts, f.outcome) for f in fires] == [(6600, "enqueued")]


async def test_catch_up_happens_once_across_replicas(broker: Broker, clock: FakeClock) -> None:
    apps = [on(broker, clock) for _ in range(4)]
    for app in apps:
        app.schedule("t", Every(60), overlap="allow", misfire="run_once")
    await Scheduler(apps[0]).tick(6000)
    late = [Scheduler(app) for app in apps[1:]]
    results = [await s.tick(6245) for s in late]  # 6060..6180 missed, 6240 on time
    assert [f.outcome for f in results[0]] == ["missed", "missed", "enqueued", "enqueued"]
    assert [f.outcome for f in results[1]] == [f.outcome for f in results[2]] == ["existing"]
    assert fired(await all_jobs(broker))["t"] == [6000, 6180, 6240]


# -- overlap -----------------------------------------------------------------------------------


async def _start_running(broker: Broker) -> Lease:
    [lease] = await broker.reserve(["default"], worker_id="w", lease_s=3600, limit=1)
    return lease


@pytest.mark.parametrize(
    ("overlap", "outcomes"),
    [
        ("skip", ["enqueued", "overlap_skipped", "overlap_skipped", "enqueued"]),
        ("allow", ["enqueued", "enqueued", "enqueued", "enqueued"]),
        ("replace", ["enqueued", "replaced", "replaced", "replaced"]),
    ],
)
async def test_overlap_policy(
    broker: Broker, clock: FakeClock, overlap: Overlap, outcomes: list[str]
) -> None:
    # Given a job of the 6000 tick that runs past the next two ticks
    app = on(broker, clock)
    app.schedule("t", Every(60), overlap=overlap)
    s = Scheduler(app)
    seen = [f.outcome for f in await s.tick(6000)]
    lease = await _start_running(broker)
    seen += [f.outcome for f in await s.tick(6060)]
    seen += [f.outcome for f in await s.tick(6120)]
    # When it finishes before the fourth tick
    await broker.ack(lease, None, result_ttl_s=None)
    seen += [f.outcome for f in await s.tick(6180)]
    # Then skip waited for it, allow did not, replace cancelled each unfinished one
    assert seen == outcomes
    states = {str(j.key): j.state for j in await all_jobs(broker)}
    if overlap == "replace":
        assert states == {
            "schedule:t:6000": JobState.SUCCEEDED,  # running: flagged, not stopped
            "schedule:t:6060": JobState.CANCELLED,
            "schedule:t:6120": JobState.CANCELLED,
            "schedule:t:6180": JobState.QUEUED,
        }
    if overlap == "skip":
        assert sorted(states) == ["schedule:t:6000", "schedule:t:6180"]


async def test_overlap_skip_compares_with_the_last_enqueued_fire_not_the_last_tick(
    broker: Broker, clock: FakeClock
) -> None:
    app = on(broker, clock)
    app.schedule("t", Every(60))
    s = Scheduler(app)
    await s.tick(6000)
    await _start_running(broker)
    assert [f.outcome for f in await s.tick(6060)] == ["overlap_skipped"]
    # 6060 was never enqueued; 6120 must still wait for the 6000 job
    assert [f.outcome for f in await s.tick(6120)] == ["overlap_skipped"]
    # and so must a replica that starts now (it takes 6060, skipped for overlap, for a
    # missed tick, since it cannot tell; misfire=run_once tries it, and waits too)
    fresh = await Scheduler(app).tick(6180)
    assert [(f.fire_ts, f.outcome) for f in fresh] == [
        (6060, "overlap_skipped"),
        (6120, "overlap_skipped"),
        (6180, "overlap_skipped"),
    ]


async def test_fire_jobs_outlive_the_look_back(broker: Broker, clock: FakeClock) -> None:
    app = on(broker, clock)

    @app.task(result_ttl=10)
    def t() -> None: ...

    app.schedule(t, Every(3600), max_catch_up=5, grace=60)
    [fire] = await Scheduler(app).tick(7200)
    job = await broker.get_job(fire.job_id or "")
    assert job is not None
    envelope = job.envelope()
    assert envelope is not None and envelope.result_ttl_s == 6 * 3600 + 60


# -- overlap decided by the broker: fresh replicas, replicas that disagree ---------------------


async def _end(broker: Broker, lease: Lease | None) -> None:
    """Finish the fire's job: run it now if it still waits, then ack it."""
    if lease is None:
        lease = await _start_running(broker)
    await broker.ack(lease, None, result_ttl_s=None)


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
async def test_a_fresh_replica_does_not_fire_while_the_last_fire_is_unfinished(
    broker: Broker, clock: FakeClock, running: bool
) -> None:
    # Given replica A fired the 6000 tick (every minute; a tick stays on time for 5 min)
    apps = [on(broker, clock) for _ in range(3)]
    for app in apps:
        app.schedule("t", Every(60), grace=300)
    await Scheduler(apps[0]).tick(6000)
    lease = await _start_running(broker) if running else None
    # When a new replica, with no memory, ticks at the next fire while that job is unfinished
    fresh = await Scheduler(apps[1]).tick(6060)
    # Then it enqueues nothing
    assert [(f.fire_ts, f.outcome) for f in fresh] == [(6060, "overlap_skipped")]
    assert fired(await all_jobs(broker))["t"] == [6000]
    # and once the job has ended, the next tick fires (seen by yet another new replica)
    await _end(broker, lease)
    after = await Scheduler(apps[2]).tick(6120)
    assert [(f.fire_ts, f.outcome) for f in after] == [(6120, "enqueued")]
    assert fired(await all_jobs(broker))["t"] == [6000, 6120]


async def test_a_fresh_replica_replaces_the_unfinished_fire(
    broker: Broker, clock: FakeClock
) -> None:
    apps = [on(broker, clock) for _ in range(2)]
    for app in apps:
        app.schedule("t", Every(60), grace=300, overlap="replace")
    await Scheduler(apps[0]).tick(6000)
    [fire] = await Scheduler(apps[1]).tick(6060)  # a new replica, no memory
    assert (fire.fire_ts, fire.outcome) == (6060, "replaced")
    states = {str(j.key): j.state for j in await all_jobs(broker)}
    assert states == {"schedule:t:6000": JobState.CANCELLED, "schedule:t:6060": JobState.QUEUED}


async def _unfinished(broker: Broker) -> list[str]:
    """Fires whose job may still run: waiting or running, and not asked to stop."""
    jobs = [j for s in ACTIVE_STATES for j in (await broker.list_jobs(state=s, limit=100)).items]
    return sorted(str(j.key) for j in jobs if not j.cancel_requested)


@pytest.mark.parametrize("overlap", ["skip", "replace"])
async def test_replicas_that_disagree_never_leave_two_fires_unfinished(
    broker: Broker, clock: FakeClock, overlap: Overlap
) -> None:
    """Three replicas tick at once, each lagging at random and restarted at random,
    while a worker runs each fire for longer than several ticks."""
    apps = [on(broker, clock) for _ in range(3)]
    for app in apps:
        app.schedule("t", Every(10), overlap=overlap, grace=60)
    rng = random.Random(f"disagree-{overlap}")
    schedulers: list[Scheduler | None] = [None, None, None]
    running: list[tuple[Lease, float]] = []  # the worker's jobs, and when each ends
    now = 100_000
    ran = 0
    for _ in range(120):
        now += rng.choice([1, 3, 5, 10, 12])
        clock.set(now)
        for lease, ends in list(running):
            if ends <= now:
                running.remove((lease, ends))
                await broker.ack(lease, None, result_ttl_s=None)
        for lease in await broker.reserve(["default"], worker_id="w", lease_s=3600, limit=5):
            running.append((lease, now + rng.uniform(5, 45)))
            ran += 1
        ticks = []
        for i, app in enumerate(apps):
            if schedulers[i] is None or rng.random() < 0.15:
                schedulers[i] = Scheduler(app)  # (re)started: no memory
            scheduler = schedulers[i]
            if scheduler is not None and rng.random() < 0.8:
                ticks.append(scheduler.tick(now - rng.choice([0, 0, 1, 4, 9, 15])))
        await asyncio.gather(*ticks)
        assert len(await _unfinished(broker)) <= 1
    assert ran >= 10  # the schedule kept firing


@pytest.mark.parametrize(("late", "outcomes"), [(60, ["overlap_skipped"]), (120, ["enqueued"])])
async def test_a_fire_whose_replica_died_before_enqueueing_it_is_enqueued_by_the_next(
    broker: Broker, clock: FakeClock, late: int, outcomes: list[str]
) -> None:
    # Given a replica that made the 6000 tick the current fire, then died before its job
    app = on(broker, clock)
    app.schedule("t", Every(60))
    assert await broker.compare_and_set("schedule:t", None, "6000", ttl_s=3600) == "6000"
    # When another replica ticks later
    fires = await Scheduler(app).tick(6000 + late)
    # Then within the grace it enqueues that fire (and waits for it); later, the fire
    # counts as missed and the new tick fires
    assert [f.outcome for f in fires] == outcomes
    expected = [6000] if late == 60 else [6120]
    assert fired(await all_jobs(broker))["t"] == expected


async def test_a_schedule_whose_look_back_outlasts_the_longest_ttl_still_fires(
    broker: Broker, clock: FakeClock
) -> None:
    """A leap-day cron's 11-tick look-back spans 44 years, past the longest result
    TTL a job may have (~31 years): its fire used to be refused at every tick
    (`result_ttl must be ... at most 1000000000`), so the schedule never ran."""
    app = on(broker, clock)
    app.schedule("t", Cron("0 0 29 2 *"), id="leap")
    fires = await Scheduler(app).tick(utc(2028, 2, 29) + 5)
    assert [(f.fire_ts, f.outcome) for f in fires] == [(utc(2028, 2, 29), "enqueued")]
    # And a restarted replica finds that fire, so it does not fire it again.
    assert await Scheduler(app).tick(utc(2028, 2, 29) + 120) == []


async def test_a_fire_that_cannot_be_enqueued_is_answered_to_the_hooks(
    broker: Broker, clock: FakeClock
) -> None:
    """A refused fire, tried again at every tick, had its `before_enqueue` but never
    its `after_enqueue`: with `--scheduler --tracing` a worker kept one unended `send`
    span per tick (a second) for as long as the schedule stayed broken."""
    heard: list[tuple[str, str, bool]] = []

    class Record(Hook):
        def before_enqueue(self, envelope: Envelope) -> Envelope | None:
            heard.append(("before", envelope.id, False))
            return None

        def after_enqueue(
            self, envelope: Envelope, created: bool | None, error: BaseException | None
        ) -> None:
            heard.append(("after", envelope.id, error is not None))

    class BadQueue(Hook):
        def before_enqueue(self, envelope: Envelope) -> Envelope | None:
            return msgspec.structs.replace(envelope, queue="a,b")  # refused by the check

    app = on(broker, clock)
    app.add_hook(Record())
    app.add_hook(BadQueue())
    app.schedule("bad", Every(60), overlap="allow")
    scheduler = Scheduler(app)
    assert await scheduler.tick(6000) == []
    assert await scheduler.tick(6001) == []
    sent = [job_id for kind, job_id, _ in heard if kind == "before"]
    assert len(sent) == 2  # one try per tick
    assert [(job_id, failed) for kind, job_id, failed in heard if kind == "after"] == [
        (job_id, True) for job_id in sent
    ]


async def test_a_schedule_whose_fire_cannot_be_enqueued_does_not_stop_the_others(
    broker: Broker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A fire the producer refuses (here a hook gives it a queue name no broker takes;
    in life, say, arguments past SQS's message size) failed the whole tick, so no
    schedule of the app fired, on any replica, until it was fixed. Now that schedule's
    ticks stay due and are tried again, and the others fire."""
    broken = {"on": True}

    class BadQueue(Hook):
        def before_enqueue(self, envelope: Envelope) -> Envelope | None:
            if envelope.task == "bad" and broken["on"]:
                return msgspec.structs.replace(envelope, queue="a,b")
            return None

    app = on(broker, clock)
    app.add_hook(BadQueue())
    app.schedule("bad", Every(60), overlap="allow")
    app.schedule("good", Every(60), overlap="allow")
    scheduler = Scheduler(app)
    fires = await scheduler.tick(6000)
    assert [(f.schedule_id, f.fire_ts, f.outcome) for f in fires] == [("good", 6000, "enqueued")]
    assert "schedule bad: its tick failed" in caplog.text
    broken["on"] = False
    fires = await scheduler.tick(6001)  # the failed tick is still due, and fires now
    assert [(f.schedule_id, f.fire_ts, f.outcome) for f in fires] == [("bad", 6000, "enqueued")]

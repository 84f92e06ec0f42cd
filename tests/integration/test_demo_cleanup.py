"""The sign-up demo's nightly cleanup: a cron schedule that deletes sign-ups whose code
expired long ago and were never verified."""

from __future__ import annotations

import time
from pathlib import Path

from offload import Cron, JobState, Scheduler, Worker
from offload.demo.signup import CLEANUP_AFTER_S, CLEANUP_TASK, DemoConfig, build

DAY_S = 24 * 3600.0


async def test_nightly_cleanup_deletes_only_long_expired_unverified_users(
    tmp_path: Path,
) -> None:
    demo = build(DemoConfig(db_path=str(tmp_path / "users.db")), "memory://")
    users = demo.users
    stale = users.create("stale@example.com", "Stale", ttl_s=-8 * DAY_S)
    recent = users.create("recent@example.com", "Recent", ttl_s=-1 * DAY_S)
    fresh = users.create("fresh@example.com", "Fresh", ttl_s=900)
    verified = users.create("verified@example.com", "Verified", ttl_s=900)
    assert stale and recent and fresh and verified
    assert users.verify("verified@example.com", verified.code).value == "ok"
    with users._connect() as conn:  # verified long ago, its code long expired since
        conn.execute(
            "UPDATE users SET code_expires_at = ? WHERE id = ?",
            (time.time() - 30 * DAY_S, verified.id),
        )

    entry = demo.app.schedules[CLEANUP_TASK]
    assert isinstance(entry.schedule, Cron)
    assert (entry.schedule.expr, entry.schedule.tz) == ("0 3 * * *", "UTC")
    nightly = entry.schedule.next_fires(time.time(), 1)[0]
    fires = await Scheduler(demo.app).tick(nightly + 5)
    assert [(f.fire_ts, f.outcome) for f in fires] == [(nightly, "enqueued")]

    assert await Worker(demo.app).drain() == 1
    job = demo.app.job(fires[0].job_id or "")
    assert await job.state_async() is JobState.SUCCEEDED
    assert await job.result_async() == 1
    assert users.by_email("stale@example.com") is None
    for kept in ("recent", "fresh", "verified"):
        assert users.by_email(f"{kept}@example.com") is not None
    assert users.delete_expired(CLEANUP_AFTER_S) == 0  # idempotent
    await demo.app.aclose()
    users.close()

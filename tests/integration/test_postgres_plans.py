"""PostgreSQL: reserve's plans do not depend on the table's statistics (0013).

The planner costs each statement of `offload_reserve_v2` from the table's statistics.
When they understate the ready jobs (analyzed before a burst arrived, or never analyzed
after a million rows were inserted), it took the ready jobs by a scan that reads all of
them plus a sort, instead of the ordered walk of offload_jobs_ready that stops at the
limit: milliseconds per reserve at 10,000 queued instead of 0.08 ms. The plans are
read from the server itself (auto_explain, reported to the client as notices).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("psycopg")

import psycopg

from offload.brokers.postgres import PostgresBroker

#: Jobs to reserve, far fewer than are queued: an ordered walk stops after this many.
LIMIT = 100


def insert(conn: psycopg.Connection[Any], prefix: str, state: str, n: int) -> None:
    """`n` jobs in `state`: due (and created) at time 1 to n, a running one leased until
    far ahead, a scheduled one due far ahead; none expires."""
    conn.execute(
        "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at,"
        " lease_deadline, payload)"
        " SELECT %(prefix)s || g, 'default', 't', %(state)s, 1,"
        " CASE WHEN %(state)s = 'scheduled' THEN 1e12 ELSE g END,"
        " CASE WHEN %(state)s = 'running' THEN 1e12 END, '\\x7b7d'::bytea"
        " FROM generate_series(1, %(n)s) AS g",
        {"prefix": prefix, "state": state, "n": n},
    )


#: Each step of the reserve function (a line of its text) and the partial index that
#: answers it.
STEPS = {
    "s.state = 'scheduled'": "offload_jobs_scheduled",
    "r.state = 'running'": "offload_jobs_running",
    "w.expires_at IS NOT NULL": "offload_jobs_expiry",
    "WITH picked AS": "offload_jobs_ready",
}


def reserve_plans(conn: psycopg.Connection[Any]) -> list[str]:
    """The executed plan of every statement one reserve call runs, rolled back."""
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:  # not a superuser, or the module is not installed
        pytest.skip(f"auto_explain is not available: {exc}")
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_timing = off",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_level = notice",
        "client_min_messages = notice",
    ):
        conn.execute(f"SET {setting}")
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    with conn.transaction(force_rollback=True):
        leased = conn.execute(
            "SELECT id FROM offload_reserve_v2(ARRAY['default'], 'w', 1e9, 30, %s,"
            " 'lapsed', 60, NULL)",
            (LIMIT,),
        ).fetchall()
    assert len(leased) == LIMIT
    return plans


async def test_reserve_walks_its_partial_indexes_in_order_with_stale_statistics(
    postgres_url: str,
) -> None:
    # Given statistics taken when 20 of 20,000 jobs were queued and none running or
    # scheduled, then 5,000 more queued, 5,000 running and 5,000 scheduled for later,
    broker = PostgresBroker(postgres_url)
    await broker.connect()
    await broker.close()
    options = f"-c search_path={broker.settings.schema}"
    with psycopg.connect(broker.settings.conninfo, autocommit=True, options=options) as conn:
        conn.execute("ALTER TABLE offload_jobs SET (autovacuum_enabled = off)")
        insert(conn, "done-", "succeeded", 20_000)
        insert(conn, "early-", "queued", 20)
        conn.execute("ANALYZE offload_jobs")
        insert(conn, "burst-", "queued", 5_000)
        insert(conn, "busy-", "running", 5_000)
        insert(conn, "later-", "scheduled", 5_000)
        plans = reserve_plans(conn)

    # a reserve takes the ready jobs by an ordered walk of offload_jobs_ready that stops
    # at the limit (before 0013: an index scan of offload_jobs_queue_state reading all
    # 5,020, then a sort),
    [picked] = [plan for plan in plans if "WITH picked" in plan]
    [scan] = [line for line in picked.splitlines() if " on offload_jobs r " in line]
    assert "Index Scan using offload_jobs_ready " in scan, picked
    assert re.search(rf"actual rows={LIMIT} loops=1", scan), picked
    assert "Sort Key: r." not in picked, picked
    # every other step reads only its own partial index's range (before 0013, lapsed
    # leases were looked for among all 5,000 running jobs, via offload_jobs_state),
    for step, index in STEPS.items():
        [plan] = [plan for plan in plans if step in plan]
        assert f"Index Scan using {index} on offload_jobs" in plan, plan
        assert "Rows Removed by Filter" not in plan, plan
    # and no statement of it reads the table whole, by bitmap, or compiles (JIT).
    for plan in plans:
        assert "Bitmap Heap Scan" not in plan, plan
        assert "Seq Scan on offload_jobs" not in plan, plan
        assert "JIT:" not in plan, plan

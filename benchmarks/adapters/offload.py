"""offload itself, on Redis (when `offload.brokers.redis` exists) and on SQLite.

Workers: K separate `python -m offload worker adapters.offload:app --concurrency 100
--prefetch 100` commands (one process each, as a deployment runs them), the settings
`benchmarks/throughput.py` uses; the handler is `async def`, offload's documented fast
path (run on the worker's loop, no thread hop). `offload-redis-def` is the same with a
plain `def` handler (the style of the README's examples) and `--concurrency 8`: 8
threads, as Huey's `-w 8` and Dramatiq's `-t 8`. Bulk enqueue: `task.enqueue_many` (one
broker round trip per call).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adapters import _probe
from adapters.base import Adapter, python
from offload import Offload

#: The worker processes read their URL from here (set by the adapter below).
URL_ENV = "BENCH_OFFLOAD_URL"

app = Offload(os.environ.get(URL_ENV, "memory://"))


@app.task(name="noop")
async def noop(t: float) -> None:
    _probe.record(t)
    await _probe.aio()


@app.task(name="noop_def")
def noop_def(t: float) -> None:
    _probe.record(t)
    _probe.io()


def redis_available() -> bool:
    try:
        import offload.brokers.redis  # noqa: F401
    except ImportError:
        return False
    return "redis" in __import__("offload.brokers", fromlist=["SCHEMES"]).SCHEMES


class _OffloadAdapter(Adapter):
    bulk_api = "`noop.enqueue_many(...)`"
    url = ""
    #: The task the jobs run, and the worker's `--concurrency`.
    task: Any = noop
    concurrency = 100

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        self.app = Offload(self.url)
        self.noop = self.app.task(name=self.task.name)(self.task.fn)

    def _one(self, t: float) -> None:
        self.noop.enqueue(t)

    def _bulk(self, n: int) -> None:
        self.noop.enqueue_many([(0.0,)] * n)

    def _delayed(self, n: int, delay_s: float) -> None:
        delayed = self.noop.options(delay=delay_s)
        for start in range(0, n, 1000):
            delayed.enqueue_many([(0.0,)] * min(1000, n - start))

    def workers(self, processes: int) -> list[list[str]]:
        return [
            [python(), "-m", "offload", "worker", "adapters.offload:app",
             "--concurrency", str(self.concurrency), "--prefetch", "100",
             "--log-level", "warning"]
            for _ in range(processes)
        ]  # fmt: skip

    def worker_env(self) -> dict[str, str]:
        env = super().worker_env()
        env[URL_ENV] = self.url
        return env

    def close(self) -> None:
        self.app.close()


class OffloadRedis(_OffloadAdapter):
    name = "offload (Redis)"
    config = "offload worker, async handler, --concurrency 100 --prefetch 100"

    def __init__(self, redis_url: str, workdir: Path) -> None:
        if not redis_available():
            raise RuntimeError("not available: offload.brokers.redis has not landed")
        self.url = redis_url
        super().__init__(redis_url, workdir)


class OffloadRedisDef(OffloadRedis):
    name = "offload (Redis), `def`"
    config = "offload worker, plain `def` handler, --concurrency 8 (threads) --prefetch 100"
    task = noop_def
    concurrency = 8


class OffloadSQLite(_OffloadAdapter):
    name = "offload (SQLite)"
    config = "as offload (Redis), on `sqlite:///` in a temp dir (WAL)"

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.db = workdir / "bench.db"
        self.url = f"sqlite:///{self.db}"
        super().__init__(redis_url, workdir)

    def storage_bytes(self) -> int | None:
        """File bytes (database + WAL): the embedded broker's footprint."""
        return sum(p.stat().st_size for p in self.db.parent.glob(self.db.name + "*") if p.is_file())


class OffloadAmqp(_OffloadAdapter):
    """offload on RabbitMQ: `amqp_url(state)` is the URL, with the state store this
    class names (`state_url`; None: no `state=`, RabbitMQ alone)."""

    name = "offload (RabbitMQ + SQLite state)"
    config = (
        "as offload (Redis), on `amqp://` (RabbitMQ delivers) with a `sqlite:///` state "
        "store in a temp dir: every job recorded, claimed and settled in the store"
    )
    prefix = "bench-offload"
    #: The SQLite store's file, if the row has one.
    db: Path | None = None

    def __init__(self, redis_url: str, workdir: Path) -> None:
        from offload.brokers.amqp.topology import Names

        _probe.purge_amqp(Names(self.prefix).work("default"))
        self.url = self.amqp_url(self.state_url(workdir))
        super().__init__(redis_url, workdir)

    def state_url(self, workdir: Path) -> str | None:
        """The state store of this row, made empty for the phase."""
        self.db = workdir / "state.db"
        return f"sqlite:///{self.db}"

    def amqp_url(self, state: str | None) -> str:
        from urllib.parse import quote

        url = f"{_probe.amqp_url()}?prefix={self.prefix}"
        return url if state is None else f"{url}&state={quote(state, safe='')}"

    def storage_bytes(self) -> int | None:
        """The state store's file bytes (database + WAL); RabbitMQ's share is not read."""
        db = self.db
        if db is None:
            return None
        return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


class OffloadAmqpAlone(OffloadAmqp):
    """RabbitMQ without a state store: what Dramatiq and Celery keep too (nothing but
    the message), so the like-for-like row next to them."""

    name = "offload (RabbitMQ alone)"
    config = (
        "as offload (RabbitMQ + SQLite state), without a state store (`amqp://` alone: "
        "no results or lookups; attempts in a header, retries in delay queues)"
    )

    queues_in_redis = False  # nor in a store: RabbitMQ's own bytes are not read

    def state_url(self, workdir: Path) -> str | None:
        self.db = None
        return None


class OffloadAmqpPostgres(OffloadAmqp):
    """The state in PostgreSQL (`BENCH_PG_DSN`, default the local `test` database), in
    the schema `bench_amqp_state`, dropped before every phase."""

    name = "offload (RabbitMQ + PostgreSQL state)"
    config = (
        "as offload (RabbitMQ + SQLite state), with the state store in PostgreSQL "
        "(`BENCH_PG_DSN`, schema `bench_amqp_state`, dropped before every phase; async "
        "driver, no store thread)"
    )
    schema = "bench_amqp_state"
    queues_in_redis = False  # and the store's bytes are not measured (`db` is None)

    def state_url(self, workdir: Path) -> str | None:
        import psycopg

        dsn = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        return f"{dsn}{'&' if '?' in dsn else '?'}schema={self.schema}"

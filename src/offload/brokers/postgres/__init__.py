"""`postgresql://`: jobs in PostgreSQL, shared by any number of workers and machines.

- **One statement per state change.** A reservation is one call of the server-side
  function `offload_reserve_v2` (promote due jobs, reclaim lapsed leases, expire stale
  ones, then claim with `FOR UPDATE SKIP LOCKED` feeding `UPDATE ... RETURNING`); every
  other operation is one statement in autocommit mode. Partial indexes keep each step's
  cost independent of how many finished jobs the table holds.
- **No polling.** `LISTEN/NOTIFY` wakes idle workers when a job becomes ready
  (`_listener.py`); `next_due` bounds their sleep for delayed jobs. Job ends are
  notified too, so `wait_finished` returns as soon as a job ends anywhere (`_signals.py`).
- **Enqueue in the application's transaction** (`enqueue_in`, `_enqueue.py`): the job
  commits or rolls back with the application's own rows.
- **Versioned migrations** (`_sql.py`), applied by `connect()` or `offload migrate`.
- **One class per role beside the hot path**, each built on a `Database` (`_executor.py`:
  named queries and pooled connections): `Inspector` (`_inspect.py`), `Flow` (limits,
  joins, registers, outbox: `_flow.py`), `Signals` (cancel, `wait_finished`:
  `_signals.py`), `Inserter` (`_enqueue.py`), `Operations` (pause flags, attempt
  history: `_operate.py`), `Keeper` (the `Ledger` role, as the state store of a
  delivery-only broker: `_ledger.py`). Delivery (reserve, extend, release,
  `settle_many`) and the fleet are here.

The URL is libpq's, plus offload's own query parameters: `schema` (tables live in this
schema, created if needed, instead of the connection's default search_path) and
`pool_max` (connections per event loop, default 10). For example
`postgresql://app@db/app?schema=offload&sslmode=require`.

psycopg's async connections belong to the event loop that opened them, so the broker
keeps one pool (and one listener) per event loop that uses it: the worker's loop and
the sync producer's portal loop each get their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from offload._redact import dataclass_repr
from offload.brokers.base import (
    DEFAULT_RETENTION_S,
    Broker,
    Capabilities,
    Ended,
    Ending,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.ledger import Ledger
from offload.brokers.postgres import _rows
from offload.brokers.postgres._blocking import BlockingPool, unavailable
from offload.brokers.postgres._enqueue import Inserter
from offload.brokers.postgres._executor import QUERIES as _Q
from offload.brokers.postgres._executor import Connection, Database
from offload.brokers.postgres._flow import Flow
from offload.brokers.postgres._inspect import Inspector
from offload.brokers.postgres._ledger import Keeper
from offload.brokers.postgres._listener import Listener, channel_name, ends_channel
from offload.brokers.postgres._operate import Operations
from offload.brokers.postgres._pool_log import own_pool
from offload.brokers.postgres._signals import EndWaiters, Signals
from offload.brokers.postgres._sql import migrate, schema_version
from offload.brokers.records import FINISHED_KEEP_S, Outgoing, minute_of
from offload.clock import Clock
from offload.codec import encode_error, encode_value
from offload.envelope import TERMINAL_STATES, Envelope, JobState
from offload.errors import BrokerError, ConfigurationError

__all__ = ["PostgresBroker", "parse_url"]

#: Most finished jobs one `sweep` deletes: a bounded transaction; the next sweep goes on.
SWEEP_BATCH = 10_000
#: The statement that records each way a lease ends but `ack` (`ack_many`: batched).
_SETTLE = {
    Ending.RETRY: _Q["retry"],
    Ending.BURY: _Q["bury"],
    Ending.DEFER: _Q["defer"],
    Ending.CANCEL: _Q["cancel_running"],
}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_OUR_PARAMS = ("schema", "pool_max")


@dataclass(frozen=True, slots=True)
class Settings:
    conninfo: str  # for psycopg, without offload's own parameters
    schema: str | None
    pool_max: int
    channel: str  # the NOTIFY channel of this schema's jobs
    ends_channel: str  # the NOTIFY channel of this schema's job ends (`_signals.py`)

    __repr__ = dataclass_repr  # the URL keeps the password: never shown


def parse_url(url: str) -> Settings:
    """Split a broker URL into psycopg's conninfo and offload's options.

    Raises:
        ConfigurationError: a bad `schema` name or `pool_max`.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_PARAMS}
    rest = [(k, v) for k, v in query if k not in _OUR_PARAMS]
    schema = ours.get("schema") or None
    if schema is not None and not _IDENT.match(schema):
        raise ConfigurationError(f"invalid schema name {schema!r} in {url!r}")
    if schema is not None:
        rest.append(("options", f"-csearch_path={schema}"))
    try:
        pool_max = int(ours.get("pool_max", "10"))
    except ValueError:
        raise ConfigurationError(f"pool_max must be an integer in {url!r}") from None
    if pool_max < 1:
        raise ConfigurationError(f"pool_max must be at least 1 in {url!r}")
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    try:  # libpq's own parse, no connection: a typo fails here, as offload's error
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split())  # libpq's message ends with a newline
        raise ConfigurationError(
            f"{reason} in the PostgreSQL URL {url!r} (offload takes "
            f"{', '.join(_OUR_PARAMS)}, libpq its connection parameters)"
        ) from None
    channel = channel_name("offload", schema)
    return Settings(conninfo, schema, pool_max, channel, ends_channel(schema))


@dataclass(slots=True)
class _LoopState:
    pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]]
    listener: Listener
    checking: asyncio.Task[None] | None = None

    def recheck(self) -> None:
        """After a lost connection, test the pool's idle connections in the background
        and replace the dead ones: a failover, a proxy restart or a mass termination
        cuts them all, and each would otherwise fail one call of its own."""
        if self.checking is None or self.checking.done():
            self.checking = asyncio.get_running_loop().create_task(_check(self.pool))


class PostgresBroker(Broker, Ledger):
    """Jobs in PostgreSQL tables; see the module docstring."""

    capabilities = Capabilities(
        transactional_enqueue=True,
        push_wakeup=True,
        blocking_enqueue=True,
        push_results=True,
        cross_process=True,
        loop_bound=False,
    )

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        super().__init__(url, clock=clock, retention_s=retention_s)
        self.settings = parse_url(url)
        self._lock = threading.Lock()
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Task[_LoopState]] = {}
        self._ends = EndWaiters()  # `wait_finished`, for every loop of this broker
        s = self.settings
        self._db = Database(self._conn)
        self._blocking = BlockingPool(s.conninfo, s.pool_max)
        self._migrated = False  # the schema is known current (`enqueue_blocking`)
        self._enqueuer = Inserter(self._db, self.clock, schema=s.schema, channel=s.channel)
        self._keeper = Keeper(
            self._db,
            self._enqueuer,
            self.clock,
            retention_s=self.retention_s,
            ends=s.ends_channel,
        )
        self._flow = Flow(self._db, self.clock)
        self._inspector = Inspector(self._db, self.clock, s.channel)
        self._operations = Operations(self._db, self.clock)
        self._signals = Signals(
            self._db,
            self.clock,
            retention_s=retention_s,
            ends_channel=s.ends_channel,
            waiters=self._ends,
            listen_ends=self._listen_ends,
        )

    # -- plumbing -------------------------------------------------------------------------

    async def _state(self) -> _LoopState:
        """This event loop's pool and listener, opened (and the schema migrated) on the
        first call from the loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            opening = self._opening.get(loop)
            if opening is None:
                opening = loop.create_task(self._open(), name="offload-postgres-open")
                self._opening[loop] = opening
        try:
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done():
                with self._lock:
                    if self._opening.get(loop) is opening:
                        del self._opening[loop]
            raise

    async def _open(self) -> _LoopState:
        s = self.settings
        await self.migrate()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
            s.conninfo,
            min_size=1,
            max_size=s.pool_max,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="offload",
        )
        with own_pool():  # the pool's tasks, made now, inherit the mark
            await pool.open(wait=True, timeout=10)
        listener = Listener(
            s.conninfo, s.channel, ends_channel=s.ends_channel, on_ends=self._ends.on_payload
        )
        return _LoopState(pool, listener)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Connection]:
        """A pooled connection (autocommit), with psycopg's errors made ours."""
        state = await self._state()
        try:
            with own_pool():
                async with state.pool.connection() as conn:
                    yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            state.recheck()
            raise unavailable(exc) from exc
        except psycopg.Error as exc:
            raise BrokerError(f"PostgreSQL error: {exc}") from exc

    async def _listen_ends(self) -> None:
        await (await self._state()).listener.listen_ends()

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open this event loop's pool, creating or migrating the schema; idempotent.

        Raises:
            BrokerUnavailable: the server cannot be reached.
            ConfigurationError: the database schema is newer than this offload.
        """
        await self._state()

    async def migrate(self) -> tuple[int, list[int]]:
        """Create or upgrade the schema now, on a connection of its own (what
        `offload migrate` runs). Returns the schema version and the versions applied.

        Raises:
            BrokerUnavailable: the server cannot be reached.
            ConfigurationError: the database schema is newer than this offload, or the
                schema is not current and this role may not create or upgrade it.
        """
        s = self.settings
        try:
            async with await psycopg.AsyncConnection.connect(s.conninfo, autocommit=True) as conn:
                applied = await migrate(conn, s.schema)
                version = await schema_version(conn)
        except psycopg.OperationalError as exc:
            raise unavailable(exc) from exc
        except psycopg.Error as exc:
            # Not an outage that waiting ends (a role without the privilege, a
            # search_path naming no schema): one line saying so, not a traceback.
            raise ConfigurationError(
                f"cannot create or upgrade offload's tables in PostgreSQL: {exc} (run "
                "`offload migrate` with a role that may, or grant this one CREATE)"
            ) from exc
        self._migrated = True
        return version, applied

    async def close(self) -> None:
        """Close the pools and listeners of every event loop, and the sync producers'
        pool; idempotent. Another loop's are closed on that loop if it still runs (else
        they are dropped)."""
        here = asyncio.get_running_loop()
        with self._lock:
            opening, self._opening = self._opening, {}
        for loop, task in opening.items():
            if loop is here:
                await _close_state(task)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_close_state(task), loop)
                await asyncio.wrap_future(future)
        try:
            await asyncio.to_thread(self._blocking.close)
        except RuntimeError:  # at interpreter exit the default executor takes nothing new
            self._blocking.close()

    # -- producer -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        return await self._enqueuer.enqueue(jobs, max_depth)

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        """The same statement from the calling thread, on a plain psycopg pool (see
        `_blocking.py`); None for a call it leaves to `enqueue`: before this process
        has seen the schema migrated, and with `max_depth`."""
        if not self._migrated or max_depth is not None or not jobs:
            return None
        with self._blocking.connection() as conn:
            return self._enqueuer.enqueue_on_sync(conn, jobs, None)

    async def enqueue_in(
        self, connection: psycopg.AsyncConnection[Any], jobs: Sequence[tuple[Envelope, bytes]]
    ) -> list[EnqueueResult]:
        """Enqueue on the application's own connection, inside its transaction.

        Nothing is committed here: the jobs exist if and when the application commits
        (and workers are notified then), and vanish if it rolls back. The connection
        must reach the broker's database; tables are named in the URL's `schema` if it
        has one, else found through the connection's search_path.

        Raises:
            ConfigurationError: the connection is in autocommit mode outside a
                transaction block, where there is no transaction to join.
        """
        return await self._enqueuer.enqueue_in(connection, jobs)

    def enqueue_in_sync(
        self, connection: psycopg.Connection[Any], jobs: Sequence[tuple[Envelope, bytes]]
    ) -> list[EnqueueResult]:
        """`enqueue_in` on a synchronous psycopg connection (a Django, Flask or script
        transaction). Same contract; blocks for one or two statements."""
        return self._enqueuer.enqueue_in_sync(connection, jobs)

    # -- consumer -------------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        state = await self._state()
        await state.listener.start()
        state.listener.mark(queues)
        params = {
            "queues": list(dict.fromkeys(queues)),
            "worker_id": worker_id,
            "now": self.clock.now(),
            "lease_s": lease_s,
            "limit": max(limit, 0),
            "lease_error": _rows.LEASE_EXPIRED,
            "retention_s": self.retention_s,
            "ends": self.settings.ends_channel,
        }
        rows = await self._db.rows("reserve", params)
        return [
            Lease(r["id"], r["token"], r["queue"], r["attempt"], r["deadline"], bytes(r["payload"]))
            for r in rows
        ]

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job is made ready in `queues` (a NOTIFY), or after `timeout_s`.

        A delayed job that becomes due, or a lapsed lease, sends no notification: the
        caller bounds its wait with `next_due` and its poll interval.
        """
        state = await self._state()
        if await state.listener.start():  # the first: LISTEN just took effect
            rows = await self._db.rows("queued_exists", {"queues": list(queues)})
            if rows[0]["found"]:  # maybe committed before it did: look (spuriously at
                return  # worst, which the contract allows)
        await state.listener.wait(queues, timeout_s)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        rows = await self._db.rows("next_due", {"queues": list(queues)})
        due = rows[0]["min"] if rows else None
        return None if due is None else float(due)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        if not leases:
            return []
        now = self.clock.now()
        params = {
            "deadline": now + lease_s,
            "ids": [lease.job_id for lease in leases],
            "tokens": [lease.token for lease in leases],
        }
        held = {(row["id"], row["token"]) for row in await self._db.rows("extend", params)}
        return [(lease.job_id, lease.token) in held for lease in leases]

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """The acks in one statement (one round trip, one commit); the other endings
        one statement each, on one connection."""
        if not settlements:
            return []
        held = [False] * len(settlements)
        acks = [i for i, item in enumerate(settlements) if item.ending is Ending.ACK]
        if acks:
            for i, ok in zip(
                acks, await self._ack_many([settlements[i] for i in acks]), strict=True
            ):
                held[i] = ok
        if len(acks) < len(settlements):
            now = self.clock.now()
            async with self._conn() as conn:
                for i, item in enumerate(settlements):
                    if item.ending is not Ending.ACK:
                        cur = await conn.execute(
                            _SETTLE[item.ending], self._settle_params(item, now)
                        )
                        held[i] = len(await cur.fetchall()) == 1
        ended = zip(settlements, held, strict=True)
        self._ends.notify(s.lease.job_id for s, ok in ended if ok and s.state in TERMINAL_STATES)
        return held

    def _settle_params(self, item: Settlement, now: float) -> dict[str, Any]:
        """The named parameters of the settlement's query; each reads the ones it needs."""
        return {
            "id": item.lease.job_id,
            "token": item.lease.token,
            "now": now,
            "minute": minute_of(now),
            "at": item.at,
            "error": None if item.error is None else encode_error(item.error).decode(),
            "purge_at": now + self.retention_s,
            "channel": self.settings.channel,
            "ends": self.settings.ends_channel,
        }

    async def _ack_many(self, acks: Sequence[Settlement]) -> list[bool]:
        """Every ack in one statement (one round trip, one commit) for the batch."""
        now = self.clock.now()
        params = {
            "now": now,
            "minute": minute_of(now),
            "ids": [a.lease.job_id for a in acks],
            "tokens": [a.lease.token for a in acks],
            "results": [a.result for a in acks],
            "ttls": [self.retention_s if a.result_ttl_s is None else a.result_ttl_s for a in acks],
            "ends": self.settings.ends_channel,
        }
        held = {(row["id"], row["token"]) for row in await self._db.rows("ack_many", params)}
        return [(a.lease.job_id, a.lease.token) in held for a in acks]

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await self._signals.cancel_requested(leases)

    # -- ledger: the state store of a delivery-only broker (`_ledger.py`) -----------------

    async def record(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> tuple[list[EnqueueResult], list[Outgoing]]:
        return await self._keeper.record(jobs, max_depth)

    async def published(self, jobs: Sequence[Outgoing]) -> None:
        await self._keeper.published(jobs)

    async def due(self, queues: Sequence[str], *, limit: int) -> list[Outgoing]:
        return await self._keeper.due(queues, limit)

    async def claim(
        self, delivered: Sequence[Lease], *, worker_id: str, lease_s: float
    ) -> list[Lease | None]:
        return await self._keeper.claim(delivered, worker_id, lease_s)

    async def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        params = {
            "ids": [lease.job_id for lease in leases],
            "tokens": [lease.token for lease in leases],
            "channel": self.settings.channel,
        }
        await self._db.rows("release", params)

    async def cancel(self, job_id: str) -> bool:
        return await self._signals.cancel(job_id)

    async def outbox(self, limit: int = 500) -> list[Ended]:
        return await self._flow.outbox(limit)

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        return await self._flow.clear_outbox(job_ids)

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Return within a round trip of the job's end in any process (a NOTIFY on
        the ends channel), or after `timeout_s`; at once if it is terminal or unknown."""
        await self._signals.wait_finished(job_id, timeout_s)

    # -- inspection -----------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Per queue: the requested ones (even if unknown), else every known queue."""
        return await self._inspector.counts(queues)

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        return await self._inspector.finished(since, queues)

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await self._inspector.get_job(job_id)

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        await self._db.rowcount("set_progress", {"id": job_id, "progress": progress})

    async def find(self, key: str) -> JobInfo | None:
        return await self._inspector.find(key)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        """Newest first; the cursor is the `seq` of the page's last job."""
        return await self._inspector.list_jobs(queue, state, limit, cursor, since, until)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await self._inspector.workflow_jobs(workflow_id, limit)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        return await self._inspector.replay_dead(queue, job_ids)

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        purged = await self._inspector.purge_dead(queue, job_ids, older_than)
        if purged:
            await self._operations.forget_orphans()
        return purged

    async def queues(self) -> list[str]:
        return [row["name"] for row in await self._db.rows("queues", {})]

    # -- coordination and housekeeping ----------------------------------------------------

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        return await self._flow.join(group_id, member_id, index, total, outcome)

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        return await self._flow.take_rate(key, limit, per_s)

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        return await self._flow.acquire_slot(key, limit, holder, ttl_s)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._flow.release_slot(key, holder)

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        return await self._flow.compare_and_set(name, expected, new, ttl_s)

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        now = self.clock.now()
        params: dict[str, Any] = {
            "id": info.id,
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": encode_value(info.queues, what="worker queues").decode(),
            "concurrency": info.concurrency,
            "started_at": info.started_at,
            "last_seen": now,
            "running": info.running,
            "processed": info.processed,
            "extra": encode_value(info.extra, what="worker extra").decode(),
            "expires_at": now + ttl_s,
        }
        await self._db.rowcount("register_worker", params)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._db.rowcount("unregister_worker", {"id": worker_id})

    async def workers(self) -> list[WorkerInfo]:
        rows = await self._db.rows("live_workers", {"now": self.clock.now()})
        return [_rows.worker_info(row) for row in rows]

    async def sweep(self) -> SweepReport:
        now = self.clock.now()
        async with self._conn() as conn:
            ends = self.settings.ends_channel
            expire = {"now": now, "purge_at": now + self.retention_s, "ends": ends}
            expire["minute"] = minute_of(now)
            row = await (await conn.execute(_Q["expire_due"], expire)).fetchone()
            expired = row["n"] if row else 0
            purge = {"now": now, "batch": SWEEP_BATCH}
            row = await (await conn.execute(_Q["purge_finished"], purge)).fetchone()
            purged = row["n"] if row else 0
            removed = (await conn.execute(_Q["forget_lapsed_workers"], {"now": now})).rowcount
            await conn.execute(_Q["forget_idle_limits"], {"now": now})
            await conn.execute(_Q["forget_lapsed_joins"], {"before": now - self.retention_s})
            await conn.execute(_Q["progress_orphans"])
            await conn.execute(_Q["fold_counts"])  # bound the count deltas (0009)
            await conn.execute(_Q["finished_prune"], {"before": minute_of(now - FINISHED_KEEP_S)})
        if purged:
            await self._operations.forget_orphans()
        return SweepReport(expired=expired, purged=purged, workers_removed=removed)

    # -- operations: pause flags and attempt history (`_operate.py`) --------------------

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await self._operations.set_paused(name, paused)

    async def paused(self) -> dict[str, float]:
        return await self._operations.paused()

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        await self._operations.record_attempt(job_id, token, record, keep)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        return await self._operations.attempt_records(job_id)


# -- helpers ------------------------------------------------------------------------------


async def _close_state(opening: asyncio.Task[_LoopState]) -> None:
    try:
        state = await opening
    except BaseException:
        return  # never opened: nothing to close
    if state.checking is not None:
        state.checking.cancel()
        with contextlib.suppress(BaseException):
            await state.checking
    await state.listener.close()
    await state.pool.close()


async def _check(pool: AsyncConnectionPool[Any]) -> None:
    with own_pool(), contextlib.suppress(Exception):  # a closed pool, or the server still away
        await pool.check()

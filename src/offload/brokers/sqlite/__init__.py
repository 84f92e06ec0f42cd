"""`sqlite:///path/to/file.db`: the embedded default broker, durable in one file.

Several worker processes on one machine may share the file: every state change is one
`BEGIN IMMEDIATE` transaction (see `_store.py`), and the file is in WAL mode so readers
never wait for the writer.

SQLite has no way to push an event to another process. New work made ready by another
process wakes `wait` through a Unix datagram socket beside the file (`_doorbell.py`),
with a poll of `PRAGMA data_version` as the fallback; `wait_finished` is woken at once
only by the jobs this broker ends (ack, bury, cancel, expiry), and an end in another
process is seen by that poll (`push_results` is False).

The async API sits on the blocking `sqlite3` driver through one dedicated thread per
broker: each method runs its whole transaction there with `run_in_executor`, so the
connection is only ever touched by that thread, the event loop never blocks on disk or
on another process's lock, and the broker can be shared by several event loops.

URLs follow SQLAlchemy's convention: `sqlite:///jobs.db` is `jobs.db` relative to the
working directory (resolved when the broker is built), `sqlite:////var/lib/jobs.db` is
absolute. Missing parent directories are created at connect.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, TypeVarTuple
from urllib.parse import unquote, urlsplit

from offload.brokers._wakeup import JobWaiters, Wakeup
from offload.brokers.base import (
    DEFAULT_RETENTION_S,
    Broker,
    Capabilities,
    Ended,
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
from offload.brokers.records import Outgoing
from offload.brokers.sqlite import _flow, _inspect, _ledger, _operate
from offload.brokers.sqlite._doorbell import Doorbell
from offload.brokers.sqlite._store import Store
from offload.clock import Clock
from offload.envelope import TERMINAL_STATES, Envelope, JobState
from offload.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["SQLiteBroker", "database_path"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: How often `wait` asks SQLite whether another process committed, in seconds: the
#: fallback of the doorbell (`_doorbell.py`), which wakes it at once. The check reads
#: no table, so a short interval costs little.
WAIT_POLL_S = 0.015

_URL_FORMS = "sqlite:///relative/path.db or sqlite:////absolute/path.db"


def database_path(url: str) -> Path:
    """The absolute path of the file a `sqlite://` URL names.

    Raises:
        ConfigurationError: the URL has a host, options or no path, or asks for an
            in-memory database.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}; expected {_URL_FORMS}")
    path = unquote(parts.path[1:])  # drop the slash that ends the (empty) host part
    if ":memory:" in (parts.netloc, path):
        raise ConfigurationError(
            f"in-memory SQLite databases are not supported ({url!r}): every connection "
            "would see its own empty database; use memory:// for a broker in one process"
        )
    if parts.netloc:
        raise ConfigurationError(
            f"invalid sqlite URL {url!r}: a file path takes no host; expected {_URL_FORMS}"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"invalid sqlite URL {url!r}: sqlite URLs take no options")
    if not path or path.endswith("/"):
        raise ConfigurationError(f"sqlite URL {url!r} names no file; expected {_URL_FORMS}")
    return Path(path).absolute()


class _LocalSignal:
    """Wakes this broker's own waiters at once; the counter closes the gap between
    `wait` taking its starting mark and starting to listen."""

    def __init__(self) -> None:
        self.wakeup = Wakeup()
        self._lock = threading.Lock()
        self.count = 0

    def notify(self) -> None:
        with self._lock:
            self.count += 1
        self.wakeup.notify()


_State = tuple[ThreadPoolExecutor, Future[Store]]


def _invoke(opened: Future[Store], fn: Callable[[Store, *Ts], T], *args: *Ts) -> T:
    # Runs on the executor thread, after the open (the first task of that thread).
    return opened.result().run(fn, *args)


def _enqueue(
    store: Store, doorbell: Doorbell, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None
) -> tuple[list[EnqueueResult], set[str]]:
    """`Store.enqueue`, ringing the other processes' waiters from the store's thread
    right after the commit, not after the hop back to the event loop."""
    results, ready = store.enqueue(jobs, max_depth)
    if ready:
        doorbell.ring(ready)
    return results, ready


def _close_store(opened: Future[Store]) -> None:
    if opened.exception() is None:
        opened.result().close()


class SQLiteBroker(Broker, Ledger):
    """Jobs in one SQLite file, shared by the processes of one machine; also the state
    store of a delivery-only broker (`Ledger`, `_ledger.py`)."""

    capabilities = Capabilities(
        transactional_enqueue=False, push_wakeup=False, cross_process=True, loop_bound=False
    )

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        super().__init__(url, clock=clock, retention_s=retention_s)
        self.path = database_path(url)
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._signal = _LocalSignal()
        self._doorbell = Doorbell(self.path, self._signal.wakeup.notify)
        self._ended = JobWaiters()  # `wait_finished`, woken by the jobs this broker ends

    # -- plumbing -------------------------------------------------------------------------

    def _start(self) -> _State:
        """The executor and the future of its connection, started on first use."""
        with self._lock:
            if self._state is None:
                executor = ThreadPoolExecutor(1, thread_name_prefix="offload-sqlite")
                opened = executor.submit(Store.open, self.path, self.clock, self.retention_s)
                self._state = (executor, opened)
            return self._state

    def _discard(self, state: _State) -> None:
        """Forget a state whose open failed, so that the next call tries again."""
        with self._lock:
            if self._state is state:
                self._state = None
        state[0].shutdown(wait=False)

    async def _run(self, fn: Callable[[Store, *Ts], T], *args: *Ts) -> T:
        """Run `fn(store, *args)` (one transaction) on the broker's thread.

        Raises:
            BrokerUnavailable: SQLite failed in a way that may pass (locked past the
                busy timeout, I/O error, file cannot be opened), or the broker was
                closed while the call was being scheduled.
            BrokerError: any other SQLite failure.
        """
        state = self._start()
        executor, opened = state
        loop = asyncio.get_running_loop()
        try:
            pending = loop.run_in_executor(executor, _invoke, opened, fn, *args)
        except RuntimeError as exc:  # close() shut the executor down meanwhile
            raise BrokerUnavailable(f"the sqlite broker for {self.path} is closed") from exc
        try:
            return await pending
        except sqlite3.Error as exc:
            raise self._wrap(exc) from exc
        finally:
            if opened.done() and opened.exception() is not None:
                self._discard(state)

    def _notify_ended(self, job_ids: Sequence[str]) -> None:
        """Wake the `wait_finished` calls on these jobs (nothing to do, and no lock
        taken, while nobody waits: the common case on the ack path)."""
        if self._ended:
            for job_id in job_ids:
                self._ended.notify(job_id)

    def _made_ready(self) -> None:
        """Wake the waiters of this broker, and ring those of other processes."""
        self._signal.notify()
        self._doorbell.ring()

    def _wrap(self, exc: sqlite3.Error) -> BrokerError:
        if isinstance(exc, sqlite3.OperationalError):
            return BrokerUnavailable(f"SQLite database {self.path} is unavailable: {exc}")
        return BrokerError(f"SQLite error on {self.path}: {exc}")

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (creating it and its schema if needed); idempotent.

        Every other method connects on first use too, so calling this first is only
        needed to surface configuration errors early.

        Raises:
            ConfigurationError: the file is not an SQLite database, or its offload schema
                is newer than this version understands.
        """
        await self._run(_noop)

    async def close(self) -> None:
        """Finish the calls already started, then close the connection and the thread;
        idempotent. A later call opens the file again."""
        with self._lock:
            state, self._state = self._state, None
        if state is None:
            return
        self._doorbell.close()
        self._signal.notify()  # let waiters return now instead of at their next poll
        executor, opened = state
        try:
            try:
                closing = asyncio.get_running_loop().run_in_executor(executor, _close_store, opened)
            except RuntimeError:  # at interpreter exit: the store's thread has already ended
                _close_store(opened)
            else:
                executor.shutdown(wait=False)
                await closing
        except sqlite3.Error as exc:
            raise self._wrap(exc) from exc

    # -- producer -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        results, ready = await self._run(_enqueue, self._doorbell, jobs, max_depth)
        if ready:
            self._signal.notify()
        return results

    # -- consumer -------------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        leases, expired = await self._run(Store.reserve, queues, worker_id, lease_s, limit)
        if expired:
            self._notify_ended(expired)
        return leases

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job is made ready in `queues`, or after `timeout_s`.

        Jobs made ready by this broker wake it at once; those made ready by another
        process ring its doorbell (`_doorbell.py`), else are seen by the poll within
        about `WAIT_POLL_S`. A delayed job that becomes due, or a lapsed lease, wakes
        nobody: the caller's timeout covers them.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen = self._signal.count
        names = list(queues)
        self._doorbell.listen()  # before the mark: a commit after it rings us
        rings = self._doorbell.rings
        mark = await self._run(Store.signal_mark, names)
        polled = loop.time()
        while (remaining := deadline - loop.time()) > 0:
            if self._doorbell.rings == rings:  # no ring since the last look: sleep
                await self._signal.wakeup.wait(min(WAIT_POLL_S, remaining))
            # Work made ready here, or close() called: return rather than reopen.
            if self._signal.count != seen or self._state is None:
                return
            now_rings = self._doorbell.rings  # read first: a later ring is seen next turn
            rang, rung = self._doorbell.rang_for(names, rings), now_rings != rings
            rings = now_rings
            if rang:  # a ring named one of our queues: no poll needed to know
                return
            if rung and rang is False and loop.time() - polled < WAIT_POLL_S:
                continue  # rings for other queues only, and the fallback poll not due
            mark, changed = await self._run(Store.poll_signal, names, mark)
            polled = loop.time()
            if changed:
                return

    async def next_due(self, queues: Sequence[str]) -> float | None:
        return await self._run(Store.next_due, queues)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        return await self._run(Store.extend, leases, lease_s)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        held, due = await self._run(Store.settle_many, settlements)
        if due:
            self._made_ready()
        if self._ended:
            ended = zip(settlements, held, strict=True)
            self._notify_ended(
                [s.lease.job_id for s, ok in ended if ok and s.state in TERMINAL_STATES]
            )
        return held

    # -- ledger: the state store of a delivery-only broker (`_ledger.py`) ---------------

    async def record(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> tuple[list[EnqueueResult], list[Outgoing]]:
        return await self._run(_ledger.record, jobs, max_depth)

    async def published(self, jobs: Sequence[Outgoing]) -> None:
        await self._run(_ledger.published, jobs)

    async def due(self, queues: Sequence[str], *, limit: int) -> list[Outgoing]:
        out, expired = await self._run(_ledger.due, queues, limit)
        self._notify_ended(expired)
        return out

    async def claim(
        self, delivered: Sequence[Lease], *, worker_id: str, lease_s: float
    ) -> list[Lease | None]:
        claimed, _ = await self.claim_due(
            delivered, (), worker_id=worker_id, lease_s=lease_s, limit=0
        )
        return claimed

    async def claim_due(
        self,
        delivered: Sequence[Lease],
        queues: Sequence[str],
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> tuple[list[Lease | None], list[Outgoing]]:
        """One transaction for both (see `Ledger.claim_due`)."""
        claimed, out, expired = await self._run(
            _ledger.claim, delivered, worker_id, lease_s, queues, limit
        )
        self._notify_ended(expired)
        return claimed, out

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        if not leases:
            return set()
        return await self._run(Store.cancel_requested, [lease.job_id for lease in leases])

    async def release(self, leases: Sequence[Lease]) -> None:
        if await self._run(Store.release, leases):
            self._made_ready()

    async def cancel(self, job_id: str) -> bool:
        done = await self._run(Store.cancel, job_id)
        if done:  # a running job is only flagged: a spurious wakeup, which is allowed
            self._notify_ended((job_id,))
        return done

    async def outbox(self, limit: int = 500) -> list[Ended]:
        return await self._run(Store.outbox, limit)

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        return await self._run(Store.clear_outbox, job_ids)

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Return once the job is terminal or unknown, at once when this broker ends
        it, within about `WAIT_POLL_S` when another connection (another process) does,
        or after `timeout_s`. SQLite pushes nothing across processes: the job is read
        again only when `PRAGMA data_version` says another connection committed, as
        `wait` does for new work."""
        mark = await self._run(Store.data_version)

        async def ended() -> bool:
            return await self._run(Store.job_ended, job_id)

        async def ended_elsewhere() -> bool:
            # This connection's own commits leave data_version alone: they are
            # reported by `_notify_ended`, which the waiter stays registered for.
            nonlocal mark
            version = await self._run(Store.data_version)
            if version == mark:
                return False
            mark = version
            return await ended()

        await self._ended.wait(
            job_id, ended, timeout_s, recheck=ended_elsewhere, every_s=WAIT_POLL_S
        )

    # -- inspection (`_inspect.py`) -------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        return await self._run(_inspect.counts, queues)

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        return await self._run(_inspect.finished, since, queues)

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await self._run(_inspect.get_job, job_id)

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        await self._run(_inspect.set_progress, job_id, progress)

    async def find(self, key: str) -> JobInfo | None:
        return await self._run(_inspect.find, key)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await self._run(_inspect.workflow_jobs, workflow_id, limit)

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
        return await self._run(_inspect.list_jobs, queue, state, limit, cursor, since, until)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        moved = await self._run(_inspect.replay_dead, queue, job_ids)
        if moved:
            self._made_ready()
        return moved

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        purged = await self._run(_inspect.purge_dead, queue, job_ids, older_than)
        if purged:
            await self._run(_operate.forget_orphans)
        return purged

    async def queues(self) -> list[str]:
        return await self._run(_inspect.queue_names)

    # -- coordination (`_flow.py`) and housekeeping ---------------------------------------

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        return await self._run(_flow.take_rate, key, limit, per_s)

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        return await self._run(_flow.acquire_slot, key, limit, holder, ttl_s)

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        return await self._run(_flow.join, group_id, member_id, index, total, outcome)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._run(_flow.release_slot, key, holder)

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        return await self._run(_flow.compare_and_set, name, expected, new, ttl_s)

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        await self._run(Store.register_worker, info, ttl_s)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run(Store.unregister_worker, worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self._run(Store.workers)

    async def sweep(self) -> SweepReport:
        report, expired = await self._run(Store.sweep)
        self._notify_ended(expired)
        if report.purged:
            await self._run(_operate.forget_orphans)
        return report

    # -- operations: pause flags and attempt history (`_operate.py`) --------------------

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await self._run(_operate.set_paused, name, paused)

    async def paused(self) -> dict[str, float]:
        return await self._run(_operate.paused)

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        await self._run(_operate.record_attempt, job_id, token, record, keep)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        return await self._run(_operate.attempt_records, job_id)


def _noop(store: Store) -> None:
    """Nothing: running it proves the connection opened."""

"""`redis://` and `rediss://`: jobs in Redis or Redis Cluster, one Lua script per
state change.

Layout. `keys.py` documents every key. All keys of a queue share the hash tag of the
queue, so each transition is one script over one slot and runs unchanged on Redis
Cluster. A job is a field in its queue's `payload` (immutable envelope bytes),
`record` (msgpack state) and `result` hashes, never a key of its own: `reserve` and
`sweep` discover job ids inside Lua, and a script may only touch keys passed to it in
KEYS. For the same reason finished jobs are reaped by `sweep` (with the broker's
injected clock, like every other broker) rather than by Redis EXPIRE; after a sweep
nothing of a purged job remains.

Ordering. `ready` is a sorted set scored by -priority whose members start with the due
time in ms and the queue's enqueue sequence, fixed width, so ZRANGE's lexical tiebreak
gives "priority, then due time, then enqueue order". `reserve` takes many jobs in one
script and its housekeeping touches only what is due (ranges of `scheduled`, `running`
and `expiring` up to now), so its cost does not grow with the number of delayed jobs.

Idempotency keys are unique per queue here (the `keys` hash of the queue): a global
index would live in another slot than the queue it guards, and the check and the
insert could then not be one atomic script on a cluster. Every other broker's keys
are global; jobs with one key in different queues are the only difference, and `find`
looks in every queue. Likewise a job id is looked up in every known queue (inspection,
listings and the dead-letter operations are in `_inspect.py`).

Reservation over several queues is one script on a single Redis. On a cluster, whose
queues live in different slots, it peeks at the head of each queue, then leases from
each queue its share of the best `limit` jobs, one script per queue: exact when alone,
best effort under concurrent reservations (never a job leased twice).

Wake-ups are pub/sub (see `_wakeup.py`), and so are job ends for `wait_finished`, but
only for jobs someone waits on (see `_ended.py`). Workflow jobs cancelled while waiting
or expired are recorded in their queue's outbox by the same script (see `_outbox.py`).
Connections belong to the event loop that opened them (`Capabilities.loop_bound`):
`Offload` gives its sync portal a broker of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import msgspec

from offload.brokers._wakeup import JobWaiters
from offload.brokers.base import (
    DEFAULT_RETENTION_S,
    LEASE_EXPIRED,
    Ack,
    Broker,
    Capabilities,
    Ended,
    EnqueueResult,
    JobInfo,
    Lease,
    Page,
    QueueStats,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.redis import (
    _blocking,
    _cancel,
    _ended,
    _inspect,
    _joins,
    _limits,
    _operate,
    _outbox,
    _workflows,
)
from offload.brokers.redis import keys as K
from offload.brokers.redis._connection import (
    check_eviction_policy,
    errors,
    make_client,
    parse_url,
    plain_client,
)
from offload.brokers.redis._records import num, opt, text
from offload.brokers.redis._scripts import Call, Client, Scripts, pipeline
from offload.brokers.redis._wakeup import Listener
from offload.clock import Clock
from offload.codec import encode_error
from offload.envelope import Envelope, ErrorInfo, JobState
from offload.errors import BrokerError, LeaseLost

__all__ = ["RedisBroker"]

_LEASE_EXPIRED = encode_error(LEASE_EXPIRED).decode()
#: Most jobs one housekeeping step of a script touches per queue (bounds script time).
BATCH = 1000
_SCRIPTS = Scripts()


class RedisBroker(Broker):
    """Jobs in Redis (or Redis Cluster); every transition one Lua script."""

    capabilities = Capabilities(
        transactional_enqueue=False,
        push_wakeup=True,
        push_results=True,
        cross_process=True,
        loop_bound=True,
    )

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        super().__init__(url, clock=clock, retention_s=retention_s)
        self.options = parse_url(url)
        if not self.options.cluster:  # a cluster's sync producers keep the portal path
            self.capabilities = replace(self.capabilities, blocking_enqueue=True)
        self._blocking = _blocking.BlockingClient(self)
        self.prefix = self.options.prefix
        self.global_keys = K.global_keys(self.prefix)
        self._ended_channel = K.ended_channel(self.prefix)
        self._job_ends = JobWaiters()  # `wait_finished` (see `_ended.py`)
        # Named in errors and logs: the server alone, never the URL's credentials.
        self._where = urlsplit(self.options.redis_url).netloc.rpartition("@")[2]
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Listener | None = None
        self._known: set[str] = set()
        self._connecting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # -- plumbing -------------------------------------------------------------------------

    async def _redis(self) -> Client:
        """The client of this loop, connecting on first use (or after a loop change:
        a client of a closed loop is dropped, one of a running other loop refused)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise BrokerError(
                    "this RedisBroker is connected on another event loop; make one broker per loop"
                )
            self._client = self._listener = None
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

    def _q(self, queue: str) -> K.QueueKeys:
        return K.queue_keys(self.prefix, queue)

    def _channel(self, queue: str) -> str:
        return K.channel(self.prefix, queue)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = await self._redis()
        with errors(self._where):
            return await _SCRIPTS.run(client, name, keys, args)

    async def _run_many(self, calls: Sequence[Call]) -> list[Any]:
        client = await self._redis()
        with errors(self._where):
            return await _SCRIPTS.run_many(client, calls)

    async def _commands(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Plain commands in one pipeline."""
        client = await self._redis()
        with errors(self._where):
            pipe = pipeline(client)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute()) if commands else []

    async def _known_queues(self) -> list[str]:
        client = await self._redis()
        with errors(self._where):
            members = await client.smembers(self.global_keys.queues)
        return sorted(text(m) for m in members)

    async def _remember(self, queues: set[str]) -> None:
        """Record queues in the global set before their first job is stored, so that
        `queues()` never misses a queue holding jobs (it is another slot on a cluster)."""
        new = queues - self._known
        if new:
            client = await self._redis()
            with errors(self._where):
                await client.sadd(self.global_keys.queues, *sorted(new))
            self._known = self._known | new  # rebound: `_blocking` reads it from other threads

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection pool, load the scripts and check the eviction policy;
        idempotent.

        Raises:
            BrokerUnavailable: Redis does not answer.
        """
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting[0] is not loop:
            self._connecting = (loop, asyncio.Lock())
        async with self._connecting[1]:  # concurrent first calls open one pool
            if self._client is not None and self._loop is loop:
                return
            client = make_client(self.options)
            try:
                with errors(self._where):
                    await client.ping()
                    await _SCRIPTS.load(client)
                    await check_eviction_policy(client, self._where)
            except BaseException:
                await client.aclose()
                raise
            self._client, self._loop = client, loop

    async def close(self) -> None:
        """Close the pool and the wake-up subscriber; idempotent."""
        client, listener, loop = self._client, self._listener, self._loop
        self._client = self._listener = self._loop = None
        self._blocking.close()
        if loop is not asyncio.get_running_loop():
            return  # another loop's sockets: they go with that loop
        if listener is not None:
            await listener.close()
        if client is not None:
            await client.aclose()

    # -- producer -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        """Each queue's jobs are one script; `max_depth` is checked per queue, so a call
        spanning queues may store the jobs of those that had room."""
        if not jobs:
            return []
        now = self.clock.now()
        by_queue: dict[str, list[int]] = {}
        for i, (env, _) in enumerate(jobs):
            by_queue.setdefault(env.queue, []).append(i)
        await self._remember(set(by_queue))
        await _workflows.index(self, jobs)
        replies = await self._run_many(self._enqueue_calls(jobs, by_queue, now, max_depth))
        return self._enqueue_results(jobs, by_queue, replies, max_depth)

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        """The same scripts from the calling thread, on a plain (non-asyncio) client
        (see `_blocking.py`); None for a call it leaves to `enqueue`."""
        return _blocking.enqueue(self, jobs, max_depth)

    def _enqueue_calls(
        self,
        jobs: Sequence[tuple[Envelope, bytes]],
        by_queue: dict[str, list[int]],
        now: float,
        max_depth: int | None,
    ) -> list[Call]:
        """One `enqueue.lua` call per queue (shared by `enqueue` and `enqueue_blocking`)."""
        calls: list[Call] = []
        for queue, indexes in by_queue.items():
            args: list[str | bytes] = [num(now), self._channel(queue), opt(max_depth)]
            for i in indexes:
                env, payload = jobs[i]
                due = max(env.not_before or now, now)
                args += [env.id, env.key or "", payload, env.task, str(env.priority)]
                args += [opt(env.max_attempts), num(env.created_at or now), num(due)]
                args += [opt(env.expires_at), _outbox.workflow_flag(env)]
            calls.append(("enqueue", self._q(queue), args))
        return calls

    @staticmethod
    def _enqueue_results(
        jobs: Sequence[tuple[Envelope, bytes]],
        by_queue: dict[str, list[int]],
        replies: Sequence[Any],
        max_depth: int | None,
    ) -> list[EnqueueResult]:
        _limits.check_depth(list(by_queue), list(replies), max_depth)
        results: list[EnqueueResult | None] = [None] * len(jobs)
        for indexes, reply in zip(by_queue.values(), replies, strict=True):
            for n, i in enumerate(indexes):
                results[i] = EnqueueResult(text(reply[2 * n]), bool(reply[2 * n + 1]))
        return [r for r in results if r is not None]

    # -- consumer -------------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        names = list(dict.fromkeys(queues))
        if not names or limit <= 0:
            return []
        if self.options.cluster and len(names) > 1:
            return await self._reserve_across_slots(names, worker_id, lease_s, limit)
        return await self._reserve(names, worker_id, lease_s, limit)

    def _reserve_call(
        self, names: Sequence[str], worker_id: str, lease_s: float, limit: int, peek: int = 0
    ) -> Call:
        now = self.clock.now()
        keys = [key for queue in names for key in self._q(queue)]
        args = [num(now), worker_id, num(now + lease_s), str(limit), os.urandom(8).hex() + ":"]
        args += [_LEASE_EXPIRED, num(now + self.retention_s), str(BATCH), str(peek)]
        args.append(self._ended_channel)
        return ("reserve", keys, args)

    async def _reserve(
        self, names: Sequence[str], worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        call = self._reserve_call(names, worker_id, lease_s, limit)
        reply = await self._run(*call)
        deadline = float(call[2][2])
        return [
            Lease(
                text(reply[i + 1]),
                text(reply[i + 2]),
                names[int(reply[i]) - 1],
                int(reply[i + 3]),
                deadline,
                bytes(reply[i + 4]),
            )
            for i in range(0, len(reply), 5)
        ]

    async def _reserve_across_slots(
        self, names: Sequence[str], worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        peeks = [self._reserve_call([q], worker_id, lease_s, 0, peek=limit) for q in names]
        heads: list[tuple[float, bytes, int]] = []
        for n, reply in enumerate(await self._run_many(peeks)):
            pairs = reply[0]
            heads += [(float(pairs[i + 1]), pairs[i], n) for i in range(0, len(pairs), 2)]
        share: dict[int, int] = {}
        for _, _, n in heapq.nsmallest(limit, heads):
            share[n] = share.get(n, 0) + 1
        batches = await asyncio.gather(
            *(self._reserve([names[n]], worker_id, lease_s, k) for n, k in share.items())
        )
        # Leases of different queues, merged back into the order of their peeked heads.
        order = {member[27:].decode(): rank for rank, (_, member, _) in enumerate(sorted(heads))}
        leases = [lease for batch in batches for lease in batch]
        return sorted(leases, key=lambda lease: order.get(lease.job_id, len(order)))

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job is made ready now in `queues` (by any process), or after
        `timeout_s`. A job that becomes due later wakes nobody: `next_due` tells the
        caller how long to wait at most. If the subscriber connection fails, this
        sleeps (at most a second) so that the caller's next call sees the error."""
        channels = [self._channel(q) for q in queues]
        try:
            listener = await self._subscribed(channels)
        except Exception:  # BrokerError, or redis-py failing mid-reconnect
            await asyncio.sleep(min(timeout_s, 1.0))
            return
        await listener.wait(channels, timeout_s)

    async def _subscribed(
        self,
        channels: Sequence[str],
        *,
        handler: Callable[[bytes], None] | None = None,
        confirm: bool = False,
    ) -> Listener:
        await self._redis()
        if self._listener is not None and self._listener.failed:
            await self._listener.close()
            self._listener = None
        if self._listener is None:
            # A plain connection even to a cluster: PUBLISH reaches every node of one.
            self._listener = Listener(plain_client(self.options))
        with errors(self._where):
            await self._listener.subscribe(channels, handler=handler, confirm=confirm)
        return self._listener

    async def next_due(self, queues: Sequence[str]) -> float | None:
        commands = [("ZRANGE", self._q(q).scheduled, 0, 0, "WITHSCORES") for q in queues]
        heads = await self._commands(commands)
        # redis-py 5.0.1 (our floor) returns a raw ZRANGE ... WITHSCORES flat ([member,
        # score]); newer releases pair it ([[member, score]]).
        due = [float(h[0][1] if isinstance(h[0], list | tuple) else h[1]) for h in heads if h]
        return min(due, default=None)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        now = self.clock.now()
        head = [num(now), num(now + lease_s)]
        return await self._per_queue(leases, "extend", head, lambda lease: [lease.token])

    async def _per_queue(
        self, leases: Sequence[Lease], script: str, head: list[str], extra: Any
    ) -> list[bool]:
        """Run `script` once per queue of `leases` (one pipeline), with `head` then the
        id and `extra(lease)` of each lease as ARGV; the per-lease 1/0 replies, in order."""
        by_queue: dict[str, list[int]] = {}
        for i, lease in enumerate(leases):
            by_queue.setdefault(lease.queue, []).append(i)
        calls: list[Call] = []
        for queue, indexes in by_queue.items():
            args: list[str | bytes] = list(head)
            for i in indexes:
                args += [leases[i].job_id, *extra(leases[i])]
            calls.append((script, self._q(queue), args))
        out = [False] * len(leases)
        for indexes, reply in zip(by_queue.values(), await self._run_many(calls), strict=True):
            for i, ok in zip(indexes, reply, strict=True):
                out[i] = bool(ok)
        return out

    async def ack(self, lease: Lease, result: bytes | None, *, result_ttl_s: float | None) -> None:
        [held] = await self._ack([(lease, result, result_ttl_s)])
        if not held:
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")

    async def ack_many(self, acks: Sequence[Ack]) -> list[bool]:
        """Every ack in one round trip: one script call per queue, pipelined."""
        return await self._ack([(a.lease, a.result, a.result_ttl_s) for a in acks])

    async def _ack(self, items: Sequence[tuple[Lease, bytes | None, float | None]]) -> list[bool]:
        now = self.clock.now()
        extra = {}
        for lease, result, ttl in items:
            purge_at = now + (self.retention_s if ttl is None else ttl)
            flag = "0" if result is None else "1"
            extra[id(lease)] = [lease.token, flag, result or b"", num(purge_at)]
        leases = [lease for lease, _, _ in items]
        head = [num(now), self._ended_channel]
        acked = await self._per_queue(leases, "ack", head, lambda lease: extra[id(lease)])
        self._ended_here(lease.job_id for lease, ok in zip(leases, acked, strict=True) if ok)
        return acked

    async def retry(self, lease: Lease, *, at: float, error: ErrorInfo) -> None:
        args = [num(self.clock.now()), lease.job_id, lease.token, num(at)]
        args += [encode_error(error).decode(), self._channel(lease.queue)]
        if not await self._run("retry", self._q(lease.queue), args):
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")

    async def bury(self, lease: Lease, *, error: ErrorInfo) -> None:
        args = [num(self.clock.now()), lease.job_id, lease.token, encode_error(error).decode()]
        if not await self._run("bury", self._q(lease.queue), [*args, self._ended_channel]):
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")
        self._ended_here([lease.job_id])

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await _cancel.cancel_requested(self, leases) if leases else set()

    async def cancel_running(self, lease: Lease, *, error: ErrorInfo) -> None:
        await _cancel.cancel_running(self, lease, error)
        self._ended_here([lease.job_id])

    async def defer(self, lease: Lease, *, at: float) -> None:
        args = [num(self.clock.now()), lease.job_id, lease.token, num(at)]
        if not await self._run("defer", self._q(lease.queue), [*args, self._channel(lease.queue)]):
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")

    async def release(self, leases: Sequence[Lease]) -> None:
        by_queue: dict[str, list[str]] = {}
        for lease in leases:
            by_queue.setdefault(lease.queue, []).extend([lease.job_id, lease.token])
        calls: list[Call] = [
            ("release", self._q(queue), [self._channel(queue), *pairs])
            for queue, pairs in by_queue.items()
        ]
        await self._run_many(calls)

    async def cancel(self, job_id: str) -> bool:
        queue = await self._locate(job_id)
        if queue is None:
            return False
        now = self.clock.now()
        args = [num(now), job_id, num(now + self.retention_s), self._ended_channel]
        if not await self._run("cancel", self._q(queue), args):
            return False
        self._ended_here([job_id])  # spurious for a running job (only flagged): allowed
        return True

    def _ended_here(self, job_ids: Iterable[str]) -> None:
        """Wake this process's `wait_finished` callers at once, without the pub/sub trip."""
        if self._job_ends:
            for job_id in job_ids:
                self._job_ends.notify(job_id)

    async def outbox(self, limit: int = 500) -> list[Ended]:
        """Merges the per-queue outboxes (see `_outbox.py`)."""
        return await _outbox.outbox(self, limit)

    async def clear_outbox(self, job_ids: Sequence[str]) -> None:
        await _outbox.clear_outbox(self, job_ids)

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Pushed from any process, for jobs someone waits on (see `_ended.py`)."""
        await _ended.wait_finished(self, job_id, timeout_s)

    async def _locate(self, job_id: str) -> str | None:
        """The queue holding a job, None if no queue does."""
        names = await self._known_queues()
        found = await self._commands([("HEXISTS", self._q(q).record, job_id) for q in names])
        return next((q for q, hit in zip(names, found, strict=True) if hit), None)

    # -- inspection -----------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        return await _inspect.counts(self, queues)

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await _inspect.get_job(self, job_id)

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        ttl_ms = str(math.ceil(self.retention_s * 1000))
        await self._commands([("SET", K.progress_key(self.prefix, job_id), progress, "PX", ttl_ms)])

    async def find(self, key: str) -> JobInfo | None:
        return await _inspect.find(self, key)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await _workflows.workflow_jobs(self, workflow_id, limit)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first across the chosen queues; the cursor is the listing member
        (enqueue time, sequence, id) of the page's last job."""
        return await _inspect.list_jobs(self, queue, state, limit, cursor)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        return await _inspect.replay_dead(self, queue, job_ids)

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        return await _inspect.purge_dead(self, queue, job_ids, older_than)

    async def queues(self) -> list[str]:
        return await self._known_queues()

    # -- coordination and housekeeping ----------------------------------------------------

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        return await _limits.take_rate(self, key, limit, per_s)

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        return await _joins.join(self, group_id, member_id, index, total, outcome)

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        return await _limits.acquire_slot(self, key, limit, holder, ttl_s)

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        return await _limits.compare_and_set(self, name, expected, new, ttl_s)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._commands([("ZREM", K.slots_key(self.prefix, key), holder)])

    def _worker_keys(self) -> list[str]:
        return [self.global_keys.workers, self.global_keys.workers_seen]

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        now = self.clock.now()
        data = msgspec.json.encode(replace(info, last_seen=now))
        until = num(now + ttl_s)
        await self._run("worker_register", self._worker_keys(), [info.id, data, until])

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run("worker_forget", self._worker_keys(), ["id", worker_id])

    async def workers(self) -> list[WorkerInfo]:
        reply = await self._run("workers", self._worker_keys(), [num(self.clock.now())])
        return [msgspec.json.decode(raw, type=WorkerInfo) for raw in reply]

    async def sweep(self) -> SweepReport:
        """Expire, purge and forget, in batches of `BATCH` per queue and script call
        until nothing is left, so that no call holds Redis for long."""
        now = self.clock.now()
        expired = purged = 0
        pending = await self._known_queues()
        while pending:
            args = [num(now), num(now + self.retention_s), str(BATCH), self._ended_channel]
            replies = await self._run_many([("sweep", self._q(q), args) for q in pending])
            expired += sum(int(r[0]) for r in replies)
            purged += sum(int(r[1]) for r in replies)
            pending = [
                q for q, r in zip(pending, replies, strict=True) if max(map(int, r)) >= BATCH
            ]
        removed = await self._run("worker_forget", self._worker_keys(), ["lapsed", num(now)])
        return SweepReport(expired=expired, purged=purged, workers_removed=int(removed))

    # -- operations: pause flags and attempt history (`_operate.py`) --------------------

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await _operate.set_paused(self, name, paused)

    async def paused(self) -> dict[str, float]:
        return await _operate.paused(self)

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        await _operate.record_attempt(self, job_id, token, record, keep)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        return await _operate.attempt_records(self, job_id)

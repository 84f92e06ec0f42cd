"""The producer side of the Redis broker: how jobs become enqueue script calls, and the
scripts' replies `EnqueueResult`s (`offload.brokers.redis` runs the calls: `enqueue` on
its asyncio client, `enqueue_blocking` on the calling thread's, `_blocking.py`).

A queue's single job is one `enqueue_one.lua` call, its fields in one msgpack map (the
inbox entry itself: `_inbox.lua`); a queue's several jobs are one `enqueue.lua` call,
ten ARGV values each. Both paths build their calls here, so a job stored from the
calling thread is stored as one from the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

from offload.brokers._depth import queue_full
from offload.brokers.base import EnqueueResult
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._flow import workflow_flag
from offload.brokers.redis._records import num, opt, text
from offload.brokers.redis._scripts import Call
from offload.envelope import Envelope

__all__ = ["Enqueuing"]

#: Packs the fields of `enqueue_one.lua`'s job.
_FIELDS = msgspec.msgpack.Encoder()


class Enqueuing:
    """Builds the enqueue script calls of `RedisBroker` and reads their replies, on an
    `Executor` (its key schema and channels)."""

    def __init__(self, x: Executor) -> None:
        self._x = x

    def calls(
        self,
        jobs: Sequence[tuple[Envelope, bytes]],
        by_queue: dict[str, list[int]],
        now: float,
        max_depth: int | None,
        inbox: int = 0,
    ) -> list[Call]:
        """One script call per queue (shared by `enqueue` and `enqueue_blocking`):
        `enqueue_one.lua` for a queue's single job (`inbox`: the inbox level it may
        use, `_inbox.py`), else `enqueue.lua`."""
        calls: list[Call] = []
        for queue, indexes in by_queue.items():
            if len(indexes) == 1:
                calls.append(self.one_call(jobs[indexes[0]], now, max_depth, inbox))
                continue
            now_text = num(now)
            args: list[str | bytes] = [now_text, self._x.channel(queue), opt(max_depth)]
            for i in indexes:
                args += self.job_args(jobs[i], now, now_text)
            calls.append(("enqueue", self._x.q(queue), args))
        return calls

    def one_call(
        self, job: tuple[Envelope, bytes], now: float, max_depth: int | None, inbox: int = 0
    ) -> Call:
        """The `enqueue_one.lua` call of one job: its fields in one msgpack map (the
        inbox entry itself: `_inbox.lua`), and how far it may take the lean way: the
        inbox level the gate allows (`inbox`, `_inbox.py`) if the job is due now,
        without key, max depth or workflow; level 2 (lent to a parked worker) only if
        it has not expired already."""
        env, payload = job
        not_before = env.not_before
        due = not_before if not_before is not None and not_before > now else now
        fields: dict[str, Any] = {
            "i": env.id,
            "tk": env.task,
            "p": env.priority,
            "c": env.created_at or now,
            "d": due,
            "n": math.floor(now * 1000),
        }
        if env.max_attempts is not None:
            fields["m"] = env.max_attempts
        if env.expires_at is not None:
            fields["x"] = env.expires_at
        workflow = workflow_flag(env)
        if workflow:
            fields["o"] = 1
        plain = (
            inbox > 0
            and due == now
            and env.key is None
            and max_depth is None
            and not workflow
            # A workflow's jobs are read by id from its index (`_workflows.py`).
            and env.workflow_id is None
        )
        queue = env.queue
        args: list[str | bytes] = [
            num(now),
            self._x.channel(queue),
            opt(max_depth),
            env.id,
            env.key or "",
            payload,
            _FIELDS.encode(fields),
            _lean_level(inbox, env.expires_at, now) if plain else "",
        ]
        return ("enqueue_one", self._x.one_keys(queue), args)

    @staticmethod
    def job_args(job: tuple[Envelope, bytes], now: float, now_text: str) -> list[str | bytes]:
        """The ten ARGV values of one job in an enqueue script (`now_text`: `num(now)`)."""
        env, payload = job
        created = env.created_at
        not_before = env.not_before
        return [
            env.id,
            env.key or "",
            payload,
            env.task,
            str(env.priority),
            opt(env.max_attempts),
            num(created) if created else now_text,
            num(not_before) if not_before is not None and not_before > now else now_text,
            opt(env.expires_at),
            workflow_flag(env),
        ]

    @staticmethod
    def one_result(env: Envelope, reply: Any, max_depth: int | None) -> EnqueueResult:
        """The result of `enqueue_one.lua`'s `reply` for the job `env`: 1 or 0 alone
        from its plain case, else [id, 1 or 0].

        Raises:
            QueueFull: the job would have passed `max_depth`.
        """
        if isinstance(reply, int):
            return EnqueueResult(env.id, bool(reply))
        if max_depth is not None and reply[0] == -1:
            raise queue_full(env.queue, int(reply[1]), max_depth)
        return EnqueueResult(text(reply[0]), bool(reply[1]))

    @staticmethod
    def results(
        jobs: Sequence[tuple[Envelope, bytes]],
        by_queue: dict[str, list[int]],
        replies: Sequence[Any],
        max_depth: int | None,
    ) -> list[EnqueueResult]:
        for queue, reply in zip(by_queue, replies, strict=True):
            if max_depth is not None and reply and reply[0] == -1:
                raise queue_full(queue, int(reply[1]), max_depth)
        results: list[EnqueueResult | None] = [None] * len(jobs)
        for indexes, reply in zip(by_queue.values(), replies, strict=True):
            if isinstance(reply, int):  # enqueue_one.lua's plain case (one job)
                results[indexes[0]] = EnqueueResult(jobs[indexes[0]][0].id, bool(reply))
                continue
            for n, i in enumerate(indexes):
                results[i] = EnqueueResult(text(reply[2 * n]), bool(reply[2 * n + 1]))
        return [r for r in results if r is not None]


def _lean_level(inbox: int, expires_at: float | None, now: float) -> str:
    """ARGV[8] of a plain `enqueue_one.lua` call: '2' may lend to a parked worker."""
    if inbox >= 2 and (expires_at is None or expires_at > now):
        return "2"
    return "1"

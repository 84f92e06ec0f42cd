"""SQS as a delivery layer: send, receive under a lease, extend, settle, dead-letter.

What SQS gives and how offload uses it:

- **The lease is the visibility timeout.** A received message is invisible to other
  consumers for `visibility_s`; `extend` pushes that forward with
  ChangeMessageVisibilityBatch. SQS refuses a change for a receipt that is no longer
  the current one (the visibility lapsed and someone else received the message), so
  `extend` answering False means: stop claiming this job. SQS caps the visibility at
  12 hours from the receipt; an extension that cannot cover the asked lease inside
  that cap answers False too, so a worker never believes it holds a job that SQS is
  about to hand out again.
- **Batches.** Sends, receives, visibility changes and deletes go 10 at a time (SQS's
  batch size), the batches of one call concurrently (sequentially for a FIFO queue,
  whose order they carry).
- **Delays past 15 minutes** (SQS's DelaySeconds cap) go in hops: the message carries
  its due time (`offload-due`), is sent with the longest delay SQS allows, and when it
  is received early it is sent again with the rest and the early copy deleted. A FIFO
  queue has no per-message delay at all: its delayed jobs wait in a standard side
  queue (`-delay`) and are promoted into the FIFO queue when due.
- **Moving a job** (a retry, a deferral, a release, a dead letter) is send-then-delete
  after a visibility check: the receipt is first confirmed as still ours (extending
  it), then the new message is sent, then the old one deleted. A crash between the two
  leaves two messages of one job (at-least-once); on FIFO queues the second send is
  dropped by SQS's deduplication within its 5-minute window, since every message
  carries a send id that is the same for every copy of one logical send.
- **Dead letters.** The main queue's redrive policy parks a message received `redrive`
  times without being settled; `bury` moves a message there itself, with the reason.

Nothing here knows about keys, results or job states: that is the state store's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from offload.brokers.sqs.client import QueueMissing, SQSClient
from offload.brokers.sqs.config import MAX_DELAY_S, MAX_VISIBILITY_S, SQSConfig
from offload.brokers.sqs.messages import (
    Outgoing,
    Received,
    attribute,
    decode_body,
    encode_message,
    message_size,
)
from offload.brokers.sqs.topology import QueueSet, Topology
from offload.clock import Clock, SystemClock
from offload.errors import BrokerError, BrokerUnavailable

__all__ = ["SQSDelivery"]

_BATCH = 10
#: A due time this close counts as now (SQS delays are whole seconds, rounded up).
_EARLY_S = 0.5
#: Visibility a move holds while it sends the job's next message, in seconds.
_MOVE_HOLD_S = 60
#: A lease this close to its deadline is not extended: the change might land after
#: the visibility lapsed, when another consumer may already have the message.
_MARGIN_S = 1.0
_T = TypeVar("_T")
#: What every receive asks for: the receive count (the attempt) and offload's
#: attributes. The receive count is asked for under both of SQS's names: the older
#: `AttributeNames` is what SQS-compatible servers of 2024 (moto 5.0) still read.
_RECEIVE_ATTRIBUTES: dict[str, Any] = {
    "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
    "AttributeNames": ["ApproximateReceiveCount"],
    "MessageAttributeNames": ["All"],
}


class SQSDelivery:
    """Jobs as SQS messages, for one `sqs://` URL. Belongs to the event loop that
    connects it. Safe to call from many tasks of that loop at once."""

    def __init__(self, config: SQSConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.client = SQSClient(config)
        self.topology = Topology(self.client)
        self._prefetched: list[Received] = []
        #: Receipt → deadline, for the leases `extend` pushed past their first deadline.
        self._deadlines: dict[str, float] = {}
        #: The longest delay SQS holds a message (its DelaySeconds cap); tests lower it.
        self.max_delay_s = MAX_DELAY_S

    def __repr__(self) -> str:
        return f"<SQSDelivery {self.config!r}>"

    async def connect(self) -> None:
        """Open the client; queues are created on first use. Idempotent."""
        await self.client.open()

    async def close(self) -> None:
        """Hand back prefetched messages and close the client. Idempotent."""
        held, self._prefetched = self._prefetched, []
        if held and self.client.is_open:
            try:
                await self.extend(held, 0)
            except BrokerError:
                pass  # they lapse on their own within their visibility
        await self.client.close()

    # -- send ---------------------------------------------------------------------------

    async def send(self, items: Sequence[Outgoing]) -> None:
        """Store every item in SQS (see `_send`); a queue found missing (deleted, or a
        local server restarted empty) is created again and the send repeated once."""
        try:
            await self._send(items)
        except QueueMissing:
            self.topology.forget()
            await self._send(items)

    async def _send(self, items: Sequence[Outgoing]) -> None:
        """Store every item in SQS, each in its queue (its DLQ when `error` is set), and
        return once SQS has them all. Batches go in order for a FIFO queue.

        Raises:
            SerializationError: an item is over the size limit (nothing is sent).
            BrokerUnavailable: SQS could not be reached, or kept failing some entries
                (any of the call's items may have been stored: resending is safe).
        """
        limit = self.config.max_message_bytes
        encoded = [(item, *encode_message(_with_send_id(item), limit)) for item in items]
        routes: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for item, body, attributes in encoded:
            qs = await self.topology.get(item.queue)
            url, entry, ordered = self._route(qs, item, body, attributes)
            routes.setdefault((url, ordered), []).append(entry)
        sends: list[Awaitable[None]] = []
        for (url, ordered), entries in routes.items():
            chunks = _chunks(entries, limit)
            if ordered:
                sends.append(self._send_in_order(url, chunks))
            else:
                sends.extend(self._send_chunk(url, chunk) for chunk in chunks)
        await _all(sends)

    def _route(
        self, qs: QueueSet, item: Outgoing, body: str, attributes: dict[str, Any]
    ) -> tuple[str, dict[str, Any], bool]:
        """The SQS queue an item goes to, its batch entry, and whether order matters."""
        delay = 0.0 if item.due is None else item.due - self.clock.now()
        entry: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
        if item.error is not None:
            url, fifo = qs.dlq_url, qs.fifo
        elif delay > _EARLY_S and qs.fifo:
            assert qs.delay_url is not None
            url, fifo = qs.delay_url, False
        else:
            url, fifo = qs.url, qs.fifo
        if delay > _EARLY_S and item.error is None:
            entry["DelaySeconds"] = min(math.ceil(delay), self.max_delay_s)
        if fifo:
            entry["MessageGroupId"] = _group(item.queue)
            entry["MessageDeduplicationId"] = attributes["offload-send"]["StringValue"]
        return url, entry, fifo

    async def _send_in_order(self, url: str, chunks: list[list[dict[str, Any]]]) -> None:
        for chunk in chunks:
            await self._send_chunk(url, chunk)

    async def _send_chunk(self, url: str, entries: list[dict[str, Any]]) -> None:
        pending = {str(i): entry | {"Id": str(i)} for i, entry in enumerate(entries)}
        for _ in range(3):
            answer = await self.client.call(
                "send_message_batch", QueueUrl=url, Entries=list(pending.values())
            )
            failed = answer.get("Failed", [])
            refused = [f for f in failed if f.get("SenderFault")]
            if refused:
                raise BrokerError(f"SQS refused a message: {refused[0].get('Message', '')}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                return
        raise BrokerUnavailable(f"SQS kept failing {len(pending)} message(s) of a batch")

    # -- receive ------------------------------------------------------------------------

    async def receive(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        visibility_s: float,
        wait_s: float = 0.0,
    ) -> list[Received]:
        """Up to `limit` due messages (see `_receive`); a queue found missing is found
        or created again and the receive repeated once."""
        try:
            return await self._receive(
                queues, limit=limit, visibility_s=visibility_s, wait_s=wait_s
            )
        except QueueMissing:
            self.topology.forget()
            return await self._receive(
                queues, limit=limit, visibility_s=visibility_s, wait_s=wait_s
            )

    async def _receive(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        visibility_s: float,
        wait_s: float = 0.0,
    ) -> list[Received]:
        """Up to `limit` due messages from `queues` (earlier queues first), each leased
        for `visibility_s`.

        With `wait_s` > 0 and nothing ready, long-polls every queue at once for up to
        `wait_s` seconds (at most 20); what comes back beyond `limit` is kept, already
        leased, for the next call. Messages received before their due time are sent on
        (see the module docstring) and not returned.
        """
        now = self.clock.now()
        visibility = _visibility(visibility_s)
        out = self._take_prefetched(queues, limit, now + visibility / 2)
        if len(out) >= limit:
            return out
        sets = [await self.topology.get(q) for q in dict.fromkeys(queues)]
        await _all([self._promote(qs) for qs in sets if qs.delay_url is not None])
        for qs in sets:
            while len(out) < limit:
                got, full = await self._receive_from(qs, limit - len(out), visibility, 0)
                out.extend(got)
                if not full:
                    break
        if out or wait_s <= 0:
            return out
        wait = min(math.ceil(wait_s), self.config.wait_s)
        batches = await asyncio.gather(
            *(self._receive_from(qs, limit, visibility, wait) for qs in sets)
        )
        got = [message for batch, _ in batches for message in batch]
        self._prefetched.extend(got[limit:])
        return got[:limit]

    def keep(self, messages: Sequence[Received]) -> None:
        """Hold received messages for the next `receive` (a long poll's catch)."""
        self._prefetched.extend(messages)

    def _take_prefetched(self, queues: Sequence[str], limit: int, fresh: float) -> list[Received]:
        """Prefetched messages of `queues` whose lease still has half its length left
        (the rest lapse on their own and come back)."""
        wanted = set(queues)
        out: list[Received] = []
        keep: list[Received] = []
        for message in self._prefetched:
            if message.deadline < fresh:
                continue
            (out if message.queue in wanted and len(out) < limit else keep).append(message)
        self._prefetched = keep
        return out

    async def _receive_from(
        self, qs: QueueSet, limit: int, visibility: int, wait: int
    ) -> tuple[list[Received], bool]:
        """One ReceiveMessage call; whether it came back full (more may be waiting)."""
        asked = min(limit, _BATCH)
        answer = await self.client.call(
            "receive_message",
            QueueUrl=qs.url,
            MaxNumberOfMessages=asked,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=wait,
            **_RECEIVE_ATTRIBUTES,
        )
        messages = answer.get("Messages", [])
        now = self.clock.now()
        received = [self._received(qs.url, qs.queue, m, now, visibility) for m in messages]
        early = [r for r in received if r.due is not None and r.due > now + _EARLY_S]
        if early:
            hops = [(r, r.outgoing(attempt=r.attempt - 1, due=r.due)) for r in early]
            await self._move(hops, onward=True)
        ready = [r for r in received if r not in early]
        return ready, len(messages) == asked

    async def _promote(self, qs: QueueSet) -> None:
        """Move the due jobs of a FIFO queue's delay queue into the FIFO queue."""
        assert qs.delay_url is not None
        while True:
            answer = await self.client.call(
                "receive_message",
                QueueUrl=qs.delay_url,
                MaxNumberOfMessages=_BATCH,
                VisibilityTimeout=_MOVE_HOLD_S,
                WaitTimeSeconds=0,
                **_RECEIVE_ATTRIBUTES,
            )
            messages = answer.get("Messages", [])
            now = self.clock.now()
            moves = []
            for message in messages:
                r = self._received(qs.delay_url, qs.queue, message, now, _MOVE_HOLD_S)
                due = r.due if r.due is not None and r.due > now + _EARLY_S else None
                moves.append((r, r.outgoing(attempt=r.attempt - 1, due=due)))
            await self._move(moves, onward=True)
            if len(messages) < _BATCH:
                return

    def _received(
        self, url: str, queue: str, message: dict[str, Any], now: float, visibility: int
    ) -> Received:
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        base = attribute(message, "offload-attempt")
        due = attribute(message, "offload-due")
        expires = attribute(message, "offload-expires")
        return Received(
            job_id=attribute(message, "offload-job") or str(message["MessageId"]),
            queue=attribute(message, "offload-queue") or queue,
            body=decode_body(message),
            attempt=(int(base) if base is not None else 0) + count,
            receipt=str(message["ReceiptHandle"]),
            deadline=now + visibility,
            received_at=now,
            queue_url=url,
            message_id=str(message["MessageId"]),
            due=float(due) if due is not None else None,
            error=attribute(message, "offload-error"),
            send_id=attribute(message, "offload-send"),
            expires=float(expires) if expires is not None else None,
            stamp=attribute(message, "offload-stamp"),
        )

    # -- leases -------------------------------------------------------------------------

    async def extend(self, messages: Sequence[Received], visibility_s: float) -> list[bool]:
        """Keep each message leased for `visibility_s` more seconds (0: hand it back
        now). False means: stop claiming this job. That is the answer for a lease
        whose deadline has passed (or is within a second), whatever SQS says: SQS may
        accept a stale receipt, so its word is no proof that nobody else received the
        message since; only a visibility kept from lapsing is. False too where SQS
        refuses the receipt, or where its 12-hour cap would cut the lease short.

        Raises:
            BrokerUnavailable: SQS could not be reached (nothing is known then).
        """
        now = self.clock.now()
        self._deadlines = {r: d for r, d in self._deadlines.items() if d > now}
        asked = _visibility(visibility_s)
        held = [False] * len(messages)
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, message in enumerate(messages):
            room = MAX_VISIBILITY_S - math.ceil(now - message.received_at) - 1
            if not self.holds(message) or asked > room:
                continue
            entry = {"Id": str(i), "ReceiptHandle": message.receipt, "VisibilityTimeout": asked}
            groups.setdefault(message.queue_url, []).append((i, entry))
        await _all(
            [
                self._batch("change_message_visibility_batch", url, chunk, held)
                for url, entries in groups.items()
                for chunk in _split(entries)
            ]
        )
        for message, ok in zip(messages, held, strict=True):
            if ok and asked > 0:
                self._deadlines[message.receipt] = now + asked
            else:
                self._deadlines.pop(message.receipt, None)
        return held

    def deadline(self, message: Received) -> float:
        """When `message`'s visibility ends, as last extended by this process."""
        return self._deadlines.get(message.receipt, message.deadline)

    def holds(self, message: Received) -> bool:
        """Whether this process certainly still leases `message`: its visibility ends
        more than a second from now. Past that, SQS may have handed the message to
        another consumer, and accepting a stale receipt is no proof it has not (see
        `extend`)."""
        return self.clock.now() + _MARGIN_S < self.deadline(message)

    async def delete(self, messages: Sequence[Received]) -> list[bool]:
        """Delete settled messages. False where SQS refused the receipt. (SQS accepts
        a stale receipt without deleting anything in some cases, so a delete is no
        proof of the lease: the state store's token is.)"""
        held = [False] * len(messages)
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, message in enumerate(messages):
            self._deadlines.pop(message.receipt, None)
            entry = {"Id": str(i), "ReceiptHandle": message.receipt}
            groups.setdefault(message.queue_url, []).append((i, entry))
        await _all(
            [
                self._batch("delete_message_batch", url, chunk, held)
                for url, entries in groups.items()
                for chunk in _split(entries)
            ]
        )
        return held

    async def _batch(
        self,
        operation: str,
        url: str,
        entries: list[tuple[int, dict[str, Any]]],
        held: list[bool],
    ) -> None:
        """One batch call; marks the entries SQS accepted in `held`."""
        try:
            answer = await self.client.call(
                operation, QueueUrl=url, Entries=[entry for _, entry in entries]
            )
        except (ClientError, QueueMissing):
            return  # the whole batch was refused (a queue deleted under us): none held
        for ok in answer.get("Successful", []):
            held[int(ok["Id"])] = True

    # -- moves --------------------------------------------------------------------------

    async def move(self, moves: Sequence[tuple[Received, Outgoing]]) -> list[bool]:
        """Replace each received message by a new one (a retry, a deferral, a dead
        letter): confirm the lease, send the new message, delete the old. False for a
        message whose lease was already lost (nothing is sent for it)."""
        return await self._move(moves)

    async def _move(
        self, moves: Sequence[tuple[Received, Outgoing]], *, onward: bool = False
    ) -> list[bool]:
        """`move`; `onward`: the new messages carry the same logical send on (a delay's
        hop, a FIFO promotion) and keep its send id."""
        if not moves:
            return []
        held = await self.extend([old for old, _ in moves], _MOVE_HOLD_S)
        keep = [
            (old, self._same_send(old, new, onward))
            for (old, new), ok in zip(moves, held, strict=True)
            if ok
        ]
        await self.send([new for _, new in keep])
        await self.delete([old for old, _ in keep])
        return held

    @staticmethod
    def _same_send(old: Received, new: Outgoing, onward: bool) -> Outgoing:
        """`new` with a send id that every copy of `old` would give it, so a move
        repeated after a crash (or a hop or promotion of a duplicated copy) is
        deduplicated on FIFO queues."""
        if onward and old.send_id:
            send_id = old.send_id
        else:
            text = f"{old.send_id}:{old.message_id}:{new.error is not None}:{new.attempt}"
            send_id = hashlib.sha256(text.encode()).hexdigest()[:40]
        return dataclasses.replace(new, send_id=send_id)

    async def release(self, messages: Sequence[Received]) -> None:
        """Give back messages that were received but not run, due at once, without
        counting the attempt: standard queues get a fresh copy (so the receive count
        starts again); FIFO queues keep the message in place (its place in the order),
        and the next delivery counts one attempt more."""
        fifo = {qs.url for qs in self.topology.known() if qs.fifo}
        in_place = [m for m in messages if m.queue_url in fifo]
        copies = [m for m in messages if m.queue_url not in fifo]
        await _all(
            [
                self.extend(in_place, 0),
                self._move([(m, m.outgoing(attempt=m.attempt - 1, due=None)) for m in copies]),
            ]
        )

    # -- dead letters and depth ---------------------------------------------------------

    async def dead(self, queue: str, *, limit: int = 100) -> list[Received]:
        """Dead-lettered messages of `queue` (a sample, newest unknown: SQS cannot
        list), left in place."""
        qs = await self.topology.lookup(queue)
        if qs is None:
            return []
        seen: dict[str, Received] = {}
        for _ in range(3):
            batch = await self._drain(qs, qs.dlq_url, limit - len(seen), visibility=0)
            fresh = [m for m in batch if m.message_id not in seen]
            seen.update((m.message_id, m) for m in fresh)
            if not fresh or len(seen) >= limit:
                break
        return list(seen.values())

    async def replay_dead(self, queue: str, job_ids: Sequence[str] | None = None) -> int:
        """Send dead-lettered jobs of `queue` (all, or those in `job_ids`) back to the
        queue with their attempts reset. Returns how many."""
        return await self._sweep_dead(queue, job_ids, replay=True)

    async def purge_dead(self, queue: str, job_ids: Sequence[str] | None = None) -> int:
        """Delete dead-lettered jobs of `queue` (all, or those in `job_ids`)."""
        return await self._sweep_dead(queue, job_ids, replay=False)

    async def _sweep_dead(self, queue: str, job_ids: Sequence[str] | None, *, replay: bool) -> int:
        qs = await self.topology.lookup(queue)
        if qs is None:
            return 0
        wanted = None if job_ids is None else set(job_ids)
        done = 0
        while batch := await self._drain(qs, qs.dlq_url, _BATCH, visibility=_MOVE_HOLD_S):
            chosen = [m for m in batch if wanted is None or m.job_id in wanted]
            await self.extend([m for m in batch if m not in chosen], 0)
            if replay:
                fresh = [m.outgoing(attempt=0, due=None) for m in chosen]
                await self.send([dataclasses.replace(m, send_id=_fresh_id()) for m in fresh])
            done += sum(await self.delete(chosen))
            if len(chosen) < len(batch):
                break  # the others are back in view: stop before receiving them again
        return done

    async def _drain(
        self, qs: QueueSet, url: str, limit: int, *, visibility: int
    ) -> list[Received]:
        answer = await self.client.call(
            "receive_message",
            QueueUrl=url,
            MaxNumberOfMessages=max(1, min(limit, _BATCH)),
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0,
            **_RECEIVE_ATTRIBUTES,
        )
        now = self.clock.now()
        return [
            self._received(url, qs.queue, m, now, visibility) for m in answer.get("Messages", [])
        ]

    async def depth(self, queue: str) -> dict[str, int]:
        """SQS's approximate counts for `queue`: `ready`, `leased`, `delayed`, `dead`.
        Approximate by SQS's own definition (eventually consistent, about a minute)."""
        qs = await self.topology.lookup(queue)
        counts = {"ready": 0, "leased": 0, "delayed": 0, "dead": 0}
        if qs is None:
            return counts
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]  # fmt: skip
        for url, into in ((qs.url, None), (qs.dlq_url, "dead"), (qs.delay_url, "delayed")):
            if url is None:
                continue
            answer = await self.client.call(
                "get_queue_attributes", QueueUrl=url, AttributeNames=names
            )
            got = [int(answer.get("Attributes", {}).get(n, 0)) for n in names]
            if into is None:
                counts["ready"] += got[0]
                counts["leased"] += got[1]
                counts["delayed"] += got[2]
            else:
                counts[into] += sum(got)
        return counts


def _with_send_id(item: Outgoing) -> Outgoing:
    """`item` with a send id: a fresh job's own id (so a producer's retried enqueue is
    deduplicated on FIFO queues), else a random one."""
    if item.send_id is not None:
        return item
    fresh = item.attempt == 0 and item.error is None
    send_id = item.job_id if fresh else _fresh_id()
    return dataclasses.replace(item, send_id=send_id)


def _visibility(seconds: float) -> int:
    return max(0, min(MAX_VISIBILITY_S, math.ceil(seconds)))


def _group(queue: str) -> str:
    """A FIFO message group per offload queue: strict order within the queue."""
    return hashlib.sha256(queue.encode()).hexdigest()[:64]


def _fresh_id() -> str:
    return os.urandom(16).hex()


def _split(entries: list[_T]) -> list[list[_T]]:
    return [entries[i : i + _BATCH] for i in range(0, len(entries), _BATCH)]


def _chunks(entries: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Batches of at most 10 entries and `limit` bytes of bodies (SQS's batch limit)."""
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        weight = message_size(entry["MessageBody"], entry["MessageAttributes"])
        if not chunks or len(chunks[-1]) == _BATCH or size + weight > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += weight
    return chunks


async def _all(calls: Sequence[Awaitable[Any]]) -> None:
    """Run `calls` at once; the first failure is raised once all have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

"""The SQS queues behind one offload queue, their names and attributes.

Every offload queue `Q` is up to three SQS queues:

    {prefix}-Q            the jobs (FIFO, `.fifo`, when the URL's `fifo=` names Q)
    {prefix}-Q-dlq        its dead-letter queue, the main queue's redrive target
    {prefix}-Q-delay      FIFO queues only: delayed and retrying jobs wait here, in a
                          standard queue, since a FIFO queue has no per-message delay

SQS names allow 80 characters of `[A-Za-z0-9_-]`; offload queue names allow 200
printable characters. A name that does not fit as is (or that ends like one of the
suffixes, so that two offload queues could meet in one SQS queue) becomes a readable
part plus a hash of the whole name: distinct offload queues never share SQS queues.
Every SQS queue offload makes carries the tag `offload-queue` with the offload name,
so `queues()` can list them back.

Queues are created on first use (CreateQueue is idempotent when the attributes are
the same) and their URLs cached. The main queue redrives to its DLQ after `redrive`
receives, so a message whose workers keep dying before they can settle it (a crash
in decoding, an out-of-memory kill) is parked instead of looping for ever; offload's
own attempt limit (`WorkerLost`) usually buries such a job first. Not so for a broker
working for a state store (`redrive = False`): the store counts every delivery as an
attempt and buries such a job itself, while a message SQS parked would leave the
store's job `running` for ever; so its main queues get no redrive policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass

from offload.brokers.sqs.client import QueueMissing, SQSClient

__all__ = ["QueueSet", "Topology", "sqs_base_name"]

#: Longest base name: 80, less the longest suffix (`-delay`) and `.fifo`.
_BASE_MAX = 80 - len("-delay") - len(".fifo")
_VALID = re.compile(r"[A-Za-z0-9_-]+")
_SUFFIXES = ("-dlq", "-delay")
#: SQS's longest retention, 14 days: a message (a dead one too) lapses after it.
RETENTION_S = 14 * 24 * 3600
TAG = "offload-queue"


def sqs_base_name(prefix: str, queue: str) -> str:
    """The SQS name for offload queue `queue`, before any suffix; stable and unique."""
    plain = f"{prefix}-{queue}"
    if _VALID.fullmatch(queue) and len(plain) <= _BASE_MAX and not queue.endswith(_SUFFIXES):
        return plain
    digest = hashlib.sha256(queue.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", queue)[: _BASE_MAX - len(prefix) - 18]
    return f"{prefix}-{readable}-{digest}"


@dataclass(frozen=True)
class QueueSet:
    """The SQS queues of one offload queue (URLs), and whether it is FIFO."""

    queue: str
    url: str
    dlq_url: str
    delay_url: str | None  # FIFO only
    fifo: bool


class Topology:
    """Finds or creates each offload queue's SQS queues, once per process."""

    def __init__(self, client: SQSClient) -> None:
        self._client = client
        self._config = client.config
        self._sets: dict[str, QueueSet] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Whether main queues redrive to their DLQ (not for a state store's delivery).
        self.redrive = True

    def forget(self) -> None:
        """Drop every cached queue URL (a queue went missing): the next use finds or
        creates them again."""
        self._sets.clear()

    def known(self) -> list[QueueSet]:
        """The queue sets this process has opened."""
        return list(self._sets.values())

    async def get(self, queue: str) -> QueueSet:
        """The queue set of `queue`, created if missing (with its DLQ and redrive)."""
        found = self._sets.get(queue)
        if found is not None:
            return found
        lock = self._locks.setdefault(queue, asyncio.Lock())
        async with lock:
            found = self._sets.get(queue)
            if found is None:
                found = self._sets[queue] = await self._open(queue)
        return found

    async def lookup(self, queue: str) -> QueueSet | None:
        """The queue set of `queue` if its main queue exists; never creates one."""
        found = self._sets.get(queue)
        if found is not None:
            return found
        fifo = queue in self._config.fifo
        base = sqs_base_name(self._config.prefix, queue)
        if await self._url(_name(base, "", fifo)) is None:
            return None
        return await self.get(queue)

    async def listed(self) -> list[str]:
        """The offload queues that have SQS queues under this prefix (from their tags)."""
        names: set[str] = set()
        params: dict[str, object] = {"QueueNamePrefix": f"{self._config.prefix}-"}
        while True:
            page = await self._client.call("list_queues", **params)
            for url in page.get("QueueUrls", []):
                tail = url.rsplit("/", 1)[-1].removesuffix(".fifo")
                if tail.endswith(_SUFFIXES):
                    continue
                tags = await self._client.call("list_queue_tags", QueueUrl=url)
                if TAG in tags.get("Tags", {}):
                    names.add(tags["Tags"][TAG])
            token = page.get("NextToken")
            if not token:
                return sorted(names)
            params["NextToken"] = token

    async def _open(self, queue: str) -> QueueSet:
        cfg = self._config
        fifo = queue in cfg.fifo
        base = sqs_base_name(cfg.prefix, queue)
        tags = {TAG: queue[:256]}
        dlq_url = await self._ensure(_name(base, "-dlq", fifo), fifo, {}, tags)
        extra = {}
        if self.redrive:
            dlq_attrs = await self._client.call(
                "get_queue_attributes", QueueUrl=dlq_url, AttributeNames=["QueueArn"]
            )
            policy = {
                "deadLetterTargetArn": dlq_attrs["Attributes"]["QueueArn"],
                "maxReceiveCount": str(cfg.redrive),
            }
            extra["RedrivePolicy"] = json.dumps(policy)
        url = await self._ensure(_name(base, "", fifo), fifo, extra, tags)
        delay_url = (
            await self._ensure(_name(base, "-delay", False), False, {}, tags) if fifo else None
        )
        return QueueSet(queue, url, dlq_url, delay_url, fifo)

    async def _url(self, name: str) -> str | None:
        try:
            found = await self._client.call("get_queue_url", QueueName=name)
        except QueueMissing:
            return None
        return str(found["QueueUrl"])

    async def _ensure(
        self, name: str, fifo: bool, extra: dict[str, str], tags: dict[str, str]
    ) -> str:
        """The URL of queue `name`, created with offload's attributes if it is missing.

        An existing queue is used as it is (an operator may have tuned it); its redrive
        policy is set if it has none, so every main queue has its DLQ."""
        url = await self._url(name)
        attributes = {"MessageRetentionPeriod": str(RETENTION_S), **extra}
        if fifo:
            attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
        if url is None:
            created = await self._client.call(
                "create_queue", QueueName=name, Attributes=attributes, tags=tags
            )
            return str(created["QueueUrl"])
        if "RedrivePolicy" in extra:
            current = await self._client.call(
                "get_queue_attributes", QueueUrl=url, AttributeNames=["RedrivePolicy"]
            )
            if "RedrivePolicy" not in current.get("Attributes", {}):
                await self._client.call(
                    "set_queue_attributes",
                    QueueUrl=url,
                    Attributes={"RedrivePolicy": extra["RedrivePolicy"]},
                )
        return url


def _name(base: str, suffix: str, fifo: bool) -> str:
    return f"{base}{suffix}{'.fifo' if fifo else ''}"

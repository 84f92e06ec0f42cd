"""A consumer process on the SQS delivery role, for the SQS chaos scenarios.

    python -m tests.chaos.sqs_consumer URL RUNS_DIR LEASE_S

It does what the worker does with a delivery (reserve in batches, long-poll when idle,
heartbeat every lease/4, settle), on `SQSBroker` alone, until it is killed. Each job's
args are `[seconds]`: its run sleeps that long in 0.1 s steps, recording lines as
`tests/chaos/_harness.py` describes (`S`, `T`, `E`), then acks and records `K`.

The lease rule under test: a run stops (is cancelled) the moment its lease is no longer
certainly held, which is when an extend answers False or when its deadline, counted
from before the last extend that succeeded, is within a second.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

from offload.brokers.records import Lease
from offload.brokers.roles import Settlement
from offload.brokers.sqs import SQSBroker
from offload.codec import decode_envelope
from offload.errors import BrokerUnavailable

QUEUES = ["default"]
CONCURRENCY = 4


def note(runs: str, event: str, lease: Lease) -> None:
    line = f"{event} {lease.job_id} {lease.attempt} {os.getpid()} {time.monotonic():.6f}\n"
    fd = os.open(f"{runs}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Consumer:
    def __init__(self, url: str, runs: str, lease_s: float) -> None:
        self.broker = SQSBroker(url)
        self.runs = runs
        self.lease_s = lease_s
        self.held_until: dict[str, float] = {}  # token -> deadline (time.time())
        self.tasks: dict[str, tuple[Lease, asyncio.Task[None]]] = {}

    async def run(self) -> None:
        await self.broker.connect()
        beat = asyncio.create_task(self.heartbeat())
        try:
            while True:
                free = CONCURRENCY - len(self.tasks)
                try:
                    leases = await self.reserve(free) if free else []
                except BrokerUnavailable:
                    await asyncio.sleep(0.5)
                    continue
                for lease in leases:
                    task = asyncio.create_task(self.work(lease))
                    self.tasks[lease.token] = (lease, task)
                    task.add_done_callback(self._forget(lease.token))
                if not leases:
                    await asyncio.sleep(0.05)
        finally:
            beat.cancel()

    def _forget(self, token: str) -> Callable[[asyncio.Task[None]], None]:
        return lambda _: self.tasks.pop(token, None) and None

    async def reserve(self, free: int) -> list[Lease]:
        start = time.time()
        leases = await self.broker.reserve(
            QUEUES, worker_id=str(os.getpid()), lease_s=self.lease_s, limit=free
        )
        if not leases:
            await self.broker.wait(QUEUES, 2)
            start = time.time()  # a long poll's catch was leased during the wait
            leases = await self.broker.reserve(
                QUEUES, worker_id=str(os.getpid()), lease_s=self.lease_s, limit=free
            )
        for lease in leases:
            self.held_until[lease.token] = min(lease.deadline, start + self.lease_s)
        return leases

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 4)
            held = [lease for lease, _ in self.tasks.values()]
            if not held:
                continue
            start = time.time()
            try:
                answers = await self.broker.extend(held, self.lease_s)
            except BrokerUnavailable:
                continue  # the watchdog in `work` stops what this cannot keep
            for lease, ok in zip(held, answers, strict=True):
                if ok:
                    self.held_until[lease.token] = start + self.lease_s
                else:
                    self.stop(lease)

    def stop(self, lease: Lease) -> None:
        self.held_until.pop(lease.token, None)
        entry = self.tasks.get(lease.token)
        if entry is not None:
            entry[1].cancel()

    async def work(self, lease: Lease) -> None:
        seconds = float(decode_envelope(lease.payload).args[0])
        note(self.runs, "S", lease)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if time.time() > self.held_until.get(lease.token, 0.0) - 1.0:
                return  # the lease may lapse: stop claiming the job
            await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))
            note(self.runs, "T", lease)
        note(self.runs, "E", lease)
        while True:
            try:
                held = await self.broker.settle_many([Settlement.ack(lease, None)])
            except BrokerUnavailable:
                await asyncio.sleep(0.5)
                continue
            break
        self.held_until.pop(lease.token, None)
        if held[0]:
            note(self.runs, "K", lease)


def main() -> None:
    url, runs, lease_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    asyncio.run(Consumer(url, runs, lease_s).run())


if __name__ == "__main__":
    main()

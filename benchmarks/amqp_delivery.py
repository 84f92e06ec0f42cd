"""The RabbitMQ delivery layer alone (`offload.brokers.amqp.AmqpDelivery`), on the
RabbitMQ the peers use: not the worker, so not a row of the peer table, but its
ceiling until `amqp://` runs offload's worker (see benchmarks/README.md).

    .venv/bin/python benchmarks/amqp_delivery.py [--jobs 5000] [--processes 1]

Phases: enqueue one by one (each call awaits its publisher confirm), enqueue in one
call (pipelined confirms), then K consumer processes that reserve, "run" a no-op and
settle each job with `settle_many` (acks), and the enqueue→reserve latency of jobs
sent one at a time to an idle consumer. Queues have a prefix of the run's own and are
deleted after.

    .venv/bin/python benchmarks/amqp_delivery.py --cpu [--jobs 20000] [--rounds 3]

measures instead the CPU per message of one consumer process (user + system, this
process only) over the same queued jobs, rounds alternated: a bare aiormq consumer
(`basic_consume`, a `multiple` ack every 50 deliveries and at the end, the prefetch
`AmqpDelivery` takes for a worker of `--concurrency 100 --prefetch 100`: 400) against
`AmqpDelivery`'s `wait_for_work` → `settle_many` loop, which is what offload's worker
adds its own per-job path to.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import time
import uuid
from typing import Any

import aiormq

from offload.brokers.amqp import AmqpDelivery
from offload.brokers.amqp.topology import Names
from offload.brokers.roles import Settlement
from offload.clock import SystemClock
from offload.codec import encode_envelope
from offload.envelope import Envelope, new_job_id

URL = "amqp://guest:guest@127.0.0.1:5672/"
CLOCK = SystemClock()
#: A `multiprocessing.Value("q")`: the jobs the consumers have done together.
Counter = Any


def job(t: float = 0.0) -> tuple[Envelope, bytes]:
    envelope = Envelope(id=new_job_id(), task="noop", args=[t], created_at=CLOCK.now())
    return envelope, encode_envelope(envelope)


async def consume(url: str, count: int, done: Counter) -> None:
    """Reserve and ack until the consumers together have done `count` jobs."""
    delivery = AmqpDelivery(url)
    try:
        while done.value < count:
            leases = await delivery.reserve(("default",), worker_id="b", lease_s=30, limit=100)
            if not leases:
                await delivery.wait(("default",), 0.05)
                continue
            await delivery.settle_many([Settlement.ack(lease, None) for lease in leases])
            with done.get_lock():
                done.value += len(leases)
    finally:
        await delivery.close()


def _consumer(url: str, count: int, done: Counter) -> None:
    asyncio.run(consume(url, count, done))


async def main(jobs: int, processes: int) -> None:
    url = f"{URL}?prefix=bench-{uuid.uuid4().hex[:8]}"
    producer = AmqpDelivery(url)
    try:
        started = time.perf_counter()
        for _ in range(jobs):
            await producer.enqueue([job()])
        print(f"enqueue one by one: {jobs / (time.perf_counter() - started):,.0f} jobs/s")
        batch = [job() for _ in range(jobs)]
        started = time.perf_counter()
        await producer.enqueue(batch)
        print(f"enqueue in bulk:    {jobs / (time.perf_counter() - started):,.0f} jobs/s")
        done: Counter = multiprocessing.Value("q", 0)  # type: ignore[assignment]
        workers = [
            multiprocessing.Process(target=_consumer, args=(url, 2 * jobs, done))
            for _ in range(processes)
        ]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        print(f"processing, {processes} process(es): {2 * jobs / elapsed:,.0f} jobs/s")
        print(f"enqueue→reserve latency: {await latency(url, producer)}")
    finally:
        await producer.close()
        await cleanup(url)


async def latency(url: str, producer: AmqpDelivery, samples: int = 200) -> str:
    consumer = AmqpDelivery(url)
    lags: list[float] = []
    try:
        await consumer.reserve(("default",), worker_id="b", lease_s=30, limit=1)
        for _ in range(samples):
            sent = time.time()
            await producer.enqueue([job(sent)])
            while not (
                leases := await consumer.reserve(("default",), worker_id="b", lease_s=30, limit=1)
            ):
                await consumer.wait(("default",), 1.0)
            lags.append((time.time() - sent) * 1000)
            await consumer.settle_many([Settlement.ack(leases[0], None)])
            await asyncio.sleep(0.01)
    finally:
        await consumer.close()
    lags.sort()
    return f"p50 {statistics.median(lags):.1f} ms, p99 {lags[int(len(lags) * 0.99) - 1]:.1f} ms"


async def cleanup(url: str) -> None:
    names = Names(url.rpartition("prefix=")[2])
    connection = await aiormq.connect(URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(names.work("default"))
        await channel.exchange_delete(names.work_exchange)
    finally:
        await connection.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare(url: str, count: int) -> float:
    """CPU seconds of a bare aiormq consumer taking `count` queued jobs."""
    names = Names(url.rpartition("prefix=")[2])
    connection = await aiormq.connect(URL)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=400)
        done = asyncio.Event()
        seen = 0

        async def received(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal seen
            seen += 1
            if seen % 50 == 0 or seen == count:
                await channel.basic_ack(message.delivery.delivery_tag, multiple=True)  # type: ignore[union-attr]
            if seen == count:
                done.set()

        started = _cpu_s()
        await channel.basic_consume(names.work("default"), received, no_ack=False)
        await done.wait()
        return _cpu_s() - started
    finally:
        await connection.close()


async def ours(url: str, count: int) -> float:
    """CPU seconds of `AmqpDelivery`'s reserve/settle loop taking `count` queued jobs."""
    delivery = AmqpDelivery(url)
    queues = ("default",)
    try:
        await delivery.connect()
        started, done = _cpu_s(), 0
        while done < count:
            leases = await delivery.wait_for_work(queues, 1.0, worker_id="b", lease_s=30, limit=100)
            await delivery.settle_many([Settlement.ack(lease, None) for lease in leases])
            done += len(leases)
        return _cpu_s() - started
    finally:
        await delivery.close()


async def cpu_per_message(jobs: int, rounds: int) -> None:
    url = f"{URL}?prefix=bench-{uuid.uuid4().hex[:8]}"
    producer = AmqpDelivery(url)
    try:
        for rnd in range(rounds):
            for name, consume in (("bare aiormq", bare), ("AmqpDelivery", ours)):
                for start in range(0, jobs, 1000):
                    await producer.enqueue([job() for _ in range(min(1000, jobs - start))])
                took = await consume(url, jobs)
                print(f"round {rnd + 1} {name:<13} {took / jobs * 1e6:6.1f} µs CPU per message")
    finally:
        await producer.close()
        await cleanup(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="CPU per message, bare vs ours")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.cpu:
        asyncio.run(cpu_per_message(args.jobs, args.rounds))
    else:
        asyncio.run(main(args.jobs, args.processes))

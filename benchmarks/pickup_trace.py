"""Where an idle worker's pick-up latency goes, step by step (issue 16, item 5).

    python benchmarks/pickup_trace.py [--url redis://127.0.0.1:6379/14] [--jobs 500]
        [--rate 500] [--worker-args "--concurrency 100 --prefetch 100"]

One worker process (`python -m offload worker`, started by this script) waits idle;
this process enqueues `--jobs` jobs one by one at `--rate` jobs/s with the sync
`task.enqueue()`, each carrying its sequence number and `time.time()` taken just before
the call (as `benchmarks/run.sh`'s latency phase does). The worker runs with a few
broker methods wrapped to note when they are called and return (`time.time()`, the
same clock in both processes), and writes its notes to a file when the last job ran.
For each job the script then lines up, from the moment `enqueue()` was entered (t0):
the producer's call returning, the first wake-up signal the worker got after t0 (its
`wait` returning, or on Redis a handoff message arriving), the broker call that leased
the job returning (`reserve`, or `wait_for_work` for an idle worker), and the handler's
first line; it prints the median, p90 and p99 of each, and how each job reached the
worker. The URL's
prefix (default `pickup-trace`) keeps the script's keys apart; they are deleted at
the end on Redis. Works on `sqlite:///path` too (the wake-up is the doorbell).

`--slowest N` also notes, in the worker, every event-loop callback that ran longer than
80 µs (its task's name, outer and innermost frames) and every wait in `epoll`, and
prints the worker's timeline around the N slowest pick-ups: it tells a tail made by our
own code (a long callback before the job's) from one where the worker sat in `epoll`
while its message was on the way (the host's wake-up).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVENTS_ENV = "PICKUP_TRACE_EVENTS"
COUNT_ENV = "PICKUP_TRACE_COUNT"
URL_ENV = "PICKUP_TRACE_URL"
LOOP_ENV = "PICKUP_TRACE_LOOP"
#: A loop callback longer than this (seconds) is noted by `--slowest`.
LONG_CALLBACK_S = 0.00008


# -- the worker side (imported by `python -m offload worker pickup_trace:app`) -------------


def _worker_app() -> Any:
    from offload import Offload

    app = Offload(os.environ.get(URL_ENV, "memory://"))
    events: list[tuple[str, float, Any]] = []
    target = int(os.environ.get(COUNT_ENV, "0"))
    out = os.environ.get(EVENTS_ENV, "")
    seen = [0]

    @app.task(name="trace")
    async def trace(seq: int, t0: float) -> None:
        events.append(("start", time.time(), seq))
        seen[0] += 1
        if seen[0] == target and out:
            Path(out).write_text(json.dumps(events))

    _wrap_broker(app, events)
    _note_collections(events)
    if os.environ.get(LOOP_ENV):
        _note_loop(events)
    return app


def _note_collections(events: list[tuple[str, float, Any]]) -> None:
    """Note the garbage collector's passes longer than 0.5 ms (a cause of p99)."""
    import gc

    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) > 0.0005:
            events.append(("gc", time.time(), [info["generation"], took]))

    gc.callbacks.append(callback)


def _note_loop(events: list[tuple[str, float, Any]]) -> None:
    """Note loop callbacks longer than LONG_CALLBACK_S and every `epoll` wait (for
    `--slowest`; this costs a few µs per callback, so the other columns read a little
    slower with it)."""
    import asyncio.events
    import selectors

    run = asyncio.events.Handle._run
    select = selectors.EpollSelector.select

    def timed_run(self: Any) -> None:
        wall, started = time.time(), time.perf_counter()
        try:
            run(self)
        finally:
            if (took := time.perf_counter() - started) > LONG_CALLBACK_S:
                events.append(("callback", wall, [took, _callback_name(self)]))

    def timed_select(self: Any, timeout: float | None = None) -> Any:
        wall = time.time()
        ready = select(self, timeout)
        events.append(("epoll", wall, [time.time() - wall, timeout, len(ready)]))
        return ready

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    selectors.EpollSelector.select = timed_select  # type: ignore[method-assign]


def _callback_name(handle: Any) -> str:
    """The task a loop callback steps, with its outer and innermost frames, or the
    handle."""
    owner = getattr(handle._callback, "__self__", None)
    task = getattr(owner, "_Task__task", None) or owner  # (a TaskStepMethWrapper's task)
    if not hasattr(task, "get_coro"):
        return repr(handle)[:120]
    frames, coro = [], task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f"{task.get_name()} {'>'.join(frames[:3] + frames[-2:])}"


def _wrap_broker(app: Any, events: list[tuple[str, float, Any]]) -> None:
    """Note every lease the worker gets (from `reserve`, or returned by the idle
    worker's `wait_for_work`) and every wake-up signal (`wait` returning; on Redis a
    handoff message arriving)."""
    broker_cls = type(app.broker)

    def leasing(name: str) -> None:
        method = getattr(broker_cls, name, None)
        if method is None:  # an older tree
            return

        async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.time()
            leases = await method(self, *args, **kwargs)
            events.append(("leased", time.time(), [t, name, [lease.job_id for lease in leases]]))
            return leases

        setattr(broker_cls, name, traced)

    leasing("reserve")
    leasing("wait_for_work")
    wait = broker_cls.wait

    async def traced_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        await wait(self, *args, **kwargs)
        events.append(("signal", time.time(), "wake-up"))

    broker_cls.wait = traced_wait
    delivery = getattr(app.broker, "delivery", None)
    receiver = getattr(type(delivery), "_receiver", None)
    if receiver is not None:  # RabbitMQ: when the consumer callback got each job

        def traced_receiver(self: Any, queue: str, generation: int) -> Any:
            receive = receiver(self, queue, generation)

            def traced_receive(message: Any) -> Any:  # called as the callback is (no task)
                events.append(("delivered", time.time(), message.header.properties.message_id))
                return receive(message)

            return traced_receive

        type(delivery)._receiver = traced_receiver  # type: ignore[union-attr]
    handoff = getattr(app.broker, "_handoff", None)
    if handoff is not None:
        received = handoff.received

        def traced_received(data: bytes) -> None:
            events.append(("signal", time.time(), "handoff"))
            received(data)

        handoff.received = traced_received


if os.environ.get(URL_ENV):
    app = _worker_app()


# -- the driver --------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14?prefix=pickup-trace")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--worker-args", default="--concurrency 100 --prefetch 100")
    parser.add_argument("--slowest", type=int, default=0, help="show the worker's timeline "
                        "around the N slowest pick-ups")  # fmt: skip
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from offload import Offload

    workdir = Path(tempfile.mkdtemp(prefix="pickup-trace-"))
    events_file = workdir / "events.json"
    warm = 10
    env = dict(os.environ)
    env.update({URL_ENV: args.url, EVENTS_ENV: str(events_file), COUNT_ENV: str(args.jobs + warm)})
    if args.slowest:
        env[LOOP_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "offload", "worker", "pickup_trace:app", "--log-level", "warning"]
    worker = subprocess.Popen([*argv, *args.worker_args.split()], env=env, cwd=workdir)
    producer = Offload(args.url)
    task = producer.task(name="trace")(lambda seq, t0: None)
    calls: dict[str, tuple[int, float, float]] = {}
    published: dict[str, tuple[float, float]] = {}  # job id -> publish called, confirmed
    _trace_publish(producer, published)
    try:
        for i in range(warm):
            task.enqueue(-1 - i, time.time())
        time.sleep(2.0)
        period = 1.0 / args.rate
        next_at = time.perf_counter()
        for seq in range(args.jobs):
            while (delay := next_at - time.perf_counter()) > 0:
                time.sleep(delay)
            t0 = time.time()
            job = task.enqueue(seq, t0)
            calls[job.id] = (seq, t0, time.time())
            next_at += period
        deadline = time.monotonic() + 60
        while not events_file.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the worker did not run every job")
            time.sleep(0.05)
        time.sleep(0.1)
        events = json.loads(events_file.read_text())
        if os.environ.get("PICKUP_TRACE_KEEP"):
            Path(os.environ["PICKUP_TRACE_KEEP"]).write_text(json.dumps(events))
    finally:
        worker.terminate()
        worker.wait(30)
        if args.url.startswith("redis"):
            _drop_keys(args.url)
        producer.close()
    _report(calls, events, args, published)
    if args.slowest:
        _slowest(calls, events, args.slowest)


def _trace_publish(producer: Any, published: dict[str, tuple[float, float]]) -> None:
    """On RabbitMQ: note when the publish of each job is called and when its confirm
    returns (every `Link` of this process, the sync portal has its own broker; and the
    sync producer's blocking publisher)."""
    if not str(producer.producer.url).startswith("amqp"):
        return
    from offload.brokers.amqp._connection import Link

    publish = Link.publish

    async def traced(self: Any, body: bytes, **kwargs: Any) -> None:
        t = time.time()
        await publish(self, body, **kwargs)
        published[str(kwargs["properties"].message_id)] = (t, time.time())

    Link.publish = traced  # type: ignore[method-assign]
    try:  # the sync producer's own path (pika, from the calling thread)
        from offload.brokers.amqp._blocking import BlockingPublisher
    except ImportError:  # a checkout before it
        return
    blocking = BlockingPublisher.publish

    def traced_blocking(self: Any, body: bytes, **kwargs: Any) -> None:
        t = time.time()
        blocking(self, body, **kwargs)
        published[str(kwargs["job_id"])] = (t, time.time())

    BlockingPublisher.publish = traced_blocking  # type: ignore[method-assign]


def _drop_keys(url: str) -> None:
    import redis

    from offload.brokers.redis._connection import parse_url

    options = parse_url(url)
    client = redis.Redis.from_url(options.redis_url)
    for key in client.scan_iter(match=f"{options.prefix}*", count=1000):
        client.delete(key)
    client.close()


def _rabbitmq_steps(
    note: Any,
    job_id: str,
    t0: float,
    published: dict[str, tuple[float, float]],
    delivered: dict[str, float],
) -> None:
    """On RabbitMQ: the publish on the producer's loop, its confirm, the delivery."""
    if job_id in published:
        note("  publish called", published[job_id][0] - t0)
        note("  publish confirmed", published[job_id][1] - t0)
    if job_id in delivered:
        note("delivered to the consumer", delivered[job_id] - t0)


def _report(
    calls: dict[str, tuple[int, float, float]],
    events: list[Any],
    args: Any,
    published: dict[str, tuple[float, float]],
) -> None:
    starts = {seq: t for kind, t, seq in events if kind == "start"}
    delivered = {job_id: t for kind, t, job_id in events if kind == "delivered"}
    leased: dict[str, tuple[float, float, str]] = {}  # job id -> call, return, method
    signals: list[tuple[float, str]] = []
    for kind, t, extra in events:
        if kind == "leased":
            for job_id in extra[2]:
                leased.setdefault(job_id, (extra[0], t, extra[1]))
        elif kind == "signal":
            signals.append((t, extra))
    signals.sort()
    steps: dict[str, list[float]] = {}
    paths: dict[str, int] = {}

    def note(step: str, value: float) -> None:
        steps.setdefault(step, []).append(value)

    for job_id, (seq, t0, t1) in calls.items():
        if seq not in starts or job_id not in leased:
            continue
        called, got, method = leased[job_id]
        i = bisect.bisect_left(signals, (t0, ""))
        signal = signals[i] if i < len(signals) and signals[i][0] <= got else None
        path = f"{method} after a {signal[1]}" if signal else f"{method}, no signal"
        paths[path] = paths.get(path, 0) + 1
        note("enqueue() call", t1 - t0)
        _rabbitmq_steps(note, job_id, t0, published, delivered)
        if signal:
            note("signal received", signal[0] - t0)
        note("lease returned", got - t0)
        if method == "reserve":
            note("  of which the reserve call", got - called)
        note("handler started", starts[seq] - t0)
        note("  of which lease -> handler", starts[seq] - got)
    print(f"{args.url}: {len(steps.get('handler started', []))} jobs at {args.rate:.0f}/s, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'after t0 (enqueue entered)':<30} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, values in steps.items():
        print(
            f"{name:<30} {statistics.median(values) * 1e3:8.3f} "
            f"{_pct(values, 0.9) * 1e3:8.3f} {_pct(values, 0.99) * 1e3:8.3f}"
        )
    passes = [extra for kind, _, extra in events if kind == "gc"]
    if passes:
        print(f"garbage collector passes over 0.5 ms in the worker: {len(passes)}, longest "
              f"{max(took for _, took in passes) * 1e3:.1f} ms (generations "
              f"{sorted({g for g, _ in passes})})")  # fmt: skip
    print("how jobs reached the worker:", "; ".join(f"{k}: {n}" for k, n in sorted(paths.items())))


def _slowest(calls: dict[str, tuple[int, float, float]], events: list[Any], n: int) -> None:
    """The worker's timeline from 2 ms before each of the `n` slowest pick-ups' enqueue
    to its handler: long callbacks, `epoll` waits that lasted over 0.1 ms, signals,
    leases and handler starts, in ms after that job's t0."""
    starts = {seq: t for kind, t, seq in events if kind == "start"}
    timeline = sorted(events, key=lambda event: event[1])
    times = [event[1] for event in timeline]
    slowest = sorted(
        ((starts[seq] - t0, seq, t0, t1) for seq, t0, t1 in calls.values() if seq in starts),
        reverse=True,
    )[:n]
    for total, seq, t0, t1 in slowest:
        print(f"\njob {seq}: handler at {total * 1e3:.3f} ms, enqueue() returned at "
              f"{(t1 - t0) * 1e3:.3f}")  # fmt: skip
        begin = bisect.bisect_left(times, t0 - 0.002)
        end = bisect.bisect_right(times, starts[seq])
        for kind, t, extra in timeline[begin:end]:
            at = f"{(t - t0) * 1e3:+8.3f}"
            if kind == "callback":
                print(f"  {at} callback {extra[0] * 1e3:.3f} ms: {extra[1]}")
            elif kind == "epoll" and extra[0] > 0.0001:
                print(f"  {at} in epoll {extra[0] * 1e3:.3f} ms -> {extra[2]} ready")
            elif kind == "leased":
                print(f"  {at} {extra[1]} (called {(extra[0] - t0) * 1e3:+.3f}) returned "
                      f"{(t - t0) * 1e3:+.3f}: {len(extra[2])} jobs")  # fmt: skip
            elif kind in ("signal", "start", "gc"):
                print(f"  {at} {kind} {extra}")


if __name__ == "__main__":
    main()

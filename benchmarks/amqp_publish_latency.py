"""Enqueue->start latency on RabbitMQ: the sync producer's own path against the portal's.

    python benchmarks/amqp_publish_latency.py [--url amqp://guest:guest@127.0.0.1:5672/]
        [--jobs 600] [--rate 500] [--block 50]

One worker process (`python -m offload worker`, started by this script, RabbitMQ without
a state store) waits idle; this process enqueues `--jobs` jobs per path one by one at
`--rate` jobs/s with the sync `task.enqueue()`, in blocks of `--block` jobs that
alternate between the two paths, so both see the same machine load:

- `blocking`: the calling thread publishes on a pooled pika connection with confirms
  (`offload.brokers.amqp._blocking`, the default for a plain sync enqueue);
- `portal`: the coroutine hops to the sync portal's event loop, which publishes with
  aiormq (`enqueue_blocking` switched off for those blocks: the path before it).

Each job carries `time.time()` taken just before the call; the handler notes
`time.time()` on its first line (the same clock in both processes). Prints p50, p90 and
p99 of each path (ms), and the producer's time per call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pickup_trace import _pct  # this folder is on sys.path: the script's own, or PYTHONPATH

HERE = Path(__file__).resolve().parent
OUT_ENV = "AMQP_PUBLISH_LATENCY_OUT"
URL_ENV = "AMQP_PUBLISH_LATENCY_URL"


def _worker_app() -> Any:
    from offload import Offload

    app = Offload(os.environ[URL_ENV])
    out = open(os.environ[OUT_ENV], "a", buffering=1)  # open for the worker's life

    @app.task(name="probe")
    async def probe(path: str, t0: float) -> None:
        took = time.time() - t0
        out.write(f"{path} {took}\n")

    return app


if os.environ.get(URL_ENV):
    app = _worker_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--jobs", type=int, default=600, help="jobs per path")
    parser.add_argument("--rate", type=float, default=500.0, help="jobs/s")
    parser.add_argument("--block", type=int, default=50, help="jobs per alternation")
    args = parser.parse_args()
    url = f"{args.url}{'&' if '?' in args.url else '?'}prefix=publish-latency-{os.getpid()}"
    out = Path(tempfile.mkdtemp()) / "latencies.txt"
    out.touch()
    env = {
        **os.environ,
        URL_ENV: url,
        OUT_ENV: str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    os.environ[URL_ENV], os.environ[OUT_ENV] = url, str(out)
    from offload import Offload

    producer = Offload(url)

    @producer.task(name="probe")
    async def probe(path: str, t0: float) -> None: ...

    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "amqp_publish_latency:app", "-c", "8"],
        env=env,
        cwd=HERE,
    )
    try:
        _run(args, producer, probe, out)
    finally:
        worker.terminate()
        worker.wait(30)
        producer.close()
        _drop_queues(url)


def _drop_queues(url: str) -> None:
    """Delete what the run declared (its own prefix)."""
    import pika

    from offload.brokers.amqp.settings import parse_url
    from offload.brokers.amqp.topology import Names

    settings = parse_url(url)
    names = Names(settings.prefix)
    connection = pika.BlockingConnection(pika.URLParameters(settings.connect_url))
    channel = connection.channel()
    channel.queue_delete(names.work("default"))
    channel.exchange_delete(names.work_exchange)
    connection.close()


def _run(args: argparse.Namespace, producer: Any, probe: Any, out: Path) -> None:
    probe.enqueue("warm", time.time())  # declares the queue (the portal's broker)
    deadline = time.monotonic() + 60
    while "warm" not in out.read_text():
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start")
        time.sleep(0.05)
    delivery = producer.producer.portal_broker.delivery
    blocking = type(delivery).enqueue_blocking
    calls: dict[str, list[float]] = {"blocking": [], "portal": []}
    interval = 1 / args.rate
    sent = 0
    next_at = time.perf_counter()
    for block in range(2 * args.jobs // args.block):
        path = ("blocking", "portal")[block % 2]
        delivery.enqueue_blocking = (
            blocking.__get__(delivery) if path == "blocking" else (lambda *a, **k: None)
        )
        time.sleep(0.2)  # idle again between blocks
        next_at = time.perf_counter()
        for _ in range(args.block):
            while time.perf_counter() < next_at:
                pass
            t0 = time.time()
            started = time.perf_counter()
            probe.enqueue(path, t0)
            calls[path].append(time.perf_counter() - started)
            sent += 1
            next_at += interval
    deadline = time.monotonic() + 30
    while len(lines := out.read_text().splitlines()) < sent + 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(lines) - 1} of {sent} jobs started")
        time.sleep(0.05)
    got: dict[str, list[float]] = {"blocking": [], "portal": []}
    for line in lines:
        path, took = line.split()
        if path in got:
            got[path].append(float(took) * 1000)
    load = os.getloadavg()[0]
    print(
        f"{args.jobs} jobs per path at {args.rate:.0f}/s, blocks of {args.block}, load {load:.2f}"
    )
    print(f"{'path':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'call p50 ms':>12}")
    for path, values in got.items():
        call = statistics.median(calls[path]) * 1000
        print(
            f"{path:<10} {_pct(values, 0.5):8.3f} {_pct(values, 0.9):8.3f} "
            f"{_pct(values, 0.99):8.3f} {call:12.3f}"
        )


if __name__ == "__main__":
    main()

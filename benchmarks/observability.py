"""The cost of observability on processing: the same no-op processing benchmark as
`throughput.py`, with nothing, metrics, tracing, and both, in one run (the variants
interleaved, so load changes hit them alike); prints a Markdown table.

    python benchmarks/observability.py [--jobs 20000] [--runs 5] [--brokers memory,sqlite]

Metrics: `offload.metrics.Metrics` (prometheus-client, in-process registry). Tracing:
`offload.tracing.Tracing` with the OpenTelemetry SDK, every span sampled and handed to
a `BatchSpanProcessor` whose exporter drops them (the export itself is the collector's
cost, not offload's). The producer side is excluded: jobs are enqueued before the clock
starts, without hooks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from throughput import make_app

from offload import Offload, Worker
from offload.metrics import Metrics
from offload.tracing import Tracing


class Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracing(app: Offload) -> Callable[[], None]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping(), max_queue_size=100_000))
    app.add_hook(Tracing(provider))
    return provider.shutdown


def metrics(app: Offload) -> Callable[[], None]:
    app.add_hook(Metrics(app))
    return lambda: None


def both(app: Offload) -> Callable[[], None]:
    metrics(app)
    return tracing(app)


VARIANTS: dict[str, Callable[[Offload], Callable[[], None]] | None] = {
    "off": None,
    "metrics": metrics,
    "tracing": tracing,
    "metrics + tracing": both,
}


def bench(broker: str, n: int, setup: Callable[[Offload], Callable[[], None]] | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(broker, Path(tmp))
        done = [0]

        @app.task(name="noop")
        async def noop() -> None:
            done[0] += 1

        for start in range(0, n, 1000):
            noop.enqueue_many([()] * min(1000, n - start))
        teardown = setup(app) if setup is not None else (lambda: None)

        async def run() -> float:
            worker = Worker(app, concurrency=100, prefetch=100)
            started = time.perf_counter()
            await worker.drain()
            return time.perf_counter() - started

        elapsed = app.portal.run(run())
        teardown()
        app.close()
    assert done[0] == n, done
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--brokers", default="memory,sqlite")
    args = parser.parse_args()
    print(f"\n{args.jobs:,} no-op async jobs, 1 worker process, median of {args.runs} runs\n")
    print("| broker | " + " | ".join(f"{v} (jobs/s)" for v in VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for broker in args.brokers.split(","):
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.runs):
            for name, setup in VARIANTS.items():
                results[name].append(bench(broker, args.jobs, setup))
        off = statistics.median(results["off"])
        cells = []
        for name in VARIANTS:
            rate = statistics.median(results[name])
            cells.append(f"{rate:,.0f}" + ("" if name == "off" else f" ({rate / off - 1:+.1%})"))
        print(f"| {broker} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

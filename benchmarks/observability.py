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
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from throughput import bench_process

from offload import Offload
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--brokers", default="memory,sqlite")
    args = parser.parse_args()
    print(f"\n{args.jobs:,} no-op async jobs, 1 worker process, median of {args.runs} runs")
    print("(jobs/s, and CPU microseconds per job, which a busy host disturbs less)\n")
    print("| broker | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for broker in args.brokers.split(","):
        results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for _ in range(args.runs):
            for name, setup in VARIANTS.items():
                results[name].append(bench_process(broker, args.jobs, setup))
        medians = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for name, rs in results.items()
        }
        off = medians["off"]["cpu us/job"]
        cells = []
        for name, m in medians.items():
            cpu = m["cpu us/job"]
            extra = "" if name == "off" else f", {cpu - off:+.0f} us"
            cells.append(f"{m['jobs/s']:,.0f} jobs/s; {cpu:.0f} us/job{extra}")
        print(f"| {broker} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""`offload metrics`: the broker-wide Prometheus gauges, served from one place.

Workers count what they do (`offload worker --metrics-port`); what the broker holds
(jobs per queue and state, the oldest ready job's age, live workers) is read here at
each scrape, once for the whole fleet.
"""

from __future__ import annotations

import signal
import threading

import click

from offload.cli.shared import (
    app_from_options,
    app_option,
    env_twin,
    need,
    setup_logging,
    url_option,
)

__all__ = ["metrics"]


@click.command()
@app_option
@url_option
@click.option("--port", default=9108, type=click.IntRange(0, 65535), **env_twin("METRICS_PORT"),
              help="Serve /metrics on this port.")  # fmt: skip
@click.option("--bind", default="0.0.0.0", **env_twin("METRICS_BIND"),
              help="Address to listen on.")  # fmt: skip
@click.option("--log-level", default="info", **env_twin("LOG_LEVEL"),
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("-q", "--queue", "queues", multiple=True,
              help="Only this queue (repeatable); names queues a broker cannot list "
              "(amqp:// alone).")  # fmt: skip
def metrics(
    app_spec: str | None,
    url: str | None,
    port: int,
    bind: str,
    log_level: str,
    queues: tuple[str, ...],
) -> None:
    """Serve the broker's queue gauges for Prometheus until SIGTERM or Ctrl-C.

    offload_queue_jobs{queue,state}, offload_queue_oldest_age_seconds{queue} and
    offload_workers (left out where the broker keeps no worker registry: amqp:// or
    sqs:// without a state store), read from the broker at each scrape. Run one per
    broker.
    """
    setup_logging(log_level)
    module = need("offload.metrics", "metrics", "offload metrics")
    from prometheus_client import CollectorRegistry

    app = app_from_options(app_spec, url)
    registry = CollectorRegistry()
    registry.register(module.BrokerCollector(app, queues=queues))
    module.serve(port, registry, addr=bind)
    click.echo(f"serving broker metrics on http://{bind}:{port}/metrics", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    app.close()

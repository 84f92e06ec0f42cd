"""`offload worker`: run jobs, in one process or a supervised group of processes.

Signals: the first SIGTERM/SIGINT stops gracefully (`Worker.stop`), the second ends
the grace period now, a third ends the process at once (leases lapse). The supervisor
puts each worker in a process group of its own, so a terminal's Ctrl-C reaches the
workers once, through the supervisor, and is not counted twice.

Recycling (`--max-jobs`, `--max-memory`) needs a supervisor to start the replacement,
so a single worker with either limit runs supervised too (one child).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from offload.app import Offload
from offload.cli.shared import env_twin, load_app, need, setup_logging
from offload.worker import Worker, probes
from offload.worker.recycling import EXIT_RECYCLED

logger = logging.getLogger("offload.cli")

#: A child worker that died is restarted after this many seconds (supervisor mode).
RESTART_DELAY_S = 1.0
#: How often a supervised worker checks that its supervisor is still alive, seconds.
ORPHAN_CHECK_S = 1.0


@click.command()
@click.argument("app_spec", metavar="MODULE:APP", envvar="OFFLOAD_APP", required=False)
@click.option("--django", "django_settings", default=None, metavar="SETTINGS", **env_twin("DJANGO"),
              help="Run a Django project's tasks (offload.contrib.django): its settings module; "
                   "MODULE:APP is then not needed.")  # fmt: skip
@click.option("-c", "--concurrency", default=10, type=click.IntRange(1), **env_twin("CONCURRENCY"),
              help="Jobs run at once per process.")  # fmt: skip
@click.option("-p", "--processes", default=1, type=click.IntRange(1), **env_twin("PROCESSES"),
              help="Worker processes (supervised; a dead one is restarted).")  # fmt: skip
@click.option("-q", "--queues", default=None, **env_twin("QUEUES"),
              help="Comma-separated queues (default: every queue of the app's tasks).")  # fmt: skip
@click.option("--prefetch", default=0, type=click.IntRange(0), **env_twin("PREFETCH"),
              help="Jobs reserved beyond --concurrency, waiting for a slot.")  # fmt: skip
@click.option("--lease", default=30.0, type=click.FloatRange(0.1), **env_twin("LEASE"),
              help="Lease (visibility timeout) in seconds, renewed while a job runs.")  # fmt: skip
@click.option("--grace", default=30.0, type=click.FloatRange(0), **env_twin("GRACE"),
              help="Seconds running jobs get to finish after SIGTERM.")  # fmt: skip
@click.option("--poll", default=1.0, type=click.FloatRange(0.001), **env_twin("POLL"),
              help="Longest idle wait between reservations, seconds.")  # fmt: skip
@click.option("--max-jobs", default=None, type=click.IntRange(1), **env_twin("MAX_JOBS"),
              help="Replace a worker process once it has taken this many jobs.")  # fmt: skip
@click.option("--max-memory", default=None, type=click.IntRange(1), **env_twin("MAX_MEMORY"),
              help="Replace a worker process once its resident memory passes this many MB "
              "(checked after each job).")  # fmt: skip
@click.option("--scheduler", "run_scheduler", is_flag=True, **env_twin("SCHEDULER"),
              help="Also enqueue the app's schedules (safe in every worker).")  # fmt: skip
@click.option("--health-port", type=click.IntRange(0, 65535), **env_twin("HEALTH_PORT"),
              help="Serve GET /live and /ready on this port (with --processes N: by the "
              "supervisor, ready when every process is).")  # fmt: skip
@click.option("--health-host", default="0.0.0.0", **env_twin("HEALTH_HOST"),
              help="Address the health probes listen on.")  # fmt: skip
@click.option("--ready-within", default=60.0, type=click.FloatRange(0.1),
              **env_twin("READY_WITHIN"),
              help="/ready fails when the fetch loop made no progress for this many seconds "
              "(or the broker does not answer).")  # fmt: skip
@click.option("--log-level", default="info", **env_twin("LOG_LEVEL"),
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("--log-format", default="text", **env_twin("LOG_FORMAT"),
              type=click.Choice(["text", "json"]), help="json: one object per line.")  # fmt: skip
@click.option("--log-config", default=None, metavar="FILE", **env_twin("LOG_CONFIG"),
              help="A logging configuration (dictConfig as .json/.toml, or fileConfig "
              ".ini); replaces --log-level/--log-format.")  # fmt: skip
@click.option("--quiet-jobs", is_flag=True, **env_twin("QUIET_JOBS"),
              help="No INFO line per finished job (offload.jobs at WARNING): failures "
              "are still logged.")  # fmt: skip
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              **env_twin("METRICS_PORT"),
              help="Serve Prometheus metrics on this port (/metrics; with --processes, the "
              "sum of all processes). Needs offload[metrics].")  # fmt: skip
@click.option("--metrics-bind", default="0.0.0.0", **env_twin("METRICS_BIND"),
              help="Address the metrics listen on (127.0.0.1: this host only).")  # fmt: skip
@click.option("--tracing", is_flag=True, **env_twin("TRACING"),
              help="OpenTelemetry spans for each attempt (offload.tracing), sent by the "
              "SDK your app module (or opentelemetry-instrument) sets up.")  # fmt: skip
def worker(
    app_spec: str | None,
    django_settings: str | None,
    concurrency: int,
    processes: int,
    queues: str | None,
    prefetch: int,
    lease: float,
    grace: float,
    poll: float,
    max_jobs: int | None,
    max_memory: int | None,
    run_scheduler: bool,
    health_port: int | None,
    health_host: str,
    ready_within: float,
    log_level: str,
    log_format: str,
    log_config: str | None,
    quiet_jobs: bool,
    metrics_port: int | None,
    metrics_bind: str,
    tracing: bool,
) -> None:
    """Run jobs of the app MODULE:APP until SIGTERM or Ctrl-C.

    The first signal stops taking jobs, lets running ones finish within --grace and
    gives the rest back; a second signal ends the grace period at once. A sync handler
    still running then cannot be stopped: the process exits without giving its job
    back, and the job runs again once its lease lapses. A third signal exits at once.

    --max-jobs / --max-memory: a process past the limit finishes its running jobs and
    exits, and a fresh one replaces it (with one process, it runs supervised too).
    """
    setup_logging(log_level, log_format, log_config)
    if quiet_jobs:
        logging.getLogger("offload.jobs").setLevel(logging.WARNING)
    if django_settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = django_settings
        app_spec = app_spec or "offload.contrib.django.worker:app"
    if not app_spec:
        raise click.UsageError("give MODULE:APP (or --django SETTINGS for a Django project)")
    recycling = max_jobs is not None or max_memory is not None
    health = Health(health_host, health_port, ready_within) if health_port is not None else None
    if processes > 1 or (recycling and not _supervised()):
        sys.exit(_supervise(processes, health, metrics_port, metrics_bind))
    if _supervised():  # the supervisor serves the probes; this process reports to it
        report_dir = os.environ.get("OFFLOAD_HEALTH_DIR")
        health = Health.reporting(Path(report_dir), ready_within) if report_dir else None
    app = load_app(app_spec)
    observe(app, metrics_port=metrics_port, metrics_bind=metrics_bind, tracing=tracing,
            serve=not _supervised())  # fmt: skip
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    w = Worker(
        app,
        queues=queue_list,
        concurrency=concurrency,
        prefetch=prefetch,
        lease_s=lease,
        grace_s=grace,
        poll_s=poll,
        scheduler=run_scheduler,
        max_jobs=max_jobs,
        max_memory_mb=max_memory,
        hard_exit=True,
    )
    settle_gc()
    sys.exit(asyncio.run(_run(w, health)))


#: The worker process's young-generation threshold (Python's default: 700, 2,000 from
#: 3.13): objects allocated, net, between two collections of the youngest generation.
GC_THRESHOLD = 10_000


def settle_gc() -> None:
    """Set the collector up for a long-lived worker process, once its app is loaded.

    What is loaded by now lives as long as the process: collected once, then frozen,
    it is out of the collector's sight, whose full passes would otherwise scan it all
    (about 20 ms on a small VM, every job waiting meanwhile: the p99 of pick-up
    latency, issue 16). And a busy worker allocates a few dozen objects per job, most
    dead within the job: collecting the youngest generation every 10,000 of them
    instead of every 700 takes about a tenth off its CPU per job (in-process drains of
    20,000 no-op jobs on Redis, 5 alternated rounds: median 30.2 → 27.2 µs), for at
    most that many more objects waiting to be freed. A threshold the app set higher,
    or a collector it disabled, is left as it is."""
    gc.collect()
    gc.freeze()
    first, *older = gc.get_threshold()
    if gc.isenabled() and first < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)


@dataclass(frozen=True, slots=True)
class Health:
    """Where the probes are served (`port`), or, in a supervised process, the
    directory its verdicts are written to for the supervisor (`report_dir`)."""

    host: str
    port: int | None
    ready_s: float
    report_dir: Path | None = None

    @classmethod
    def reporting(cls, report_dir: Path, ready_s: float) -> Health:
        return cls("", None, ready_s, report_dir)


async def _probes(w: Worker, health: Health) -> None:
    """Serve the probes on the worker's loop, or report to the supervisor."""
    if health.port is not None:
        server = await probes.serve(w, health.host, health.port, health.ready_s)
        async with server:
            await server.serve_forever()
    assert health.report_dir is not None
    while True:
        with contextlib.suppress(OSError):
            probes.write_report(health.report_dir, w, health.ready_s)
        await asyncio.sleep(probes.REPORT_S)


async def _run(w: Worker, health: Health | None = None) -> int:
    """Run the worker with its signal handlers; returns the exit code."""
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signals["count"] > 2:  # nothing is given back: the leases lapse
            logger.warning("%s again: exiting at once", name)
            logging.shutdown()  # flushes every handler: os._exit skips that
            os._exit(128 + signum)
        force = signals["count"] > 1
        logger.info("%s: %s", name, "stopping now" if force else "stopping")
        w.stop(force=force)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    watchdog = asyncio.create_task(_orphan_watchdog(w))
    prober = asyncio.create_task(_probes(w, health)) if health is not None else None
    try:
        await w.run()
    finally:
        watchdog.cancel()
        if prober is not None:
            prober.cancel()
        await w.app.aclose()
    # Stopped: a late signal changes nothing. Ignored, because Python's finalization
    # resets its own handlers to SIG_DFL and the signal would kill the process.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return EXIT_RECYCLED if w.recycled else 0


def _supervised() -> bool:
    """Whether this process is a worker started by `_supervise`."""
    return os.environ.get("OFFLOAD_SUPERVISOR_PID") == str(os.getppid())


async def _orphan_watchdog(w: Worker) -> None:
    """A supervised worker stops gracefully when its supervisor dies (even by SIGKILL),
    instead of running on unsupervised forever."""
    supervisor = os.environ.get("OFFLOAD_SUPERVISOR_PID")
    if not supervisor:
        return
    while os.getppid() == int(supervisor):
        await asyncio.sleep(ORPHAN_CHECK_S)
    logger.warning("supervisor %s is gone; stopping", supervisor)
    w.stop()


def observe(
    app: Offload,
    *,
    metrics_port: int | None,
    tracing: bool,
    serve: bool,
    metrics_bind: str = "0.0.0.0",
) -> None:
    """Register the metrics and tracing hooks the flags ask for; serve the metrics
    unless a supervisor serves them (`serve` False: they go to its directory)."""
    if tracing:
        Tracing = need("offload.tracing", "otel", "--tracing").Tracing
        app.add_hook(Tracing())
    if metrics_port is None:
        return
    metrics_module = need("offload.metrics", "metrics", "--metrics-port")
    Metrics, serve_metrics = metrics_module.Metrics, metrics_module.serve

    metrics = Metrics(app)
    app.add_hook(metrics)
    if serve:
        serve_metrics(metrics_port, metrics.registry, addr=metrics_bind)


def _supervise(
    count: int,
    health: Health | None = None,
    metrics_port: int | None = None,
    metrics_bind: str = "0.0.0.0",
) -> int:
    """Run `count` single-process workers as children; replace any that recycled
    itself at once and restart any that died after a pause; pass SIGTERM/SIGINT on to
    all of them (as SIGTERM) and wait. With `health`, serve the probes for all of them
    (`probes.py`): the children report into a directory of ours. With `metrics_port`,
    serve the sum of the children's metrics (prometheus-client's multiprocess mode, in
    a directory of ours removed at the end)."""
    metrics_dir = None
    if metrics_port is not None:
        metrics = need("offload.metrics", "metrics", "--metrics-port")
        metrics_dir = metrics.multiprocess_dir()
        metrics.serve_children(metrics_port, metrics_dir, addr=metrics_bind)
    try:
        return _supervise_probed(count, health, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise_probed(count: int, health: Health | None, metrics_dir: str | None) -> int:
    argv = [sys.executable, "-m", "offload", *sys.argv[1:]]
    env_patch = {"OFFLOAD_PROCESSES": "1", "OFFLOAD_SUPERVISOR_PID": str(os.getpid())}
    if metrics_dir is not None:
        env_patch["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    signals: list[int] = []
    started: dict[int, float] = {}  # child pid -> monotonic start, for the probes
    with tempfile.TemporaryDirectory(prefix="offload-health-") as report_dir:
        if health is not None and health.port is not None:
            env_patch["OFFLOAD_HEALTH_DIR"] = report_dir
            probe = functools.partial(
                probes.supervisor_verdicts, Path(report_dir), started, health.ready_s
            )
            server = probes.serve_supervisor(health.host, health.port, probe)
        try:
            return _supervise_children(argv, env_patch, count, signals, started)
        finally:
            if health is not None and health.port is not None:
                server.shutdown()


def _supervise_children(
    argv: list[str],
    env_patch: dict[str, str],
    count: int,
    signals: list[int],
    started: dict[int, float],
) -> int:
    metrics_dir = env_patch.get("PROMETHEUS_MULTIPROC_DIR")  # the children's metrics

    def spawn() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [*argv, "--processes", "1"], env={**os.environ, **env_patch}, process_group=0
        )
        started[child.pid] = time.monotonic()
        for signum in signals:  # a signal that came while it was starting
            child.send_signal(signum)
        return child

    children = [spawn() for _ in range(count)]

    def forward(signum: int, _frame: object) -> None:
        signals.append(signal.SIGTERM)  # a child still starting dies quietly of it
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        alive = False
        for i, child in enumerate(children):
            code = child.poll()
            if code is None:
                alive = True
            elif not signals:
                _replace(child, code, metrics_dir)
                started.pop(child.pid, None)
                children[i] = spawn()
                alive = True
        if not alive:  # a recycle, or death by our SIGTERM before it could start, is clean
            codes = [c.returncode or 0 for c in children]
            return max(0 if c in (EXIT_RECYCLED, -signal.SIGTERM) else abs(c) for c in codes)
        time.sleep(0.2)


def _replace(child: subprocess.Popen[bytes], code: int, metrics_dir: str | None) -> None:
    """Before a worker process is replaced: forget its live metrics (its counts stay),
    say why, and after a crash pause."""
    if metrics_dir is not None:
        from offload.metrics import child_exited

        child_exited(metrics_dir, child.pid)
    if code == EXIT_RECYCLED:
        logger.info("worker process %d recycled; starting a new one", child.pid)
    else:
        logger.warning("worker process %d exited with %d; restarting", child.pid, code)
        time.sleep(RESTART_DELAY_S)

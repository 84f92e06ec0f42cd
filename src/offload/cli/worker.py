"""`offload worker`: run jobs, in one process or a supervised group of processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import click

from offload.cli import env_twin, load_app, setup_logging
from offload.worker import Worker

logger = logging.getLogger("offload.cli")

#: A child worker that died is restarted after this many seconds (supervisor mode).
RESTART_DELAY_S = 1.0
#: How often a supervised worker checks that its supervisor is still alive, seconds.
ORPHAN_CHECK_S = 1.0


@click.command()
@click.argument("app_spec", metavar="MODULE:APP", envvar="OFFLOAD_APP")
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
@click.option("--scheduler", "run_scheduler", is_flag=True, **env_twin("SCHEDULER"),
              help="Also enqueue the app's schedules (safe in every worker).")  # fmt: skip
@click.option("--log-level", default="info", **env_twin("LOG_LEVEL"),
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("--log-format", default="text", **env_twin("LOG_FORMAT"),
              type=click.Choice(["text", "json"]), help="json: one object per line.")  # fmt: skip
def worker(
    app_spec: str,
    concurrency: int,
    processes: int,
    queues: str | None,
    prefetch: int,
    lease: float,
    grace: float,
    poll: float,
    run_scheduler: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run jobs of the app MODULE:APP until SIGTERM or Ctrl-C.

    The first signal stops taking jobs, lets running ones finish within --grace and
    gives the rest back; a second signal ends the grace period at once.
    """
    setup_logging(log_level, log_format)
    if processes > 1:
        sys.exit(_supervise(processes))
    app = load_app(app_spec)
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
    )
    asyncio.run(_run(w))


async def _run(w: Worker) -> None:
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        force = signals["count"] > 1
        logger.info("%s: %s", signal.Signals(signum).name, "stopping now" if force else "stopping")
        w.stop(force=force)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    watchdog = asyncio.create_task(_orphan_watchdog(w))
    try:
        await w.run()
    finally:
        watchdog.cancel()
        await w.app.aclose()


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


def _supervise(count: int) -> int:
    """Run `count` single-process workers as children; restart any that die; forward
    SIGTERM/SIGINT to all of them and wait."""
    argv = [sys.executable, "-m", "offload", *sys.argv[1:]]
    env_patch = {"OFFLOAD_PROCESSES": "1", "OFFLOAD_SUPERVISOR_PID": str(os.getpid())}
    stopping = False

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*argv, "--processes", "1"], env={**os.environ, **env_patch})

    children = [spawn() for _ in range(count)]

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        alive = False
        for i, child in enumerate(children):
            code = child.poll()
            if code is None:
                alive = True
            elif not stopping:
                logger.warning("worker process %d exited with %d; restarting", child.pid, code)
                time.sleep(RESTART_DELAY_S)
                children[i] = spawn()
                alive = True
        if not alive:
            return max((abs(c.returncode or 0) for c in children), default=0)
        time.sleep(0.2)

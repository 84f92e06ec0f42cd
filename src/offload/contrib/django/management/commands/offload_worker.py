"""`python manage.py offload_worker`: run this project's Django tasks until SIGTERM.

One process; for several, supervised, run `offload worker --django SETTINGS -p N`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from offload.cli import setup_logging
from offload.cli.worker import _run
from offload.contrib.django.backend import worker_app
from offload.errors import ConfigurationError
from offload.worker import Worker


class Command(BaseCommand):
    help = (
        "Run an offload worker for this project's Django tasks (TASKS backend "
        "offload.contrib.django.OffloadBackend) until SIGTERM or Ctrl-C."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--backend", default="default", help="TASKS alias (default: default)")
        parser.add_argument("-c", "--concurrency", type=int, default=10, help="jobs at once")
        parser.add_argument("-q", "--queues", default=None, help="comma-separated queues")
        parser.add_argument("--prefetch", type=int, default=0)
        parser.add_argument("--lease", type=float, default=30.0, help="seconds")
        parser.add_argument("--grace", type=float, default=30.0, help="seconds at shutdown")
        parser.add_argument("--poll", type=float, default=1.0, help="longest idle wait, s")
        parser.add_argument(
            "--log-level", default="info", choices=["debug", "info", "warning", "error"]
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        setup_logging(options["log_level"], "text")
        queues = options["queues"]
        try:  # a bad backend or option is a one-line error, as Django's commands give
            worker = Worker(
                worker_app(options["backend"]),
                queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
                concurrency=options["concurrency"],
                prefetch=options["prefetch"],
                lease_s=options["lease"],
                grace_s=options["grace"],
                poll_s=options["poll"],
            )
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        asyncio.run(_run(worker))

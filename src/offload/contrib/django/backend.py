"""`OffloadBackend`: offload as a `django.tasks` backend.

    TASKS = {
        "default": {
            "BACKEND": "offload.contrib.django.OffloadBackend",
            "QUEUES": [],                     # any queue (Django's default: ["default"])
            "OPTIONS": {
                "url": "postgresql://app@db/app?schema=offload",  # else OFFLOAD_URL
                "database": "default",        # the Django database enqueues follow
                "defaults": {"max_attempts": 3, "expires": 3600},  # every task's
            },
        }
    }

A Django task is an offload task named by its module path (`myapp.tasks.send_welcome`):
the producer enqueues under that name and the worker imports the module to find it.

Enqueue and transactions: inside `transaction.atomic()` on the `database` alias, a job
is written in that transaction when the broker is PostgreSQL in the same database (same
NAME, HOST and PORT, psycopg 3): it exists if and only if the transaction commits. With
any other broker (or database) the job is sent on commit (`transaction.on_commit`), and
never if the transaction rolls back; if its idempotency key names an existing job, the
returned result takes that job's id at the commit. Outside a transaction it is sent at
once.

Backend instances are per thread (Django's connection handler); they share one
`Offload` app per configuration, held here, so a process has one broker per backend.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.tasks import Task, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from offload.app import Offload
from offload.contrib.django._runner import make_handler
from offload.contrib.django.results import OffloadTaskResult, enqueued, from_info
from offload.contrib.django.tasks import ENQUEUE_OPTIONS, TASK_OPTIONS, OffloadTask
from offload.errors import ConfigurationError, JobNotFound, OffloadError
from offload.options import Call, make_overrides

__all__ = ["DjangoOffload", "OffloadBackend", "worker_app"]

_OPTIONS = ("url", "database", "defaults")
_apps: dict[tuple[str, ...], DjangoOffload] = {}
_apps_lock = threading.Lock()


class DjangoOffload(Offload):
    """The `Offload` app of one Django task backend: it registers Django tasks as
    they are declared, and finds the others by module path when a job names them."""

    def __init__(self, url: str | None, *, alias: str, defaults: Mapping[str, Any]) -> None:
        super().__init__(url)
        self.alias = alias
        self.task_defaults = dict(defaults)
        self.django_queues: set[str] = set()
        self._lock = threading.Lock()
        self._schema_ready = False

    def register(self, task: Task, sender: type) -> None:
        """Register `task` under its module path (once: the first declaration wins;
        the options of a later one are checked all the same).

        Raises:
            InvalidTask: an offload option is invalid.
        """
        name = task.module_path
        options = dict(self.task_defaults)
        if isinstance(task, OffloadTask):
            options.update(
                {o: getattr(task, o) for o in TASK_OPTIONS if getattr(task, o) is not None}
            )
        options.pop("key", None)  # per enqueue
        if options.get("timeout") is not None and not _is_async(task):
            if isinstance(task, OffloadTask) and task.timeout is not None:
                raise InvalidTask(
                    f"{name}: timeout= needs an async task (a sync function cannot be "
                    "stopped in a worker thread)"
                )
            options.pop("timeout")  # a default timeout applies to async tasks only
        with self._lock:
            if name in self.tasks:
                return
            handler = make_handler(self, task, self.alias, sender)
            try:
                self.task(name=name, queue=task.queue_name, priority=task.priority, **options)(
                    handler
                )
            except (ConfigurationError, TypeError) as exc:
                raise InvalidTask(f"{name}: {exc}") from None

    def ensure_schema(self) -> None:
        """Connect the broker once, which creates or migrates its tables, before the
        first job is written on the application's own connection."""
        if not self._schema_ready:
            self.portal.run(self.connected_broker())
            self._schema_ready = True

    def find_task(self, name: str) -> Any:
        """A registered task, else the Django task at the module path `name` if it is
        one of this backend's (importing its module declares it, which registers it)."""
        found = self.tasks.get(name)
        if found is None and "." in name:
            try:
                obj = import_string(name)
            except ImportError:
                return None
            if isinstance(obj, Task) and _backend_app(obj.backend) is self:
                self.register(obj, type(task_backends[obj.backend]))
                found = self.tasks.get(name)
        return found

    def queues(self) -> list[str]:
        """The task queues, and the backend's `QUEUES`: what a worker serves by default."""
        return sorted(set(super().queues()) | self.django_queues)


def _is_async(task: Task) -> bool:
    return inspect.iscoroutinefunction(task.func)


def _backend_app(alias: str) -> DjangoOffload | None:
    try:
        backend = task_backends[alias]
    except Exception:
        return None
    return backend.app if isinstance(backend, OffloadBackend) else None


class OffloadBackend(BaseTaskBackend):
    """A `django.tasks` backend that runs tasks on offload workers (see the module
    docstring for the settings). Results stay readable for each task's `result_ttl`
    (offload's default: one day), then `get_result` raises `TaskResultDoesNotExist`."""

    task_class = OffloadTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True  # Django's -100..100, higher first: offload's order as is

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(unknown)} "
                f"(offload takes {', '.join(_OPTIONS)})"
            )
        self.database: str = self.options.get("database", DEFAULT_DB_ALIAS)
        defaults = self.options.get("defaults", {})
        bad = sorted(set(defaults) - set(TASK_OPTIONS))
        if bad:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['defaults']: unknown {', '.join(bad)} "
                f"(offload takes {', '.join(TASK_OPTIONS)})"
            )
        from django.conf import settings

        url = self.options.get("url") or getattr(settings, "OFFLOAD_URL", None)
        key = (type(self).__qualname__, alias, str(url), repr(sorted(defaults.items())))
        with _apps_lock:
            app = _apps.get(key)
            if app is None:
                try:
                    app = DjangoOffload(url, alias=alias, defaults=defaults)
                except ConfigurationError as exc:
                    raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from None
                _apps[key] = app
        app.django_queues |= self.queues
        self.app: DjangoOffload = app

    # -- declaring -----------------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Django's checks, then offload's: the task is registered under its module path
        with its options, so a bad option fails where the task is declared."""
        super().validate_task(task)
        self.app.register(task, type(self))

    # -- enqueue -------------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> OffloadTaskResult:
        """Enqueue one job of `task`; see the module docstring for transactions.

        Raises:
            InvalidTask: Django's checks failed (queue, priority, run_after).
            TypeError: an argument is not JSON (Django's `normalize_json`), or the
                arguments do not fit the function (offload's `InvalidArguments`).
            offload.BrokerError: the broker refused or could not be reached.
        """
        self.validate_task(task)
        name = task.module_path
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))  # as Django
        producer = self.app.producer
        db = connections[self.database]
        in_atomic = db.in_atomic_block
        joined = in_atomic and _same_database(self.app, db)
        # A job sent on commit meets the enqueue hooks only then: after a rollback they
        # would wait for an `after_enqueue` that never comes (a tracing span left open).
        on_commit = in_atomic and not joined
        items = producer.items(
            name, [Call(tuple(args), kwargs)], _overrides(task), hooks=not on_commit
        )
        envelope = items[0][0]
        job_id = envelope.id  # an idempotency key may name an existing job instead:
        if joined:  # written in the caller's transaction
            self.app.ensure_schema()
            try:
                written = producer.transactional().enqueue_in_sync(db.connection, items)
            except BaseException as exc:
                producer.not_sent(items, exc)
                raise
            job_id = producer.sent(items, written)[0].id
        elif not in_atomic:
            job_id = producer.send(name, items)[0].id
        not_before = envelope.not_before
        result = enqueued(
            task,
            job_id,
            args,
            kwargs,
            self.alias,
            created_at=envelope.created_at,
            scheduled=not_before is not None and not_before > envelope.created_at,
        )

        def announce() -> None:
            task_enqueued.send(type(self), task_result=result)

        def send() -> None:
            [sent] = producer.send(name, producer.hooked(items))
            if sent.id != result.id:  # the key's job stands: the result is that one's
                object.__setattr__(result, "id", sent.id)
            announce()

        if not in_atomic:
            announce()
        else:  # receivers hear of it only if it commits; elsewhere it is sent then
            transaction.on_commit(announce if joined else send, using=self.database)
        return result

    # -- results -------------------------------------------------------------------------

    def get_result(self, result_id: str) -> OffloadTaskResult:
        """The job's result as Django sees it (`offload_state` keeps offload's state).

        Raises:
            TaskResultDoesNotExist: no such job (or purged), or not a Django task's.
        """
        try:
            info = self.app.job(str(result_id)).info()
        except (JobNotFound, OffloadError) as exc:
            if isinstance(exc, JobNotFound):
                raise TaskResultDoesNotExist(result_id) from None
            raise
        try:
            task = import_string(info.task)
        except ImportError:
            task = None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{result_id}: {info.task!r} is not a Django task")
        envelope = info.envelope()
        not_before = envelope.not_before if envelope is not None else None
        task = replace(
            task,
            priority=info.priority,
            queue_name=info.queue,
            backend=self.alias,
            run_after=_utc(not_before) if not_before is not None else None,
        )
        return from_info(task, info, self.alias)


def _overrides(task: Task) -> Any:
    """Per-enqueue offload options from Django's task: queue, priority, run_after, and
    an `OffloadTask`'s `using(...)` options."""
    options: dict[str, Any] = {}
    if isinstance(task, OffloadTask):
        options = {o: getattr(task, o) for o in ENQUEUE_OPTIONS if getattr(task, o) is not None}
    run_after = task.run_after
    if run_after is not None and timezone.is_naive(run_after):
        # Django reads a naive time in its TIME_ZONE (USE_TZ = False); offload refuses
        # one, since each host would read it in its own zone.
        run_after = timezone.make_aware(run_after)
    return make_overrides(queue=task.queue_name, priority=task.priority, at=run_after, **options)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _same_database(app: Offload, connection: Any) -> bool:
    """Whether Django's `connection` reaches the broker's PostgreSQL database through
    psycopg 3 (same NAME, HOST and PORT): then a job can join its transactions."""
    if connection.vendor != "postgresql" or not app.broker.capabilities.transactional_enqueue:
        return False
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        from offload.brokers.postgres import PostgresBroker
    except ImportError:  # psycopg2: Django's other driver cannot be joined
        return False
    if not isinstance(app.broker, PostgresBroker):
        return False
    if not isinstance(getattr(connection, "connection", None), psycopg.Connection):
        connection.ensure_connection()
        if not isinstance(connection.connection, psycopg.Connection):
            return False
    broker = conninfo_to_dict(app.broker.settings.conninfo)
    ours = connection.settings_dict
    return (
        str(broker.get("dbname") or "") == str(ours.get("NAME") or "")
        and str(broker.get("host") or "") == str(ours.get("HOST") or "")
        and str(broker.get("port") or "5432") == str(ours.get("PORT") or "5432")
    )


def worker_app(alias: str = DEFAULT_DB_ALIAS) -> DjangoOffload:
    """The app a worker runs for the task backend `alias`, once Django is set up: every
    installed app's `tasks` module is imported first, so the worker knows each task's
    options (flow limits included) and serves its queues from the start. A task
    elsewhere is still found by its module path when a job names it.

    Raises:
        ConfigurationError: `alias` names no backend, or not an `OffloadBackend`.
    """
    from django.conf import settings
    from django.utils.module_loading import autodiscover_modules

    try:
        backend = task_backends[alias]
    except InvalidTaskBackend:  # Django's own error is a traceback in the commands
        known = ", ".join(repr(a) for a in getattr(settings, "TASKS", {})) or "none"
        raise ConfigurationError(f"no TASKS backend {alias!r} (configured: {known})") from None
    if not isinstance(backend, OffloadBackend):
        raise ConfigurationError(
            f"TASKS[{alias!r}] is {type(backend).__module__}.{type(backend).__qualname__}, "
            "not offload.contrib.django.OffloadBackend"
        )
    autodiscover_modules("tasks")
    return backend.app

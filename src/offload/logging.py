"""Logs an operator can use: the job log, JSON lines, and configuration.

The worker reports each finished attempt on `offload.jobs` (`JobLog`); `configure`
sets logging up for a command from flags or from a standard `logging` configuration
file, credentials scrubbed either way.

Worker log calls pass `extra={"action": "retried", "job_id": …, "task": …}`; the
JSON formatter keeps those fields as keys, so log pipelines can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from offload.errors import RETRY_NO_REASON as NO_REASON
from offload.hooks import OUTCOMES

if TYPE_CHECKING:
    from offload.brokers.base import Lease
    from offload.worker.executor import Outcome

__all__ = ["JobLog", "JsonFormatter", "configure", "job_log", "redact_handlers"]

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class JobLog:
    """One line per finished attempt, on the logger `offload.jobs`.

    The level says what an operator must look at: a success, a retry the handler asked
    for (`raise Retry(...)`: not a failure) and a cancel are INFO; a retry after a
    failure is WARNING; a job buried in the dead-letter queue is ERROR. Each line
    carries `task`, `job_id`, `attempt`, `duration_s` and `outcome` as `extra` fields
    (keys of their own in `--log-format json`). Quiet the INFO lines, keeping the
    failures, by setting `offload.jobs` to WARNING (`offload worker --quiet-jobs`, or
    any `logging` configuration).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def finished(
        self, lease: Lease, outcome: Outcome, duration_s: float, delay_s: float, *, recorded: bool
    ) -> None:
        """Report one attempt whose `outcome` was (or, not `recorded`, was not) stored;
        an unrecorded one is reported by the worker as such, not here."""
        if not recorded:
            return
        action = outcome.action
        requested = outcome.error is not None and outcome.error.type == "Retry"
        # A requested retry is no failure (INFO), but a job that asked for retries
        # until its attempts ran out is dead like any other: ERROR, which
        # `--quiet-jobs` keeps.
        level = logging.INFO if requested and action == "retry" else _LEVELS[action]
        if not self.logger.isEnabledFor(level):
            return
        task = outcome.envelope.task if outcome.envelope is not None else "?"
        name = OUTCOMES[action]
        extra = {
            "action": _ACTIONS[action],
            "outcome": name,
            "job_id": lease.job_id,
            "task": task,
            "queue": lease.queue,
            "attempt": lease.attempt,
            "duration_s": round(duration_s, 6),
        }
        text = "job %s (%s) attempt %d %s in %.3f s"
        args: list[object] = [lease.job_id, task, lease.attempt, name, duration_s]
        error = outcome.error
        if action == "retry" and error is not None:
            extra["retry_in_s"] = round(delay_s, 3)
            if requested and error.message and error.message != NO_REASON:
                text += ", retry requested (%s), next in %.1f s"
                args += [error.message, delay_s]
            elif requested:  # `raise Retry()` without a reason: its message is NO_REASON
                text += ", retry requested, next in %.1f s"
                args += [delay_s]
            else:
                text += " with %s, retry in %.1f s"
                args += [error.type, delay_s]
        elif action in ("bury", "cancel") and error is not None:
            extra["error_type"] = error.type
            text += ": %s: %s"
            args += [error.type, error.message]
        self.logger.log(level, text, *args, extra=extra)


_LEVELS = {"ack": logging.INFO, "retry": logging.WARNING, "bury": logging.ERROR}
_LEVELS["cancel"] = logging.INFO
#: The `action` field of the line (as the worker named it before the job log existed).
_ACTIONS = {"ack": "acked", "retry": "retried", "bury": "buried", "cancel": "cancelled"}

#: The worker's job log (see `JobLog`).
job_log = JobLog(logging.getLogger("offload.jobs"))


def configure(level: str, fmt: str = "text", *, config: str | None = None) -> None:
    """Set up logging for a command: a `logging` configuration file if given (a
    `.json` or `.toml` file holding a `logging.config.dictConfig` dict, or an
    `.ini`/`.cfg`/`.conf` `fileConfig` file), else stderr in `fmt` at `level`.

    Whatever the configuration, every handler's formatter is wrapped so that
    credentials are scrubbed (`offload._redact`).

    Raises:
        ConfigurationError: the file cannot be read or is not a valid configuration.
    """
    if config is not None:
        _from_file(config)
    else:
        handler = logging.StreamHandler(sys.stderr)
        formatter: logging.Formatter
        if fmt == "json":
            formatter = JsonFormatter()
        else:
            formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        handler.setFormatter(formatter)
        logging.basicConfig(level=level.upper(), handlers=[handler])
    redact_handlers()


def _from_file(path: str) -> None:
    import logging.config

    from offload.errors import ConfigurationError

    try:
        if path.endswith((".ini", ".cfg", ".conf")):
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".toml"):
            import tomllib

            data: Any = tomllib.loads(raw.decode())
        else:
            data = json.loads(raw)
        data.setdefault("version", 1)
        data.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        message = f"--log-config {path}: not a valid logging config: {exc}"
        raise ConfigurationError(message) from None


def redact_handlers() -> None:
    """Wrap every handler's formatter of every configured logger in the redactor.

    Called once logging is configured, and again once the app is imported
    (`offload.cli.shared.load_app`): an app module, or the Django settings it loads,
    often adds handlers of its own, whose lines would otherwise show passwords."""
    from offload._redact import RedactingFormatter

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if not isinstance(handler.formatter, RedactingFormatter):
                handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))

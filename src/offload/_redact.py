"""Credentials never leave the process as text.

A broker URL may carry a password (`redis://:pw@host`, `postgresql://u:pw@h/db`,
`?password=…`). offload keeps the real URL only where it connects; everything it
shows a person — reprs, error messages, log lines, CLI views — goes through `redact`
or `redact_url`. `OffloadError` scrubs its own message, and the CLI's log formatter
scrubs every record (driver messages and tracebacks included), so a secret that slips
into a message on its way up is still caught before it is printed.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "RedactingFormatter", "dataclass_repr", "redact", "redact_url"]

MASK = "***"

#: Query parameters whose value is a secret: libpq's `password`/`sslpassword`, and the
#: names other clients use for a password, token or key.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|api_?key|access_?key|credential", re.I)

#: `scheme://user:password@` anywhere in a text (the password part is masked).
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]*@")
#: The same, percent-encoded (`scheme%3A%2F%2Fuser%3Apassword%40`): a state store's URL
#: nested in a broker URL's query (`amqp://…?state=postgresql%3A%2F%2Fu%3Apw%40db`).
_ENCODED_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*%3A%2F%2F(?:(?!%3A|%40|%2F)[^:/@\s'\"&?#])*%3A)"
    r"(?:(?!%40)[^@\s'\"&?#/])*%40",
    re.I,
)
#: `password=value` as in a query string or a libpq conninfo (`password=pw host=…`).
_KEY_VALUE = re.compile(
    r"(?P<key>\b[\w.-]*(?:pass|pwd|secret|token|api_?key|access_?key|credential)[\w.-]*)"
    r"(?P<sep>\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^&\s'\",;)]+)",
    re.I,
)
#: The same, percent-encoded (`password%3Dvalue`, up to `%26`, the next parameter).
_ENCODED_KEY_VALUE = re.compile(
    r"(?P<key>\b[\w.-]*(?:pass|pwd|secret|token|api_?key|access_?key|credential)[\w.-]*)"
    r"(?P<sep>%3D)(?P<value>(?:(?!%26)[^&\s'\",;)])+)",
    re.I,
)


def redact_url(url: str) -> str:
    """`url` with its password and secret query values replaced by `***`.

    Never raises: a URL too malformed to parse is scrubbed as plain text instead.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" not in netloc and "=" not in parts.query:
            return url  # nothing to hide (and urlunsplit would turn sqlite:/// into sqlite:/)
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if has_password else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            masked = [(k, _masked_value(k, v)) for k, v in pairs]
            if masked != pairs:
                query = urlencode(masked, safe="*/:@")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return redact(url)


def _masked_value(key: str, value: str) -> str:
    """A query value as shown: `***` for a secret's, and a URL nested in a value (the
    state store of `sqs://…?state=postgresql://u:pw@…`) shown without its own secrets."""
    if _SECRET_PARAM.search(key):
        return MASK
    if "://" in value:
        return redact_url(value)
    return value


def redact(text: str) -> str:
    """`text` with every `scheme://user:password@` (also percent-encoded) and
    `password=value` masked."""
    if "@" not in text and "=" not in text and "%" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _ENCODED_USERINFO.sub(lambda m: f"{m['head']}{MASK}%40", text)
    text = _ENCODED_KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def dataclass_repr(obj: Any) -> str:
    """A dataclass's usual repr with its credentials masked: for the parsed settings
    of a broker URL, which keep the password for the client library (assign it as the
    class's `__repr__`, which `@dataclass` then leaves alone)."""
    shown = ", ".join(
        f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj) if f.repr
    )
    return redact(f"{type(obj).__qualname__}({shown})")


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and scrubs what it produced, traceback included."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._inner.format(record))

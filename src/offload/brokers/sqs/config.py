"""The `sqs://` URL: where the queues are, how to reach them, and what holds the rest.

    sqs://[ACCESS_KEY_ID:SECRET@]HOST[:PORT]/?region=us-east-1&state=postgresql://…
    sqs:///?region=eu-west-1&state=…          # real AWS: the region's own endpoint

- HOST[:PORT] is an SQS-compatible endpoint (a local server, a VPC endpoint); an
  empty host means AWS itself, at the region's endpoint. `tls=true|false` picks
  https or http (default: http for a loopback host, https otherwise).
- Credentials come from boto's chain (environment, `~/.aws`, an instance or task role;
  `profile=NAME` picks a profile) unless the URL carries `KEY_ID:SECRET@`, which is
  meant for local servers. The secret is never shown: reprs and errors go through
  `offload._redact`.
- `state=URL` names the state store (a PostgreSQL, Redis or SQLite broker URL,
  percent-encoded when it has its own `?…&…`) that keeps what SQS cannot: keys,
  results, progress, cancellation, joins, limits, inspection, schedules' fire keys.
- `prefix=NAME` starts every SQS queue name offload makes (default `offload`),
  `fifo=a,b` makes those offload queues FIFO queues (strict order within the queue),
  `redrive=N` moves a message to the dead-letter queue after N receives that ended in
  a lapsed visibility (default 10), `wait=S` is the long poll of an idle worker (0-20,
  default 20), `max_message_bytes=N` the largest body SQS accepts (default 262144).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from offload._redact import redact_url
from offload.errors import ConfigurationError

__all__ = ["MAX_DELAY_S", "MAX_VISIBILITY_S", "SQSConfig"]

#: SQS's cap on a message's own delay (DelaySeconds), in seconds: 15 minutes.
MAX_DELAY_S = 900
#: SQS's cap on a message's visibility timeout, counted from its receipt: 12 hours.
MAX_VISIBILITY_S = 43_200
#: SQS's cap on a long poll (WaitTimeSeconds).
MAX_WAIT_S = 20

_KNOWN = {"region", "tls", "profile", "state", "prefix", "fifo", "redrive", "wait",
          "max_message_bytes"}  # fmt: skip


@dataclass(frozen=True)
class SQSConfig:
    """A parsed `sqs://` URL. `repr` never shows the secret (it is excluded)."""

    url: str
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    state: str | None = field(default=None, repr=False)
    prefix: str = "offload"
    fifo: frozenset[str] = frozenset()
    redrive: int = 10
    wait_s: int = MAX_WAIT_S
    max_message_bytes: int = 262_144

    def __repr__(self) -> str:
        return f"SQSConfig({redact_url(self.url)})"

    @classmethod
    def from_url(cls, url: str) -> SQSConfig:
        """Parse an `sqs://` URL.

        Raises:
            ConfigurationError: a bad scheme, port, option name or value, naming it.
        """
        shown = redact_url(url)
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqs":
            raise ConfigurationError(f"not an sqs:// URL: {shown!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid sqs URL {shown!r}: {exc}") from None
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - _KNOWN)
        if unknown:
            raise ConfigurationError(
                f"unknown sqs URL option(s) {', '.join(unknown)} in {shown!r}; "
                f"known: {', '.join(sorted(_KNOWN))}"
            )
        host = parts.hostname
        endpoint = None
        if host:
            tls = _flag(options.get("tls"), default=not _loopback(host), name="tls", url=shown)
            netloc = f"[{host}]" if ":" in host else host
            endpoint = f"{'https' if tls else 'http'}://{netloc}{f':{port}' if port else ''}"
        key_id = unquote(parts.username) if parts.username else None
        secret = unquote(parts.password) if parts.password is not None else None
        if (key_id is None) != (secret is None):
            raise ConfigurationError(
                f"sqs URL {shown!r}: give both ACCESS_KEY_ID:SECRET@ or neither "
                "(then boto's credential chain is used)"
            )
        fifo = frozenset(q for q in options.get("fifo", "").split(",") if q)
        return cls(
            url=url,
            endpoint_url=endpoint,
            region=options.get("region") or None,
            access_key_id=key_id,
            secret_access_key=secret,
            profile=options.get("profile") or None,
            state=options.get("state") or None,
            prefix=_prefix(options.get("prefix", "offload"), shown),
            fifo=fifo,
            redrive=_int(options, "redrive", 10, 1, 1000, shown),
            wait_s=_int(options, "wait", MAX_WAIT_S, 0, MAX_WAIT_S, shown),
            max_message_bytes=_int(options, "max_message_bytes", 262_144, 1024, 1_048_576, shown),
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(value: str | None, *, default: bool, name: str, url: str) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"sqs URL {url!r}: {name}={value!r} is not true or false")


def _int(options: dict[str, str], name: str, default: int, low: int, high: int, url: str) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigurationError(
            f"sqs URL {url!r}: {name}={raw!r} must be an integer from {low} to {high}"
        )
    return value


def _prefix(value: str, url: str) -> str:
    if not value or len(value) > 20 or not all(c.isascii() and (c.isalnum() or c in "-_")
                                               for c in value):  # fmt: skip
        raise ConfigurationError(
            f"sqs URL {url!r}: prefix={value!r} must be 1-20 ASCII letters, digits, - or _"
        )
    return value

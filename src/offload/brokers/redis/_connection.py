"""URLs, clients and errors of the Redis broker.

URL forms (`rediss://` for TLS; any option redis-py understands may be added):

    redis://[[user]:password@]host[:port][/db][?prefix=NAME]
    redis://host:port?cluster=true[&prefix=NAME]     # a Redis Cluster, via any node

`prefix` (default `offload`) starts every key, so several apps (or tests) can share
one Redis. `cluster=true` uses `redis.asyncio.cluster.RedisCluster`; a cluster takes no
database number.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.connection import parse_url as redis_parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload._redact import dataclass_repr
from offload.brokers.redis._scripts import Client
from offload.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = [
    "RedisURL",
    "broker_error",
    "check_eviction_policy",
    "errors",
    "make_client",
    "parse_url",
    "plain_client",
]

logger = logging.getLogger("offload.brokers.redis")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: The module of redis-py's asyncio connections (see `_write_on_closed_connection`).
_CONNECTION_PY = os.path.join("redis", "asyncio", "connection.py")
#: Eviction policies that leave our keys alone: none of them has a TTL.
_SAFE_POLICIES = ("noeviction", "volatile-")


#: Connections per client (per event loop, and one more set for sync producers'
#: threads) unless the URL says `pool_max=N`. redis-py 8's default pool refuses the
#: 101st concurrent call ("Too many connections"): a web app's burst of enqueues, or a
#: gather of `info` calls, passes that easily. (A waiting pool was tried: with
#: redis-py 5.0.1, a worker found no free connection after a Redis restart.)
DEFAULT_POOL_MAX = 1000


@dataclass(frozen=True, slots=True)
class RedisURL:
    redis_url: str  # what redis-py receives: our options removed
    prefix: str
    cluster: bool
    pool_max: int = DEFAULT_POOL_MAX

    __repr__ = dataclass_repr  # the URL keeps the password: never shown


def parse_url(url: str) -> RedisURL:
    """Split an offload Redis URL into redis-py's URL and our options.

    Raises:
        ConfigurationError: the scheme is not redis/rediss, or an option is invalid.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(f"not a Redis URL: {url!r}; expected redis://host:port")
    if not parts.hostname:
        raise ConfigurationError(f"Redis URL {url!r} names no host")
    params = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in params if k in ("prefix", "cluster", "pool_max")}
    rest = [(k, v) for k, v in params if k not in ours]
    prefix = ours.get("prefix", "offload")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"invalid prefix {prefix!r} in {url!r}: non-empty, no braces")
    flag = ours.get("cluster", "false").lower()
    if flag not in _TRUE | _FALSE:
        raise ConfigurationError(f"invalid cluster={flag!r} in {url!r}: expected true or false")
    pool_max = ours.get("pool_max", str(DEFAULT_POOL_MAX))
    if not pool_max.isdigit() or int(pool_max) < 1:
        raise ConfigurationError(f"invalid pool_max={pool_max!r} in {url!r}: an integer >= 1")
    redis_url = urlunsplit(parts._replace(query=urlencode(rest)))
    _check_redis_options(redis_url, url, cluster=flag in _TRUE)
    return RedisURL(redis_url, prefix, flag in _TRUE, int(pool_max))


def _check_redis_options(redis_url: str, url: str, *, cluster: bool) -> None:
    """Refuse a query option redis-py would not take, naming it.

    redis-py passes any option of the URL to its connection class as a keyword, and so
    fails only at the first connection, with a TypeError that reads as an outage: a
    worker given `?prefx=app` retried "until the broker is back", forever.

    Raises:
        ConfigurationError: an unknown option, or a value redis-py cannot parse.
    """
    try:
        options = redis_parse_url(redis_url)
    except ValueError as exc:
        raise ConfigurationError(f"{exc} ({url!r})") from None
    target: type = RedisCluster if cluster else options.get("connection_class", Connection)
    accepted = _keywords(target)
    if accepted is None:  # a class taking **kwargs: redis-py will judge
        return
    given = {k for k, _ in parse_qsl(urlsplit(redis_url).query, keep_blank_values=True)}
    unknown = sorted(given - accepted - {"max_connections"})
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} in the Redis URL {url!r}: offload "
            "takes prefix, cluster and pool_max, and redis-py the keywords of "
            f"{target.__name__}"
        )


def _keywords(cls: type) -> set[str] | None:
    """The keyword arguments `cls(...)` takes: its `__init__`'s, and while that one
    passes `**kwargs` on, its bases'; None if no `__init__` on the way stops them."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return None
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def plain_client(url: RedisURL) -> Redis:
    """A client of the URL's node alone, even for a cluster URL."""
    return Redis.from_url(url.redis_url)


def blocking_client(url: RedisURL) -> SyncRedis:
    """The thread-safe client of sync producers (its pool sized as `make_client`'s)."""
    return SyncRedis.from_url(url.redis_url, max_connections=url.pool_max)


def make_client(url: RedisURL) -> Client:
    """The asyncio client. A single Redis's client retries a command once, at once, on a
    connection error: after a Redis restart every pooled connection is stale, and its
    first command would fail though the server is back. A retry is safe for every
    script: each is idempotent or, like `reserve`, at-least-once (a lost reply only
    leaves a lease to lapse). Its pool holds up to `pool_max` connections, which pack
    commands with hiredis (see `_hiredis_packing`)."""
    if url.cluster:
        return RedisCluster.from_url(url.redis_url, max_connections=url.pool_max)
    client = Redis.from_url(
        url.redis_url,
        max_connections=url.pool_max,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """`cls` (plain, TLS or Unix socket) packing commands with hiredis, in C.

    redis-py's asyncio connections pack in Python (its sync ones use hiredis): for the
    worker's batched `ack` and `reserve` scripts, hundreds of arguments per call, that
    was about 14 µs of CPU per job (issue 16). Without hiredis, `cls` unchanged."""
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - hiredis comes with the redis extra
        return cls

    def pack(self: AbstractConnection, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # a command of several words: 'SCRIPT LOAD'
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [pack_command(args)]
        except TypeError:  # memoryview or bytearray arguments: redis-py's own way
            return cls.pack_command(self, *args)

    return type(cls.__name__, (cls,), {"pack_command": pack, "__module__": __name__})


@contextlib.contextmanager
def errors(where: str) -> Iterator[None]:
    """Turn redis-py's exceptions into offload's (`broker_error`); the original stays as
    `__cause__`, and any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        error = broker_error(exc, where)
        if error is None:
            raise
        raise error from exc


def broker_error(exc: Exception, where: str) -> BrokerError | None:
    """Offload's exception for redis-py's `exc` (None for one that is not redis-py's):
    lost or refused connections (and a cluster without a quorum) are
    `BrokerUnavailable`, anything else `BrokerError`. A hot path catches and converts
    with this instead of entering `errors`."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ClusterDownError | TryAgainError):
        return BrokerUnavailable(f"Redis at {where} is unavailable: {exc}")
    if isinstance(exc, RedisClusterException):
        return BrokerUnavailable(f"Redis Cluster at {where} is unavailable: {exc}")
    if isinstance(exc, RedisError):
        return BrokerError(f"Redis error at {where}: {exc}")
    if isinstance(exc, OSError):
        return BrokerUnavailable(f"Redis at {where} is unavailable: {exc}")
    if isinstance(exc, AttributeError | TypeError) and _write_on_closed_connection(exc):
        return BrokerUnavailable(f"Redis at {where} is unavailable: {exc!r}")
    return None


def _write_on_closed_connection(exc: BaseException) -> bool:
    """redis-py's asyncio connections (8.1 at least) let a write on a connection that
    the peer or another task just closed raise the stream writer's AttributeError or
    TypeError instead of ConnectionError (redis/redis-py#4287): seen while a cluster's
    nodes restart. True if `exc` was raised inside redis-py's connection code."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_CONNECTION_PY):
            return True
        tb = tb.tb_next
    return False


async def check_eviction_policy(client: Client, where: str) -> str | None:
    """Warn when Redis may evict our keys under memory pressure; returns the policy.

    Our keys carry no TTL, so `noeviction` and the `volatile-*` policies (which only
    evict keys that have one) are safe; `allkeys-*` may silently drop jobs. Managed
    services that disable CONFIG are given the benefit of the doubt.
    """
    try:
        reply = await client.config_get("maxmemory-policy")
    except ResponseError as exc:
        logger.debug("cannot read maxmemory-policy from %s: %s", where, exc)
        return None
    values = {str(v.decode() if isinstance(v, bytes) else v) for v in _policy_values(reply)}
    for policy in sorted(values):
        if not policy.startswith(_SAFE_POLICIES):
            logger.warning(
                "Redis at %s has maxmemory-policy %s: under memory pressure it may evict "
                "job keys and lose jobs; set maxmemory-policy noeviction",
                where,
                policy,
            )
    return min(values) if values else None


def _policy_values(reply: object) -> list[object]:
    """The policy values of a CONFIG GET reply: a dict, or one dict per cluster node."""
    if not isinstance(reply, dict):
        return []
    found: list[object] = []
    for key, value in reply.items():
        if isinstance(value, dict):
            found += _policy_values(value)
        elif (key.decode() if isinstance(key, bytes) else key) == "maxmemory-policy":
            found.append(value)
    return found

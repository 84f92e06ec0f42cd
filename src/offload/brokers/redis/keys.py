"""The Redis key schema: every key offload writes, in one place.

All keys start with the URL's `prefix` (default `offload`). The keys of one queue share
the hash tag `{<queue>}`, so they live in one Redis Cluster slot and one Lua script may
touch all of them; the few global keys share the tag `{%global}`, which no escaped
queue name can produce (escaping turns `%`, `{` and `}` into `%25`, `%7B`, `%7D`, and the
empty name into `%`).

Per queue `q` (`P` is the prefix):

| key                   | type   | holds                                                        |
|-----------------------|--------|--------------------------------------------------------------|
| `P:{q}:payload`       | hash   | job id → envelope bytes, written once, never rewritten        |
| `P:{q}:record`        | hash   | job id → msgpack map of the job's state (see below)           |
| `P:{q}:result`        | hash   | job id → encoded result of a succeeded job                    |
| `P:{q}:ready`         | zset   | queued jobs: score -priority, member rank+id (due ms, seq)    |
| `P:{q}:scheduled`     | zset   | delayed and retrying jobs by due time                         |
| `P:{q}:running`       | zset   | leased jobs by lease deadline                                 |
| `P:{q}:expiring`      | zset   | waiting jobs that have an `expires_at`, by `expires_at`       |
| `P:{q}:dead`          | zset   | dead-letter queue, by finish time                             |
| `P:{q}:succeeded`     | zset   | succeeded jobs by purge time (result TTL or retention)        |
| `P:{q}:expired`       | zset   | expired jobs by purge time                                    |
| `P:{q}:cancelled`     | zset   | cancelled jobs by purge time                                  |
| `P:{q}:jobs`          | zset   | every job, score 0, member enqueue ms+seq+id (listing order)  |
| `P:{q}:keys`          | hash   | idempotency key → job id                                      |
| `P:{q}:seq`           | string | enqueue counter of the queue                                  |
| `P:{q}:outbox`        | zset   | jobs ended without a worker: seq+id by end time               |
| `P:{q}:waiters`       | hash   | job id → 1 while some `wait_finished` may wait on it          |
| `P:{q}:created`       | zset   | every job, score 0, member created ms+listing member (ranges) |
| `P:{q}:finished`      | hash   | `<minute>:<outcome>` → jobs that ended so (`finished`)        |
| `P:{q}:parked`        | zset   | idle workers waiting to be handed jobs: ticket → its end      |
| `P:{q}:handed`        | hash   | ticket token prefix → lease deadline and ids handed to it     |
| `P:{q}:inbox`         | list   | lean enqueues not yet expanded: msgpack entries, newest first |
| `P:{q}:lent`          | list   | lean enqueues handed to a parked worker, not yet expanded     |

Global: `P:{%global}:queues` (set of queue names), `P:{%global}:workers` (hash: worker
id → JSON `WorkerInfo`) and `P:{%global}:workers:seen` (zset: worker id → end of its
registration).

Pub/sub channels (not keys, so untagged): `P:{q}:wake` (a job of the queue was made
ready now), `P:ended` (space-separated ids of jobs that ended and are listed in their
queue's `waiters`; see `_signals.py`) and `P:handoff:<worker id>` (jobs handed to that
worker while it was parked, already leased: see `_handoff.py`).

Flow control, each key hash-tagged by itself (any slot of a cluster, one key per
script): `P:{%rate:<key>}:tat` (string: the GCRA theoretical arrival time of a rate
limit) and `P:{%slots:<key>}:holders` (zset: holder → end of its TTL, for a concurrency
limit). Both lapse by Redis EXPIRE once idle. Chord joins, hash-tagged by the group:
`P:{%chord:<group id>}:members` (hash: member id → its index and outcome), lapsing after
the broker's retention; workflow indexes `P:{%wf:<workflow id>}:jobs` (set of JSON
`[queue, job id]`, see `_workflows.py`); progress `P:{%progress:<job id>}` (string: the
last report, lapsing after the retention); attempt history `P:{%attempts:<job id>}`
(list of the newest records, lapsing after the retention, see
`scripts/record_attempt.lua`); pause flags `P:{%global}:paused` (hash: flag →
when raised); registers `P:{%register:<name>}` (hash: the
value and the end of its TTL, by the broker's clock; see `compare_and_set.lua`).
`<key>` is escaped like a queue name, and no escaped queue name starts with `%r`, `%s`,
`%c`, `%w`, `%p` or `%a`.

`created` indexes every job by its envelope's `created_at` (milliseconds, 15 digits,
then its `jobs` member), so `list_jobs` with a time range is one ZREVRANGEBYLEX: written
with `jobs` at enqueue and removed with it when the job is deleted. Jobs stored before
this index existed are not in it; while a queue's `created` holds fewer members than
its `jobs`, a time range walks `jobs` instead (`list_jobs.lua`). `finished` counts
ends per minute (Unix time // 60, the broker's clock) and outcome, added to by the
script that ends the jobs; `sweep` drops the minutes older than `FINISHED_KEEP_S`.

`inbox` holds the jobs of lean one-call enqueues (`scripts/_inbox.lua`): their payload
is stored, the rest of their state waits in the list until the next script of the
queue expands it (every script does so first), so no reader sees a job there.
`lent` is the same for a job a lean enqueue handed to a parked worker: each entry is
the inbox entry followed by the lease (`_handoff.py`); it expands into the running
job and the `handed` note the full path writes at once.

A job lives in exactly one state zset at a time (once expanded); `counts` are their sizes. Empty
hashes and zsets do not exist in Redis, so once every job of a queue has been purged
only `P:{q}:seq`, the global keys and (until its minutes leave the window)
`P:{q}:finished` remain.

The record map uses short field names: `s` state, `tk` task, `p` priority, `a` attempt,
`m` max attempts, `k` key, `c` created, `d` due, `x` expires, `st` started, `f` finished,
`w` worker, `t` lease token, `dl` lease deadline, `e` error (JSON), `cx` cancel flag,
`q` sequence, `n` enqueue ms, `u` purge time, `o` in the queue's `outbox` (set when the
job ends without a worker; at enqueue already for a workflow job, whose envelope has
`then` or `chord`). Times are Unix epoch
seconds (doubles). A record the scripts cannot use (not msgpack, a field missing or of
the wrong type: `record_problem` in `scripts/_lib.lua`) is buried as `dead`
(`Undecodable`) by the housekeeping that meets it, never a script error.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

__all__ = [
    "GlobalKeys",
    "QueueKeys",
    "escape_queue",
    "listing_member",
    "queue_keys",
    "rate_key",
    "slots_key",
]


class QueueKeys(NamedTuple):
    """The keys of one queue, in the order the Lua scripts expect them."""

    payload: str
    record: str
    result: str
    ready: str
    scheduled: str
    running: str
    expiring: str
    dead: str
    succeeded: str
    expired: str
    cancelled: str
    jobs: str
    keys: str
    seq: str
    outbox: str
    waiters: str
    created: str
    finished: str
    parked: str
    handed: str
    paused: str  # set while the queue is paused (`set_paused`): no handoff then
    inbox: str  # lean one-call enqueues, drained by every script of the queue
    lent: str  # lean one-call enqueues handed to a parked worker, drained likewise


#: The keys `scripts/enqueue_one.lua` takes, in its order: those of `QueueKeys` that a
#: plain one-call enqueue touches (each key passed costs Redis and the client a little
#: on every call; the script names the others from the first one's prefix).
ONE_KEYS = ("payload", "inbox", "parked")


class GlobalKeys(NamedTuple):
    queues: str
    workers: str
    workers_seen: str


def escape_queue(queue: str) -> str:
    """The queue name as it appears inside the hash tag: braces (which would cut the
    tag short) and `%` are percent-escaped, and the empty name becomes `%`."""
    if not queue:
        return "%"
    return queue.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@functools.lru_cache(maxsize=4096)  # built for every script call: once per queue is enough
def queue_keys(prefix: str, queue: str) -> QueueKeys:
    base = f"{prefix}:{{{escape_queue(queue)}}}:"
    return QueueKeys(*(base + name for name in QueueKeys._fields))


@functools.lru_cache(maxsize=4096)
def one_keys(prefix: str, queue: str) -> tuple[str, ...]:
    """The KEYS of `enqueue_one.lua` for `queue` (`ONE_KEYS`)."""
    keys = queue_keys(prefix, queue)
    return tuple(getattr(keys, name) for name in ONE_KEYS)


def global_keys(prefix: str) -> GlobalKeys:
    base = f"{prefix}:{{%global}}:"
    return GlobalKeys(base + "queues", base + "workers", base + "workers:seen")


@functools.lru_cache(maxsize=4096)  # named by every enqueue: once per queue is enough
def channel(prefix: str, queue: str) -> str:
    """The pub/sub channel on which a queue announces jobs made ready now."""
    return f"{prefix}:{{{escape_queue(queue)}}}:wake"


def handoff_channel(prefix: str, worker_id: str) -> str:
    """The pub/sub channel on which `enqueue` hands jobs to a parked worker."""
    return f"{prefix}:handoff:{worker_id}"


def ended_channel(prefix: str) -> str:
    """The pub/sub channel on which scripts announce ends of jobs someone waits on."""
    return f"{prefix}:ended"


def created_prefix(t: float, *, after: bool = False) -> str:
    """The 15-digit millisecond prefix of the `created` members of jobs created at `t`
    (with `after`, the next millisecond's: every job created at `t` sorts below it),
    clamped to what the fixed width holds, as `created_member` in `_lib.lua` does."""
    ms = int(t * 1000 // 1) + (1 if after else 0)
    return f"{min(max(ms, 0), 10**15 - 1):015d}"


def listing_member(enqueued_ms: int, seq: int, job_id: str) -> str:
    """The member of `P:{q}:jobs`: sorts by enqueue time, then by the queue's sequence."""
    return f"{enqueued_ms:015d}{seq:012d}{job_id}"


def rate_key(prefix: str, key: str) -> str:
    """The string holding a rate limit's state, in a slot of its own."""
    return f"{prefix}:{{%rate:{escape_queue(key)}}}:tat"


def slots_key(prefix: str, key: str) -> str:
    """The zset of a concurrency limit's holders, in a slot of its own."""
    return f"{prefix}:{{%slots:{escape_queue(key)}}}:holders"


def chord_key(prefix: str, group_id: str) -> str:
    """The members of a chord, recorded by `join`; hash-tagged by the group."""
    return f"{prefix}:{{%chord:{escape_queue(group_id)}}}:members"


def workflow_key(prefix: str, workflow_id: str) -> str:
    """The index of a workflow's jobs; hash-tagged by the workflow."""
    return f"{prefix}:{{%wf:{escape_queue(workflow_id)}}}:jobs"


def register_key(prefix: str, name: str) -> str:
    """A register of `compare_and_set`; hash-tagged by its name."""
    return f"{prefix}:{{%register:{escape_queue(name)}}}"


def progress_key(prefix: str, job_id: str) -> str:
    """A job's last progress report; hash-tagged by the job."""
    return f"{prefix}:{{%progress:{escape_queue(job_id)}}}"


def attempts_key(prefix: str, job_id: str) -> str:
    """A job's attempt history; hash-tagged by the job."""
    return f"{prefix}:{{%attempts:{escape_queue(job_id)}}}"


def paused_key(prefix: str) -> str:
    """The pause flags (`set_paused`), beside the other global keys."""
    return f"{prefix}:{{%global}}:paused"

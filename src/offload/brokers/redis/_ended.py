"""`Broker.wait_finished` on Redis: a push from whichever process ends the job.

Publishing every end would cost every ack a PUBLISH (and, on a cluster, a broadcast to
every node), for the rare job someone waits on. So a waiter registers instead: the
`watch.lua` script adds the job id to its queue's `P:{q}:waiters` hash and returns the
job's state in one atomic step, and the scripts that end jobs (ack, bury,
cancel_running, cancel, and expiry in reserve and sweep) publish, once per call, the
ids they ended that are in that hash, on the channel `P:ended`. A queue nobody waits on
pays one EXISTS per script call.

Order: the waiter is registered in this process's `JobWaiters` and its subscription to
`P:ended` is confirmed by Redis before `watch.lua` looks at the job, so an end is either
seen by that look or published to an already subscribed listener. Ends in this process
also notify the `JobWaiters` directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from offload.brokers.redis._records import text
from offload.envelope import TERMINAL_STATES, JobState

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["wait_finished"]


async def wait_finished(broker: RedisBroker, job_id: str, timeout_s: float) -> None:
    queue = await broker._locate(job_id)
    if queue is None:
        return
    try:
        await broker._subscribed([broker._ended_channel], handler=_notifier(broker), confirm=True)
    except Exception:  # no push now (BrokerError, or redis-py failing mid-reconnect)
        await asyncio.sleep(min(timeout_s, 1.0))  # the caller reads the job again
        return

    async def ended() -> bool:
        state = await broker._run("watch", broker._q(queue), [job_id])
        return state is None or JobState(text(state)) in TERMINAL_STATES

    await broker._job_ends.wait(job_id, ended, timeout_s)


def _notifier(broker: RedisBroker) -> Callable[[bytes], None]:
    notify = broker._job_ends.notify

    def on_message(data: bytes) -> None:
        for job_id in data.decode().split():
            notify(job_id)

    return on_message

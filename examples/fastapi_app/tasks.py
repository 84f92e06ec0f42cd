"""The example's jobs. One module, imported by the web app (to enqueue) and by
`offload worker fastapi_app.tasks:app` (to run them), so both agree on the tasks.

The broker comes from `OFFLOAD_URL` (else `sqlite:///offload.db` in the working
directory): set the same URL for the web app and the worker.
"""

from __future__ import annotations

import asyncio

from offload import Backoff, Offload

app = Offload()


@app.task(
    name="reports.summarize",
    max_attempts=3,
    backoff=Backoff(base_s=1, cap_s=30),
    give_up_on=(ValueError,),  # bad input: dead at once, retrying cannot fix it
    result_ttl=3600,
)
async def summarize(numbers: list[float]) -> dict[str, float]:
    """A stand-in for slow work (a report, a call to a provider)."""
    if not numbers:
        raise ValueError("no numbers to summarize")
    await asyncio.sleep(0)  # where the real work would await I/O
    total = sum(numbers)
    return {"count": len(numbers), "sum": total, "mean": total / len(numbers)}

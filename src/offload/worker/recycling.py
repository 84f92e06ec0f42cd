"""Recycling: when a worker process should make way for a fresh one.

Long-running workers leak (native libraries, caches, fragmentation). As Celery's
`max_tasks_per_child` / `max_memory_per_child` do, a worker past `max_jobs` taken jobs,
or whose resident memory (checked after each job) passes `max_memory_mb`, stops
taking jobs, finishes its running ones with no time limit, and exits with
`EXIT_RECYCLED`; its supervisor (`offload worker`) starts a new process at once.
Nothing is given back and no attempt is charged.
"""

from __future__ import annotations

import os
import sys

__all__ = ["EXIT_RECYCLED", "Recycling", "resident_mb"]

#: The exit code of a worker process that recycled itself (75, EX_TEMPFAIL): its
#: supervisor starts a new one at once, without the pause after a crash.
EXIT_RECYCLED = 75


def resident_mb() -> float | None:
    """This process's resident memory (RSS) in MB now: `/proc/self/statm` on Linux;
    elsewhere the peak (`ru_maxrss`), which only grows, so a limit still trips once;
    None where neither exists."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Recycling:
    """A worker's recycling limits and the count of jobs it has taken.

    Raises:
        ValueError: `max_memory_mb` on a platform that does not report memory use.
    """

    def __init__(self, max_jobs: int | None = None, max_memory_mb: float | None = None) -> None:
        if max_memory_mb is not None and resident_mb() is None:
            raise ValueError("max_memory_mb: this platform does not report memory use")
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self.taken = 0

    def room(self, free: int) -> int:
        """How many of `free` slots may still be reserved."""
        return free if self.max_jobs is None else min(free, self.max_jobs - self.taken)

    def took_all(self) -> bool:
        return self.max_jobs is not None and self.taken >= self.max_jobs

    def reason(self, *, idle: bool) -> str | None:
        """Why the worker should recycle now (after a job ended), or None. `idle`: it
        holds no job, so the last of `max_jobs` has ended."""
        if idle and self.took_all():
            return f"took {self.taken} jobs (--max-jobs {self.max_jobs})"
        if self.max_memory_mb is None:
            return None
        rss = resident_mb()
        if rss is not None and rss > self.max_memory_mb:
            return f"resident memory {rss:.0f} MB is past --max-memory {self.max_memory_mb:g}"
        return None

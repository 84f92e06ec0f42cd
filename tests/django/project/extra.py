"""A task outside the `tasks` modules a worker imports at start: found by its module
path when a job names it."""

from __future__ import annotations

from django.tasks import task


@task()
def shout(word: str) -> str:
    return word.upper()

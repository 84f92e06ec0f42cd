"""offload for Django: a `django.tasks` backend, its worker command, its app config.

    INSTALLED_APPS = [..., "offload.contrib.django"]     # `manage.py offload_worker`
    TASKS = {"default": {"BACKEND": "offload.contrib.django.OffloadBackend",
                         "OPTIONS": {"url": "postgresql://app@db/app?schema=offload"}}}

Then Django's own API: `@task`, `.enqueue()`, `.get_result()`; and a worker:
`python manage.py offload_worker` or `offload worker --django mysite.settings`.
"""

from __future__ import annotations

from offload.contrib.django.backend import DjangoOffload, OffloadBackend
from offload.contrib.django.results import OffloadTaskResult
from offload.contrib.django.tasks import OffloadTask

__all__ = ["DjangoOffload", "OffloadBackend", "OffloadTask", "OffloadTaskResult"]

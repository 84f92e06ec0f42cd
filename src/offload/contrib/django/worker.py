"""The app spec `offload worker` runs for a Django project:

    offload worker --django mysite.settings          # sets DJANGO_SETTINGS_MODULE, then
    offload worker offload.contrib.django.worker:app # this module, which

sets Django up from `DJANGO_SETTINGS_MODULE` on import and names the app of the task
backend `OFFLOAD_DJANGO_BACKEND` (default: "default"), its tasks discovered.
"""

from __future__ import annotations

import os

import django

django.setup()

from offload.contrib.django.backend import worker_app  # noqa: E402  (after setup)

app = worker_app(os.environ.get("OFFLOAD_DJANGO_BACKEND", "default"))

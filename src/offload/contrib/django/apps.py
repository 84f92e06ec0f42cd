"""The Django app config: adding `offload.contrib.django` to `INSTALLED_APPS` gives
`manage.py offload_worker`. No models: offload keeps jobs in its broker."""

from __future__ import annotations

from django.apps import AppConfig


class OffloadConfig(AppConfig):
    name = "offload.contrib.django"
    label = "offload"
    verbose_name = "offload"

"""Settings of the test project: Django's database and offload's broker are the same
PostgreSQL database, in a schema of this test run's own (OFFLOAD_DJANGO_TEST_SCHEMA);
the `sqlite` task backend is a broker in another database (a SQLite file)."""

from __future__ import annotations

import os

SCHEMA = os.environ["OFFLOAD_DJANGO_TEST_SCHEMA"]
PG_DSN = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SQLITE_URL = os.environ["OFFLOAD_DJANGO_TEST_SQLITE"]

SECRET_KEY = "offload-tests"
USE_TZ = True
INSTALLED_APPS = ["offload.contrib.django", "tests.django.project"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
    }
}
TASKS = {
    "default": {
        "BACKEND": "offload.contrib.django.OffloadBackend",
        "QUEUES": [],
        "OPTIONS": {"url": f"{PG_DSN}?schema={SCHEMA}"},
    },
    "sqlite": {
        "BACKEND": "offload.contrib.django.OffloadBackend",
        "QUEUES": [],
        "OPTIONS": {"url": SQLITE_URL, "defaults": {"max_attempts": 1}},
    },
}
LOGGING_CONFIG = None

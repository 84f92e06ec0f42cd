"""Setup for the Django integration's tests: Django 6 (Python >= 3.12) and PostgreSQL.

Skipped on Python < 3.12, where Django 6 cannot be installed. Under CI=true on 3.12+,
a missing Django or PostgreSQL is an error, never a silent skip. Django is set up once
per test process from `tests.django.project.settings`; its database and the broker
live in a schema of this run's own, dropped at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import POSTGRES_DSN

_CI = os.environ.get("CI") == "true"


def _unavailable() -> str | None:
    if sys.version_info < (3, 12):
        return "Django 6 needs Python >= 3.12"
    try:
        import django

        if django.VERSION < (6, 0):
            return f"Django {django.__version__} has no django.tasks (need >= 6.0)"
    except ImportError:
        return "Django is not installed (pip install -e '.[test,django]')"
    try:
        import psycopg

        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            pass
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_DSN} is not answering: {exc}"
    return None


_REASON = _unavailable()
if _REASON is not None and _CI and sys.version_info >= (3, 12):
    raise RuntimeError(f"tests/django cannot run under CI=true: {_REASON}")
if _REASON is not None:
    collect_ignore_glob = ["test_*.py"]
else:
    import psycopg

    SCHEMA = f"offload_django_{uuid.uuid4().hex[:12]}"
    os.environ["OFFLOAD_DJANGO_TEST_SCHEMA"] = SCHEMA
    os.environ["OFFLOAD_DJANGO_TEST_SQLITE"] = (
        f"sqlite:///{tempfile.mkdtemp(prefix='offload-django-')}/offload.db"
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django.project.settings"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{SCHEMA}"')

    import django

    django.setup()


@pytest.fixture(scope="session", autouse=True)
def _drop_schema() -> Iterator[None]:
    yield
    from django.db import connections

    from offload.contrib.django import backend

    for app in backend._apps.values():
        app.close()
    connections.close_all()
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')

"""Run Django's own `tests/tasks/` suite against `OffloadBackend`.

    python -m tests.django.suite.run [--broker sqlite|postgres|redis]

The suite comes from the Django source distribution on PyPI, for the installed Django
version (`pip download --no-binary :all: --no-deps django==X`), cached in
`.django-suite/`. The dummy and immediate backends the tests configure are replaced by
offload's (`adapters.py`); the tests listed in `tests/django/NOT_APPLICABLE.md` assert a
property of another backend and are left out, each with its reason. Every other test
must pass: the exit status is 1 on any failure or error, on a test skipped for any
other reason, and on a listed test that no longer exists.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unittest
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NOT_APPLICABLE = ROOT / "tests" / "django" / "NOT_APPLICABLE.md"
POSTGRES = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("OFFLOAD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def django_tests(version: str) -> Path:
    """The `tests/` directory of Django `version`'s sdist, holding only `tasks/`."""
    cache = ROOT / ".django-suite" / version
    tests = cache / "tests"
    if not (tests / "tasks" / "test_tasks.py").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
             "--no-deps", f"django=={version}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
        [sdist] = cache.glob("[Dd]jango-*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) > 2 and parts[1:3] == ("tests", "tasks") and member.isfile():
                    member.name = str(Path(*parts[1:]))
                    tar.extract(member, cache, filter="data")
    return tests


def close_apps() -> None:
    """Close the brokers of every app the backends made (their pools, their portals)."""
    from offload.contrib.django import backend

    for app in backend._apps.values():
        app.close()


def not_applicable() -> dict[str, str]:
    """`test id -> reason` from the note: lines "- `tasks.module.Class.test`: reason"."""
    entries = {}
    for line in NOT_APPLICABLE.read_text().splitlines():
        match = re.match(r"- `(tasks\.[\w.]+)`: (.+)", line)
        if match:
            entries[match[1]] = match[2]
    return entries


def broker_urls(broker: str, tmp: Path) -> tuple[str, str]:
    run = uuid.uuid4().hex[:10]
    if broker == "sqlite":
        return f"sqlite:///{tmp / 'queued.db'}", f"sqlite:///{tmp / 'running.db'}"
    if broker == "postgres":
        return (f"{POSTGRES}?schema=suite_{run}_q", f"{POSTGRES}?schema=suite_{run}_r")
    if broker == "redis":
        return f"{REDIS}?prefix=suite-{run}-q", f"{REDIS}?prefix=suite-{run}-r"
    raise SystemExit(f"unknown broker {broker!r}")


def clean_up(broker: str, urls: tuple[str, ...]) -> None:
    """Drop what this run stored in the shared servers (its schemas, its key prefixes)."""
    if broker == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            for url in urls:
                conn.execute(f'DROP SCHEMA IF EXISTS "{url.rpartition("=")[2]}" CASCADE')
    elif broker == "redis":
        import redis

        with redis.Redis.from_url(REDIS) as client:
            for url in urls:
                for key in client.scan_iter(f"{url.rpartition('=')[2]}:*"):
                    client.delete(key)


def flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from flatten(test)
        else:
            yield test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="sqlite", choices=["sqlite", "postgres", "redis"])
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(600, exit=True)  # a hung test fails the lane

    import django

    tests_dir = django_tests(django.__version__)
    sys.path.insert(0, str(tests_dir))
    tmp = Path(tempfile.mkdtemp(prefix="offload-django-suite-"))
    queued, running = broker_urls(args.broker, tmp)
    os.environ["OFFLOAD_SUITE_QUEUED_URL"], os.environ["OFFLOAD_SUITE_RUNNING_URL"] = (
        queued,
        running,
    )

    from django.conf import settings

    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[],
        SECRET_KEY="offload-django-suite",
        USE_TZ=True,
    )
    import django.tasks.backends.dummy as dummy
    import django.tasks.backends.immediate as immediate

    from tests.django.suite.adapters import QueuedBackend, RunningBackend

    dummy.DummyBackend = QueuedBackend
    immediate.ImmediateBackend = RunningBackend
    django.setup()

    from django.test.runner import DiscoverRunner

    runner = DiscoverRunner(verbosity=args.verbosity, top_level=str(tests_dir))
    suite = runner.build_suite(["tasks"])
    skipped = not_applicable()
    tests = list(flatten(suite))
    ids = {t.id() for t in tests}
    stale = sorted(set(skipped) - ids)
    kept = unittest.TestSuite(t for t in tests if t.id() not in skipped)

    runner.setup_test_environment()
    databases = runner.setup_databases()
    try:
        result = runner.run_suite(kept)
    finally:
        runner.teardown_databases(databases)
        runner.teardown_test_environment()
        close_apps()
        clean_up(args.broker, (queued, running))

    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped)
    print(
        f"\nDjango {django.__version__} tests/tasks on OffloadBackend ({args.broker}): "
        f"{len(tests)} tests, {passed} passed, {len(skipped) - len(stale)} not applicable "
        f"(tests/django/NOT_APPLICABLE.md), {len(result.failures)} failed, "
        f"{len(result.errors)} errors, {len(result.skipped)} skipped otherwise"
    )
    for test_id in stale:
        print(f"NOT_APPLICABLE.md lists {test_id}, which this Django has no longer")
    bad = result.failures or result.errors or result.skipped or stale
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

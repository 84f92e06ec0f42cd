"""A small Django project for the tests of `offload.contrib.django` (settings from the
environment the tests' conftest sets, so worker subprocesses share them)."""

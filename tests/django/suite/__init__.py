"""Django's own `tests/tasks/` suite, re-targeted at `OffloadBackend` (see run.py)."""

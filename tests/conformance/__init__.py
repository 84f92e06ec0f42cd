"""The broker conformance suite: every broker passes every test here.

A broker joins the suite by adding its name to `BROKER_NAMES` in `tests/conftest.py`.
"""

from __future__ import annotations

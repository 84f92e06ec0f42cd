"""Prints the chaos summary table after the run (and writes it to $CHAOS_REPORT)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import _report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _report.rows():
        return
    text = _report.table()
    terminalreporter.section("chaos summary")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    path = os.environ.get("CHAOS_REPORT")
    if path:
        Path(path).write_text(text + "\n")

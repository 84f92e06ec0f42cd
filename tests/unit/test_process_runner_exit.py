"""A process whose job runner was never closed still exits (its children ignore
SIGTERM, which multiprocessing's own exit hook relies on)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import time
    from offload.worker.processes import ProcessRunner, _Child

    if __name__ == "__main__":
        runner = ProcessRunner()
        child = _Child(runner._ctx)  # a child nobody closes
        time.sleep(2)  # long enough for the child to ignore SIGTERM
    """
)


def test_an_unclosed_runner_does_not_keep_the_interpreter_from_exiting(tmp_path: Path) -> None:
    script = tmp_path / "unclosed.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], timeout=30, capture_output=True)
    assert done.returncode == 0, done.stderr

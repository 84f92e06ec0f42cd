"""Take the README's screenshots of the dashboard: `python -m tests.dashboard.screenshots`.

Fills a temporary SQLite broker with jobs in every state (a dead one with its
traceback, a workflow), starts `offload dashboard` and a worker on it, and saves PNGs
of the main pages into docs/screenshots/ with headless Chromium.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from offload import Offload, chain
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, PASSWORD, USER, Processes
from tests.dashboard.dash_app import register

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def fill(app: Offload, workdir: Path) -> tuple[str, str]:
    """Jobs in every state; returns the ids of a dead job and of a workflow step."""
    tasks = register(app)
    for i in range(12):
        tasks["echo"].enqueue({"user": f"user{i}@example.com", "plan": "pro"})
    for i in range(3):
        tasks["later"].options(delay=3600 * (i + 1)).enqueue()
    dead = [tasks["flaky"].enqueue(str(workdir / "never")) for _ in range(4)]
    flow = chain(tasks["echo"].call("step 1"), tasks["echo"].call()).enqueue()  # gets step 1
    return dead[0].id, flow.id


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="offload-shots-"))
    url = f"sqlite:///{workdir / 'offload.db'}"
    app = Offload(url)
    procs = Processes(url, workdir)
    try:
        dead_id, _ = fill(app, workdir)
        procs.worker("beta")
        time.sleep(8)  # the flaky jobs die, the echoes wait in alpha (no worker on it)
        base = procs.dashboard("--basic-auth", f"{USER}:{PASSWORD}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1280, "height": 760},
            )
            page = context.new_page()
            for name, path in [
                ("overview", "/"),
                ("jobs", "/jobs"),
                ("dead-letters", "/dead"),
                ("job", f"/jobs/{dead_id}"),
                ("workers", "/workers"),
                ("schedules", "/schedules"),
            ]:
                page.goto(base + path)
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
                print(f"saved {OUT / f'{name}.png'}")
            browser.close()
    finally:
        procs.stop()
        app.close()


if __name__ == "__main__":
    main()

"""`offload demo --serve`, as a newcomer uses it: in a real browser, sign up by hand on
its page, find the verification email in its inbox page, and see on the dashboard that
the email's job failed, was retried and succeeded; then SIGTERM or Ctrl-C stops every
process the demo started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import wait_until
from tests.integration.test_demo_signals import alive, descendants

pytest.importorskip("playwright")


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str, Path]]:
    """`offload demo --serve` once it printed its URLs: (process, base URL, dashboard
    token, its output). Whatever survives the test is killed."""
    out = tmp_path / "demo.log"
    log = out.open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "offload", "demo", "--serve", "--workers", "1"],
        env={**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    found: list[re.Match[str]] = []

    def printed() -> bool:
        assert demo.poll() is None, out.read_text()
        # Printed once the web app answers and the worker has registered.
        text = out.read_text()
        ready = "sign up:" in text
        match = re.search(r"dashboard: (http://\S+)/dashboard/\s+\(sign in with the token (\S+)\)",
                          text) if ready else None  # fmt: skip
        found[:] = [match] if match else []
        return bool(found)

    try:
        wait_until(printed, "the demo's URLs", timeout_s=120)
        yield demo, found[0].group(1), found[0].group(2), out
    finally:
        for pid in [demo.pid, *descendants(demo.pid)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait()
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_newcomer_signs_up_reads_the_email_and_sees_its_job_retry_on_the_dashboard(
    serving: tuple[subprocess.Popen[bytes], str, str, Path], browser: Any, sig: signal.Signals
) -> None:
    demo, base, token, out = serving
    page = browser.new_context().new_page()

    page.goto(base + "/")
    page.fill("input[name=name]", "Grace Hopper")
    page.fill("input[name=email]", "grace@example.com")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/inbox?email=grace%40example.com")

    def mail_arrived() -> bool:
        page.reload()
        return "Your verification code" in page.locator("body").inner_text()

    wait_until(mail_arrived, "the email in the inbox page")
    code = re.search(r"\b\d{6}\b", page.locator(".mail b").first.inner_text())
    assert code is not None

    # The dashboard (mounted in the demo's web app) shows the job: refused twice, sent.
    page.goto(base + "/dashboard/")
    page.fill("input[name=token]", token)
    page.get_by_role("button", name="Sign in").click()
    assert "Signed in" in page.locator(".notice").inner_text()
    page.goto(base + "/dashboard/jobs?task=emails.send_verification")
    page.locator("table.jobs a.mono").first.click()
    assert page.locator("h1 .state").inner_text() == "succeeded"
    fields = page.locator("table.fields").inner_text()
    assert re.search(r"attempt\s+3 of 8", fields), fields  # two 451s, then accepted

    children = descendants(demo.pid)
    assert len(children) >= 2  # the web server and the worker
    demo.send_signal(sig)
    wait_until(lambda: demo.poll() is not None, "the demo to exit")
    wait_until(lambda: not any(alive(pid) for pid in children), "the demo's children to stop")
    assert demo.returncode == 0, out.read_text()
    assert f"stopped by {sig.name}" in out.read_text()

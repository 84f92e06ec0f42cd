"""The media pipeline example runs end to end (`python -m offload.demo.media`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from offload.demo.media import SIZES, run

pytest.importorskip("PIL")


async def test_media_pipeline_resizes_thumbnails_and_notifies(tmp_path: Path) -> None:
    outcome = await run(None, tmp_path, live=False)
    assert outcome["message"] == "notified ada@example.com: your upload is ready (upload-thumb.png)"
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {"upload.png", "upload-thumb.png"} | {f"upload-{w}.png" for w in SIZES}
    tree = outcome["tree"]
    states = []
    while tree:
        states.append((tree["task"], tree["state"]))
        tree = tree["children"][0] if tree["children"] else None
    assert states == [
        ("media.resize", "succeeded"),
        ("media.thumbnail", "succeeded"),
        ("media.notify", "succeeded"),
    ]
    from PIL import Image

    with Image.open(tmp_path / "upload-thumb.png") as thumb:
        assert max(thumb.size) <= 96
    with Image.open(tmp_path / "upload-512.png") as resized:
        assert resized.width == 512


def test_media_pipeline_is_one_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "offload.demo.media"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "notified ada@example.com" in done.stdout

"""The media pipeline: a workflow of jobs, with its tree shown live.

    python -m offload.demo.media [IMAGE]

An "uploaded" image (IMAGE, or a generated one) is resized into several sizes, then
a thumbnail is made from the smallest, then the uploader is notified: a `chain` of
three jobs on a SQLite broker in a temporary directory, run by a worker in this
process. The workflow tree (`offload show` draws the same) is redrawn as each step
changes state. Needs Pillow (`pip install 'offload[media]'`).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from offload import Offload, Worker, Workflow, chain, current_job

__all__ = ["SIZES", "build_app", "run"]

#: Widths (pixels) of the resized copies.
SIZES = (1024, 512, 256)
#: The thumbnail's bounding box (pixels).
THUMBNAIL = (96, 96)


def build_app(url: str) -> Offload:
    """The pipeline's app: three tasks, each one step."""
    app = Offload(url)

    @app.task(name="media.resize", max_attempts=3)
    def resize(source: str, sizes: list[int]) -> list[str]:
        from PIL import Image

        out = []
        with Image.open(source) as image:
            for n, width in enumerate(sizes):
                height = round(image.height * width / image.width)
                target = Path(source).with_name(f"{Path(source).stem}-{width}.png")
                image.resize((width, height)).save(target)
                out.append(str(target))
                current_job().progress({"done": n + 1, "of": len(sizes)})
        return out

    @app.task(name="media.thumbnail", max_attempts=3)
    def thumbnail(resized: list[str]) -> str:
        from PIL import Image

        smallest = resized[-1]
        target = Path(smallest).with_name(f"{Path(smallest).stem.rsplit('-', 1)[0]}-thumb.png")
        with Image.open(smallest) as image:
            image.thumbnail(THUMBNAIL)
            image.save(target)
        return str(target)

    @app.task(name="media.notify")
    def notify(thumb: str, user: str) -> str:
        return f"notified {user}: your upload is ready ({Path(thumb).name})"

    return app


def _sample_image(path: Path) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1600, 1000), "navy")
    draw = ImageDraw.Draw(image)
    for i in range(0, 1600, 100):
        draw.ellipse((i, i * 0.5, i + 300, i * 0.5 + 300), outline="gold", width=8)
    target = path / "upload.png"
    image.save(target)
    return target


async def run(source: Path | None, workdir: Path, *, live: bool = True) -> dict[str, Any]:
    """Run the pipeline once; returns the final tree and the notification."""
    from offload.cli import workflow_tree

    app = build_app(f"sqlite:///{workdir / 'media.db'}")
    upload = workdir / "upload.png"
    if source is None:
        upload = _sample_image(workdir)
    else:
        upload.write_bytes(source.read_bytes())
    resize, thumbnail, notify = (app.tasks[f"media.{n}"] for n in ("resize", "thumbnail", "notify"))
    flow = await chain(
        resize.call(str(upload), list(SIZES)),
        thumbnail.partial(),
        notify.partial("ada@example.com"),
    ).enqueue_async()
    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        message = await _watch(app, flow, live=live)
    finally:
        worker.stop()
        await runner
    tree = workflow_tree.build(flow.id, await app.broker.workflow_jobs(flow.id))
    await app.aclose()
    return {"tree": workflow_tree.to_json(tree), "message": message}


async def _watch(app: Offload, flow: Workflow, *, live: bool) -> str:
    from rich.console import Console
    from rich.live import Live

    from offload.cli import workflow_tree

    async def draw() -> Any:
        jobs = await app.broker.workflow_jobs(flow.id)
        return workflow_tree.render(workflow_tree.build(flow.id, jobs))

    result = asyncio.create_task(flow.result_async(timeout=60))
    with Live(await draw(), console=Console(quiet=not live), auto_refresh=False) as screen:
        while not result.done():
            screen.update(await draw(), refresh=True)
            await asyncio.sleep(0.05)
        screen.update(await draw(), refresh=True)
    return str(result.result())


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else None
    with tempfile.TemporaryDirectory(prefix="offload-media-") as tmp:
        outcome = asyncio.run(run(source, Path(tmp)))
        print()
        print(outcome["message"])
        print("files:", ", ".join(sorted(p.name for p in Path(tmp).glob("*.png"))))


if __name__ == "__main__":
    main(sys.argv[1:])

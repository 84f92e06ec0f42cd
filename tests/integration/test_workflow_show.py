"""`offload show ID` draws a workflow as a tree with each step's state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from offload import Offload, Worker, chain, chord, group
from offload.cli import cli as main


def _app(path: Path) -> Offload:
    app = Offload(f"sqlite:///{path}")

    @app.task(name="fetch")
    def fetch(n: int) -> int:
        return n

    @app.task(name="transform", max_attempts=1)
    def transform(n: int) -> int:
        raise RuntimeError("broken")

    @app.task(name="store")
    def store(n: int) -> int:
        return n

    return app


def _show(path: Path, *args: str) -> dict[str, object]:
    runner = CliRunner()
    result = runner.invoke(
        main, ["show", *args, "--json"], env={"OFFLOAD_URL": f"sqlite:///{path}"}
    )
    assert result.exit_code == 0, result.output
    shown: dict[str, object] = json.loads(result.output)
    return shown


def test_show_draws_a_chain_with_each_step_state(tmp_path: Path) -> None:
    path = tmp_path / "show.db"
    app = _app(path)
    fetch, transform, store = (app.tasks[n] for n in ("fetch", "transform", "store"))

    async def produce() -> list[str]:
        flow = await chain(fetch.call(1), transform.partial(), store.partial()).enqueue_async()
        await Worker(app).drain()
        await app.aclose()
        return [job.id for job in flow.jobs]

    first, middle, last = asyncio.run(produce())
    tree = _show(path, middle)["workflow"]
    assert tree == {
        "id": first,
        "task": "fetch",
        "state": "succeeded",
        "children": [
            {
                "id": middle,
                "task": "transform",
                "state": "dead",
                "children": [{"id": last, "task": "store", "state": "pending", "children": []}],
            }
        ],
    }
    text = CliRunner().invoke(main, ["show", first], env={"OFFLOAD_URL": f"sqlite:///{path}"})
    assert text.exit_code == 0 and "pending" in text.output and "dead" in text.output


def test_show_of_a_chord_id_draws_its_members_and_callback(tmp_path: Path) -> None:
    path = tmp_path / "show.db"
    app = _app(path)
    fetch = app.tasks["fetch"]

    @app.task(name="report")
    def report(results: list[int]) -> int:
        return sum(results)

    async def produce() -> str:
        flow = await chord(group(fetch.call(i) for i in range(3)), report.partial()).enqueue_async()
        await Worker(app).drain()
        await app.aclose()
        return flow.id

    group_id = asyncio.run(produce())
    tree = _show(path, group_id)["workflow"]
    assert isinstance(tree, dict)
    assert tree["id"] == group_id
    children = tree["children"]
    assert [c["task"] for c in children] == ["fetch", "fetch", "fetch", "report"]
    assert {c["state"] for c in children} == {"succeeded"}


def test_show_draws_a_group_inside_a_chain_with_its_callback(tmp_path: Path) -> None:
    path = tmp_path / "nested.db"
    app = _app(path)
    fetch, store = app.tasks["fetch"], app.tasks["store"]

    @app.task(name="total")
    def total(values: list[int]) -> int:
        return sum(values)

    async def produce() -> str:
        flow = await chain(
            fetch.call(2),
            group([chain(store.partial(), store.partial()), store.partial()]),
            total.partial(),
        ).enqueue_async()
        await Worker(app).drain()
        assert await flow.result_async(timeout=5) == 4
        await app.aclose()
        return flow.id

    workflow_id = asyncio.run(produce())
    tree = _show(path, workflow_id)["workflow"]

    def shape(node: dict[str, object]) -> object:
        children = node["children"]
        assert isinstance(children, list)
        label = f"{node['task']}:{node['state']}" if node["state"] else str(node["task"])
        return [label, [shape(c) for c in children]] if children else label

    assert isinstance(tree, dict)
    assert shape(tree) == [
        "fetch:succeeded",
        [
            [
                "group",
                [
                    ["store:succeeded", ["store:succeeded"]],
                    "store:succeeded",
                    "total:succeeded",
                ],
            ]
        ],
    ]

"""`offload show` for workflows: the jobs of a workflow as a tree, each with its state.

Edges are `parent_id` links. A chain's steps that are not enqueued yet (they travel in
the last enqueued step's `then`) are shown as `pending`; a group or chord id (not a job
itself) is the root of its members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.tree import Tree

from offload.brokers.base import JobInfo

__all__ = ["Node", "build", "render", "to_json"]

_STYLE = {
    "succeeded": "green",
    "dead": "red",
    "running": "cyan",
    "cancelled": "yellow",
    "expired": "yellow",
    "pending": "dim",
}


@dataclass
class Node:
    id: str
    task: str
    state: str
    children: list[Node] = field(default_factory=list)


def build(workflow_id: str, jobs: list[JobInfo]) -> Node:
    """The tree of `jobs`, rooted at the workflow's first job (or at the group)."""
    nodes = {info.id: Node(info.id, info.task, str(info.state)) for info in jobs}
    root = nodes.get(workflow_id) or Node(workflow_id, "group", "")
    for info in jobs:
        envelope = info.envelope()
        parent = envelope.parent_id if envelope else None
        if info.id != root.id:
            (nodes.get(parent or "") or root).children.append(nodes[info.id])
        if envelope is not None and envelope.then:
            _add_pending(nodes, nodes[info.id], envelope.then)
    return root


def _add_pending(nodes: dict[str, Node], node: Node, steps: list[Any]) -> None:
    for step in steps:
        if step.id in nodes:
            return
        pending = Node(step.id, step.task, "pending")
        node.children.append(pending)
        node = pending


def render(root: Node) -> Tree:
    tree = Tree(_label(root))
    _render_children(tree, root)
    return tree


def _render_children(tree: Tree, node: Node) -> None:
    for child in node.children:
        _render_children(tree.add(_label(child)), child)


def _label(node: Node) -> str:
    style = _STYLE.get(node.state, "white")
    state = f" [{style}]{node.state}[/{style}]" if node.state else ""
    return f"{node.task} [dim]{node.id}[/dim]{state}"


def to_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "task": node.task,
        "state": node.state,
        "children": [to_json(child) for child in node.children],
    }

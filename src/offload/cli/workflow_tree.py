"""`offload show` for workflows: the jobs of a workflow as a tree, each with its state.

Edges are `parent_id` links. A group is a node of its own (`group`, no state) holding
its branches, and the stage after it (a chord's callback) as its last child. Stages not
enqueued yet (they travel in the last enqueued step's `then`) are shown as `pending`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from offload.brokers.base import JobInfo
from offload.envelope import Step

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
    """The tree of `jobs`, rooted at the workflow's first job (or at its first group)."""
    nodes = {info.id: Node(info.id, info.task, str(info.state)) for info in jobs}
    root = nodes.get(workflow_id) or Node(workflow_id, "group", "")
    groups: dict[str, Node] = {} if workflow_id in nodes else {root.id: root}
    envelopes = {info.id: info.envelope() for info in jobs}

    def group_node(group_id: str, parent: Node) -> Node:
        if group_id not in groups:
            groups[group_id] = Node(group_id, "group", "")
            parent.children.append(groups[group_id])
        return groups[group_id]

    for info in jobs:
        envelope = envelopes[info.id]
        if info.id == root.id or envelope is None:
            continue
        parent_id = envelope.parent_id or ""
        parent = nodes.get(parent_id) or groups.get(parent_id) or root
        chord = envelope.chord
        parent_envelope = envelopes.get(parent_id)
        parent_chord = parent_envelope.chord if parent_envelope is not None else None
        if chord is not None and (parent_chord is None or parent_chord.id != chord.id):
            parent = group_node(chord.id, parent)  # the first step of a branch
        parent.children.append(nodes[info.id])
    known = {**nodes, **groups}
    for info in jobs:
        envelope = envelopes[info.id]
        if envelope is not None and envelope.then:
            _add_pending(known, nodes[info.id], envelope.then)
    return root


def _add_pending(nodes: dict[str, Node], node: Node, steps: list[Step]) -> None:
    for step in steps:
        if step.id in nodes:
            return
        if step.branches is None:
            pending = Node(step.id, step.task, "pending")
        else:
            pending = Node(step.id, "group", "pending")
            for branch in step.branches:
                _add_pending(nodes, pending, branch)
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
    return f"{escape(node.task[:200])} [dim]{escape(node.id)}[/dim]{state}"


def to_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "task": node.task,
        "state": node.state,
        "children": [to_json(child) for child in node.children],
    }

"""The wire format: JSON only, documented by a committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from offload.codec import decode_envelope, encode_envelope, envelope_schema
from offload.envelope import Backoff, Envelope
from offload.errors import SerializationError

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "envelope.schema.json"


def test_committed_schema_matches_the_envelope() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == envelope_schema(), (
        "regenerate docs/envelope.schema.json (see README)"
    )


def test_schema_text_does_not_depend_on_how_msgspec_renders_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msgspec 0.23 dedents docstrings in `description`, earlier releases kept the
    indentation; 0.18 orders `anyOf` alternatives the other way round: every rendering
    must give the committed schema."""
    rendered = msgspec.json.schema(Envelope)

    def other_rendering(node: object) -> object:
        if isinstance(node, dict):
            return {
                k: v.replace("\n", "\n    ")
                if k == "description"
                else list(reversed(other_rendering(v)))  # type: ignore[call-overload]
                if k == "anyOf"
                else other_rendering(v)
                for k, v in node.items()
            }
        return [other_rendering(v) for v in node] if isinstance(node, list) else node

    committed = json.loads(SCHEMA_FILE.read_text())
    for variant in (rendered, other_rendering(rendered)):
        monkeypatch.setattr(msgspec.json, "schema", lambda _t, v=variant: v)
        assert envelope_schema() == committed


def test_envelope_round_trips_and_omits_defaults() -> None:
    env = Envelope(id="j1", task="t", args=[1, "a"], kwargs={"k": None}, backoff=Backoff(base_s=2))
    data = encode_envelope(env)
    assert json.loads(data) == {
        "id": "j1",
        "task": "t",
        "args": [1, "a"],
        "kwargs": {"k": None},
        "backoff": {"base_s": 2.0},
    }
    assert decode_envelope(data) == env


def test_envelope_from_another_language_decodes() -> None:
    data = b'{"id": "x", "task": "emails.send", "args": ["a@b.c"], "queue": "emails"}'
    env = decode_envelope(data)
    assert (env.task, env.args, env.queue, env.max_attempts) == (
        "emails.send",
        ["a@b.c"],
        "emails",
        None,
    )


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b'{"task": "no id"}', b'{"id": 1, "task": "t"}']
)
def test_invalid_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(data)


def test_encoding_error_names_the_argument() -> None:
    env = Envelope(id="j", task="emails.send", args=["ok"], kwargs={"when": object()})
    with pytest.raises(SerializationError, match=r"argument 'when' of task 'emails.send'"):
        encode_envelope(env)

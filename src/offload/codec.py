"""JSON encoding for envelopes, results and errors; never pickle.

Everything offload puts in a broker goes through here, so the wire format is the same
on every broker. Encoding failures name the culprit (which argument of which task) and
are raised at the producer, before anything reaches the broker.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from offload.errors import SerializationError
from offload.job import Envelope, ErrorInfo

__all__ = [
    "decode_envelope",
    "decode_error",
    "decode_value",
    "encode_envelope",
    "encode_error",
    "encode_value",
    "envelope_schema",
]

_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_value_decoder = msgspec.json.Decoder()


def encode_envelope(envelope: Envelope) -> bytes:
    """Encode an envelope, naming the offending argument if one is not JSON-encodable.

    Raises:
        SerializationError: an argument cannot be encoded.
    """
    try:
        return _encoder.encode(envelope)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            _describe_bad_argument(envelope.task, envelope.args, envelope.kwargs, exc)
        ) from exc


def decode_envelope(data: bytes) -> Envelope:
    """Decode an envelope.

    Raises:
        msgspec.DecodeError: not valid JSON, or not an envelope. The worker buries such
            a job with the reason `undecodable`.
    """
    return _envelope_decoder.decode(data)


def encode_value(value: Any, *, what: str = "value") -> bytes:
    """Encode a result (or any JSON value).

    Raises:
        SerializationError: the value cannot be encoded; `what` names it in the message.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from exc


def decode_value(data: bytes) -> Any:
    return _value_decoder.decode(data)


def encode_error(error: ErrorInfo) -> bytes:
    return _encoder.encode(error)


def decode_error(data: bytes | str) -> ErrorInfo:
    return _error_decoder.decode(data)


def envelope_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope, for producers written in other languages.

    Descriptions are docstrings, which msgspec releases render differently (0.23
    dedents them, earlier ones did not); they are cleaned here so that the schema's
    text, like its meaning, does not depend on the installed msgspec.
    """
    schema: dict[str, Any] = _clean_descriptions(msgspec.json.schema(Envelope))
    return schema


def _clean_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v)
            if k == "description" and isinstance(v, str)
            else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def _describe_bad_argument(
    task: str, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    for index, arg in enumerate(args):
        problem = _encode_problem(arg)
        if problem:
            return f"argument {index} of task {task!r} is not JSON-serializable: {problem}"
    for name, arg in kwargs.items():
        problem = _encode_problem(arg)
        if problem:
            return f"argument {name!r} of task {task!r} is not JSON-serializable: {problem}"
    return f"job for task {task!r} is not JSON-serializable: {exc}"


def _encode_problem(value: Any) -> str | None:
    try:
        _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return str(exc)
    return None


def dumps_pretty(value: Any) -> str:
    """Indented JSON for humans (CLI output)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)

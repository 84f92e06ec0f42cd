"""JSON encoding for envelopes, results and errors; never pickle.

Everything offload puts in a broker goes through here, so the wire format is the same
on every broker. Encoding failures name the culprit (which argument of which task) and
are raised at the producer, before anything reaches the broker.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from offload.envelope import Envelope, ErrorInfo
from offload.errors import SerializationError

__all__ = [
    "decode_envelope",
    "decode_error",
    "decode_value",
    "encode_envelope",
    "encode_error",
    "encode_value",
    "envelope_schema",
    "value_children",
    "where",
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
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
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
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        at = where(_bad_spot(value)) if not isinstance(exc, RecursionError) else ""
        raise SerializationError(f"{what} is not JSON-serializable{at}: {exc}") from exc


def decode_value(data: bytes) -> Any:
    return _value_decoder.decode(data)


def encode_error(error: ErrorInfo) -> bytes:
    return _encoder.encode(error)


def decode_error(data: bytes | str | None) -> ErrorInfo | None:
    """The stored error record (None if there is none); a corrupt one is reported as
    `Undecodable`, never raised, so inspection survives garbage in the broker."""
    if data is None:
        return None
    try:
        return _error_decoder.decode(data)
    except msgspec.DecodeError:
        return ErrorInfo("Undecodable", f"stored error is not an ErrorInfo: {data!r:.200}")


def envelope_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope, for producers written in other languages.

    msgspec releases render the same schema differently (0.23 dedents the docstrings
    used as descriptions, 0.18 lists `anyOf` alternatives in another order), so the
    schema is put in one canonical form: cleaned descriptions and sorted `anyOf`
    alternatives. Its text then depends on the envelope alone, not on the installed
    msgspec.
    """
    schema: dict[str, Any] = _canonical(msgspec.json.schema(Envelope))
    return schema


def _canonical(node: Any) -> Any:
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            out[key] = inspect.cleandoc(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = sorted(_canonical(value), key=lambda v: json.dumps(v, sort_keys=True))
        else:
            out[key] = _canonical(value)
    return out


def _describe_bad_argument(
    task: str, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    named: list[tuple[object, Any]] = [*enumerate(args), *((repr(k), v) for k, v in kwargs.items())]
    for name, arg in named:
        problem = _encode_problem(arg)
        if problem:
            at = "" if isinstance(exc, RecursionError) else where(_bad_spot(arg))
            return f"argument {name} of task {task!r} is not JSON-serializable{at}: {problem}"
    return f"job for task {task!r} is not JSON-serializable: {exc}"


def _bad_spot(value: Any, path: str = "", depth: int = 0) -> str:
    """Where in `value` its encoding fails (`['rows'][3].when`): the innermost value
    that fails on its own, so a bad value deep in a large argument is found by name.
    Runs only once an encoding has failed."""
    if depth < 100:  # the nesting limit of `offload.validation`
        for suffix, child in value_children(value) or ():
            if _encode_problem(child):
                return _bad_spot(child, path + suffix, depth + 1)
    return path


def where(path: str) -> str:
    """` at <path>` for an error message (shortened past 80 characters), or nothing."""
    if not path:
        return ""
    return f" at {path if len(path) <= 80 else path[:77] + '...'}"


def value_children(value: Any) -> list[tuple[str, Any]] | None:
    """The values inside `value`, each with the path step that reaches it (`['k']`,
    `[3]`, `.field`); None if it holds none (not a container, a struct or a dataclass):
    the one walk that names where in an argument or result a bad value sits."""
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in value.items()]
    if isinstance(value, list | tuple | set | frozenset):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, msgspec.Struct):
        return [(f".{f}", getattr(value, f)) for f in value.__struct_fields__]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


def _encode_problem(value: Any) -> str | None:
    try:
        _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        return str(exc)
    return None


def dumps_pretty(value: Any) -> str:
    """Indented JSON for humans (CLI output)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)

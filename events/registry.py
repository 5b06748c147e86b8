"""From a `type` string to its model, and from raw JSON to a validated event or to reasons.

Parsing never raises on bad input: it returns a `Rejection` whose reasons are
machine-readable and carry no input values (an error message must not echo a payload).

Before the schema, every input must be text that any store can hold and any consumer can
read the same way (`decode_json`): at most `MAX_EVENT_BYTES`, UTF-8, no NUL character
(PostgreSQL text cannot hold one) and no lone surrogate, JSON nested at most `MAX_NESTING`
levels, no object with the same key twice (two parsers could each keep a different one),
and numbers within 64 bits. So a poison message is one rejection, never a crashed stream
or a batch the database refuses, and it gets the same outcome on SQLite and PostgreSQL.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
    with_config,
)

from events.clinician import CLINICIAN_EVENTS
from events.envelope import (
    UNSAFE_CHARACTERS,
    UNSAFE_CHARACTERS_MESSAGE,
    CloudEvent,
    has_unsafe_characters,
)
from events.operations import OPERATIONS_EVENTS
from events.prescriber import PRESCRIBER_EVENTS
from events.scheduling import SCHEDULING_EVENTS
from events.system import SYSTEM_EVENTS

ALL_EVENT_MODELS: tuple[type[CloudEvent], ...] = (
    SCHEDULING_EVENTS + PRESCRIBER_EVENTS + CLINICIAN_EVENTS + OPERATIONS_EVENTS + SYSTEM_EVENTS
)
EVENT_MODELS: dict[str, type[CloudEvent]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in ALL_EVENT_MODELS
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MODELS)

_AnyEvent = Annotated[Union[ALL_EVENT_MODELS], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
_ADAPTER: TypeAdapter[CloudEvent] = TypeAdapter(_AnyEvent)


# The one definition of a reason: the engine's outcomes carry it, and the published
# contracts (events/outputs.py) and the HTTP schemas use it as their `Reason`.
@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True, slots=True)
class Reason:
    """Why an outcome is what it is: a rule (R1–R12) or a stable error code, a message for
    people, and the field concerned when there is one."""

    code: Annotated[str, Field(description="an R-id (R1–R12) or a stable error code")]
    message: str
    field: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out

    # Unannotated on purpose: a return annotation would replace the published schema.
    @model_serializer(mode="wrap")
    def _published(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        """In the published models too, `field` only when set (as `as_dict`)."""
        out = handler(self)
        if out.get("field") is None:
            out.pop("field", None)
        return out


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that could not become an event. Keeps what identifies it, never its data."""

    reasons: tuple[Reason, ...]
    id: str | None = None
    source: str | None = None
    subject: str | None = None
    type: str | None = None


MAX_EVENT_BYTES = 256 * 1024
"""The largest message read as one event. A CloudEvent of flags and codes is under 2 KiB;
anything near this size is a publisher's bug, rejected as `TOO_LARGE`."""
MAX_NESTING = 32
"""The deepest JSON nesting read (a CloudEvent needs four levels)."""
_INT64 = 2**63


class _Unfit(ValueError):
    """Raised inside the JSON decoder's hooks: the input is JSON kapflow will not read."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.code)
        self.reason = reason


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Unfit(Reason("DUPLICATE_KEY", "an object holds the same key twice"))
    return obj


def _int64(digits: str) -> int:
    # Checked on the digits first: int() of thousands of digits is itself a poison.
    if len(digits) > 20 or not -_INT64 <= (value := int(digits)) < _INT64:
        raise _Unfit(Reason("NUMBER_OUT_OF_RANGE", "an integer outside the 64-bit range"))
    return value


def _finite(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise _Unfit(Reason("NUMBER_OUT_OF_RANGE", "a number too large for a 64-bit float"))
    return value


def _not_json(constant: str) -> Any:
    raise _Unfit(Reason("MALFORMED_JSON", "not valid JSON"))  # NaN, Infinity


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_int=_int64, parse_float=_finite, parse_constant=_not_json
)


def storable_text_problem(text: str) -> Reason | None:
    """Why a string cannot be stored as text on every store, or None when it can."""
    if "\x00" in text:
        return Reason("UNSTORABLE_TEXT", "holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Reason("UNSTORABLE_TEXT", "holds a lone surrogate (not valid Unicode)")
    return None


def _values(obj: Any) -> Iterator[tuple[Any, int, str | None]]:
    """Every value and key with its depth and top-level key, without recursion."""
    stack: list[tuple[Any, int, str | None]] = [(obj, 1, None)]
    while stack:
        value, depth, top = stack.pop()
        yield value, depth, top
        if isinstance(value, dict):
            for key, item in value.items():
                here = key if top is None else top
                yield key, depth, here
                stack.append((item, depth + 1, here))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, top) for item in value)


def _field_name(top: str | None) -> str | None:
    # Only a name from the envelope is echoed: any other key is the sender's content.
    return top if top in CloudEvent.model_fields else None


def _may_hide_a_problem(text: str) -> bool:
    """Whether the decoded value must be walked: only an escape can put a NUL or a lone
    surrogate in a string (the raw text has none), and nesting deeper than the limit needs
    more brackets than the limit. Most events have neither, and skip the walk."""
    lowered = text.lower() if "\\u" in text else ""
    return (
        "\\u0000" in lowered or "\\ud" in lowered or text.count("[") + text.count("{") > MAX_NESTING
    )


def decode_json(raw: str | bytes) -> Any:
    """One JSON document kapflow will read, or the `Reason` it will not.

    Never raises on any input: size, encoding, NUL, lone surrogates, nesting, duplicate
    keys and numbers out of range are each a reason of their own.
    """
    if len(raw) > MAX_EVENT_BYTES:
        return Reason("TOO_LARGE", f"larger than {MAX_EVENT_BYTES} bytes, the limit for one event")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Reason("INVALID_UTF8", "not valid UTF-8")
    else:
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
            return Reason(
                "TOO_LARGE", f"larger than {MAX_EVENT_BYTES} bytes, the limit for one event"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes a transport could not decode, kept as surrogates
            return Reason("INVALID_UTF8", "not valid UTF-8")
    problem = storable_text_problem(text)
    if problem is not None:
        return problem
    try:
        obj = _DECODER.decode(text)
    except _Unfit as unfit:
        return unfit.reason
    except RecursionError:
        return Reason("TOO_DEEP", f"JSON nested deeper than {MAX_NESTING} levels")
    except ValueError:
        return Reason("MALFORMED_JSON", "not valid JSON")
    if not _may_hide_a_problem(text):
        return obj
    for value, depth, top in _values(obj):
        if depth > MAX_NESTING:
            return Reason("TOO_DEEP", f"JSON nested deeper than {MAX_NESTING} levels")
        if isinstance(value, str):
            problem = storable_text_problem(value)
            if problem is not None:
                return Reason(problem.code, problem.message, _field_name(top))
    return obj


class CheckedJson(bytes):
    """JSON text already checked by `decode_json`, carrying what it decoded to, so a
    transport that had to read it (the Kafka binding looks for the subject) does not make
    validation check and decode it a second time. It is the same bytes to everyone else."""

    decoded: Any

    @classmethod
    def of(cls, text: bytes) -> tuple[CheckedJson, Any]:
        checked = cls(text)
        checked.decoded = decode_json(text)
        return checked, checked.decoded


def parse_event(raw: str | bytes) -> CloudEvent | Rejection:
    """Validate one structured-mode CloudEvent given as JSON text."""
    decoded = raw.decoded if isinstance(raw, CheckedJson) else decode_json(raw)
    if isinstance(decoded, Reason):
        return Rejection((decoded,))
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as error:
        return _rejection(error, decoded if isinstance(decoded, dict) else {})


def parse_event_object(obj: Any) -> CloudEvent | Rejection:
    """Validate one CloudEvent already decoded from JSON (an HTTP body element).

    Validated as JSON text, so strictness means the same thing on every transport.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        return Rejection((Reason("TOO_DEEP", f"JSON nested deeper than {MAX_NESTING} levels"),))
    except (TypeError, ValueError):
        return Rejection((Reason("SCHEMA", "not representable as JSON"),))
    return parse_event(text)


def _text_or_none(value: Any) -> str | None:
    # An unsafe identity is not kept: it would reach logs and screens as it is.
    if not isinstance(value, str) or not value or has_unsafe_characters(value):
        return None
    return value[:256]


def _unknown_type(value: Any) -> Reason:
    """UNKNOWN_TYPE, naming the nearest known type when there is one (a typo such as
    `scheduling.inquiry_recieved`). The message names only a catalogue type, never the
    input."""
    message = "unknown event type"
    if isinstance(value, str) and len(value) <= 128:
        nearest = difflib.get_close_matches(value, EVENT_TYPES, n=1)
        if nearest:
            message += f"; did you mean {nearest[0]}?"
    return Reason("UNKNOWN_TYPE", message, "type")


def _unsafe(item: Any) -> bool:
    """An error that unsafe characters caused: the identifiers' own check, or a token whose
    pattern failed on such a character (the input is looked at, never echoed)."""
    if item["type"] == "unsafe_characters":
        return True
    value = item.get("input")
    return (
        item["type"] == "string_pattern_mismatch"
        and isinstance(value, str)
        and has_unsafe_characters(value)
    )


def _rejection(error: ValidationError, identity: dict[str, Any]) -> Rejection:
    reasons: list[Reason] = []
    for item in error.errors(include_url=False, include_context=False):
        kind = item["type"]
        # The first element of a discriminated-union location is the tag; drop it.
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in EVENT_MODELS:
            loc = loc[1:]
        field = ".".join(loc) or None
        if kind == "union_tag_invalid":
            reasons.append(_unknown_type(identity.get("type")))
        elif _unsafe(item):
            reasons.append(Reason(UNSAFE_CHARACTERS, UNSAFE_CHARACTERS_MESSAGE, field))
        elif kind == "union_tag_not_found":
            reasons.append(Reason("SCHEMA", "field required", "type"))
        elif kind == "json_invalid":
            reasons.append(Reason("MALFORMED_JSON", "not valid JSON"))
        elif kind in {"model_type", "model_attributes_type", "dict_type"} and field is None:
            reasons.append(Reason("SCHEMA", "a CloudEvent must be a JSON object"))
        elif kind == "extra_forbidden":
            reasons.append(Reason("SCHEMA", "unknown field", field))
        else:
            reasons.append(Reason("SCHEMA", item["msg"], field))
    return Rejection(
        reasons=tuple(reasons),
        id=_text_or_none(identity.get("id")),
        source=_text_or_none(identity.get("source")),
        subject=_text_or_none(identity.get("subject")),
        type=_text_or_none(identity.get("type")),
    )


def event_json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event type, for the publishing services."""
    schemas = {}
    for type_name, model in EVENT_MODELS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"urn:kapflow:event:{type_name}"
        schema["title"] = type_name
        schemas[type_name] = schema
    return schemas

"""From a `type` string to its model, and from raw JSON to a validated event or to reasons.

Parsing never raises on bad input: it returns a `Rejection` whose reasons are
machine-readable and carry no input values (an error message must not echo a payload).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from events.clinician import CLINICIAN_EVENTS
from events.envelope import CloudEvent
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


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an event was not accepted. `code` is an R-id or a stable error code."""

    code: str
    message: str
    field: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that could not become an event. Keeps what identifies it, never its data."""

    reasons: tuple[Reason, ...]
    id: str | None = None
    source: str | None = None
    subject: str | None = None
    type: str | None = None


def parse_event(raw: str | bytes) -> CloudEvent | Rejection:
    """Validate one structured-mode CloudEvent given as JSON text."""
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as error:
        return _rejection(error, _identity_of(raw))


def parse_event_object(obj: Any) -> CloudEvent | Rejection:
    """Validate one CloudEvent already decoded from JSON (an HTTP body element).

    Validated as JSON text, so strictness means the same thing on every transport.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return Rejection((Reason("SCHEMA", "not representable as JSON"),))
    return parse_event(text)


def _identity_of(raw: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _text_or_none(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


def _rejection(error: ValidationError, identity: dict[str, Any]) -> Rejection:
    reasons: list[Reason] = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        kind = item["type"]
        # The first element of a discriminated-union location is the tag; drop it.
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in EVENT_MODELS:
            loc = loc[1:]
        field = ".".join(loc) or None
        if kind == "union_tag_invalid":
            reasons.append(Reason("UNKNOWN_TYPE", "unknown event type", "type"))
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

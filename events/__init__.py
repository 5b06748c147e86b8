"""Event contracts: the CloudEvents envelope and one pydantic model per event type."""

from events.envelope import CloudEvent
from events.registry import (
    EVENT_MODELS,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    Reason,
    Rejection,
    decode_json,
    event_json_schemas,
    parse_event,
    parse_event_object,
)

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "CloudEvent",
    "Reason",
    "Rejection",
    "decode_json",
    "event_json_schemas",
    "parse_event",
    "parse_event_object",
]

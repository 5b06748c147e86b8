"""The OpenAPI description of `GET /v1/stream`: each Server-Sent Event, not the byte stream.

An SSE body is a sequence of events, each with `id:`, `event:` and `data:` lines. OpenAPI
3.2 describes one event with the media type's `itemSchema`, an object with the fields
`id`, `event` and `data`, where `data` is a string holding JSON (`contentMediaType`,
`contentSchema`). kapflow's `data` is the published message (events/outputs.py) of the
event's topic plus the message's stable `id` and `key`: the `Streamed*` models below,
one per topic, chosen by `event`. Keep-alive comments and the opening `retry:` carry no
data, so they are not events.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from events.outputs import DeadLetter, ProtocolDeviation, StateChange, TaskChange
from kapflow.service.outbox import DEAD_LETTERS, DEVIATIONS, STATE_CHANGES, TASKS

_ID = "the message's stable id: de-duplicate on it"
_KEY = "the client id (per-client order); a fingerprint for an input naming no client"


class StreamedStateChange(StateChange):
    """`data` of a `state-changes` event."""

    id: str = Field(description=_ID)
    key: str = Field(description=_KEY)


class StreamedTaskChange(TaskChange):
    """`data` of a `tasks` event."""

    id: str = Field(description=_ID)
    key: str = Field(description=_KEY)


class StreamedProtocolDeviation(ProtocolDeviation):
    """`data` of a `deviations` event."""

    id: str = Field(description=_ID)
    key: str = Field(description=_KEY)


class StreamedDeadLetter(DeadLetter):
    """`data` of a `rejected` event. Its `id` is the rejected event's id, as in the dead
    letter; the original message is left out for keys that may not read rejections."""

    key: str = Field(description=_KEY)
    original: str = Field(  # optional here: redacted for some keys
        "", description="the original message text (absent for keys without rejections)"
    )


STREAMED: dict[str, type[BaseModel]] = {
    STATE_CHANGES: StreamedStateChange,
    TASKS: StreamedTaskChange,
    DEAD_LETTERS: StreamedDeadLetter,
    DEVIATIONS: StreamedProtocolDeviation,
}

_REF = "#/components/schemas/{model}"


def stream_components() -> dict[str, Any]:
    """The component schemas the event schema refers to, for the OpenAPI document."""
    _, top = models_json_schema(
        [(model, "serialization") for model in STREAMED.values()], ref_template=_REF
    )
    components: dict[str, Any] = top["$defs"]
    return components


def stream_event_schema() -> dict[str, Any]:
    """One Server-Sent Event of the stream, as schemathesis and OpenAPI 3.2 read it."""
    return {
        "type": "object",
        "description": "one Server-Sent Event: `data` is the JSON message of topic `event`",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": r"^[0-9]+\.[0-9]+$",
                "description": "`<outbox position>.<index in row>`: send it as Last-Event-ID "
                "to resume right after this event",
            },
            "event": {"type": "string", "enum": list(STREAMED)},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"},
        },
        "additionalProperties": False,
        "oneOf": [
            {
                "properties": {
                    "event": {"const": topic},
                    "data": {
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": _REF.format(model=model.__name__)},
                    },
                }
            }
            for topic, model in STREAMED.items()
        ],
    }

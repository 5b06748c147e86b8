"""Rendering the outbox: what consumers receive, derived from what was recorded.

Outbox rows point at a history entry or a rejection; this module turns each into the
messages of SPEC §5 (state changes, task changes, dead letters), each with a stable id so
consumers can de-duplicate. The HTTP stream and the Kafka relay both publish through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kapflow.store.base import HistoryEntry, OutboxRef, RejectedRecord
from workflow.client import NEW

STATE_CHANGES = "state-changes"
TASKS = "tasks"
REJECTED = "rejected"
TOPICS = (STATE_CHANGES, TASKS, REJECTED)


@dataclass(slots=True)  # a value: never mutated after construction
class Message:
    topic: str
    key: str  # the client id (per-client order); a fingerprint for unattributable input
    id: str  # stable across re-publication
    payload: dict[str, Any]


def render(ref: OutboxRef, record: HistoryEntry | RejectedRecord) -> list[Message]:
    if isinstance(record, RejectedRecord):
        return [dead_letter(record)]
    return history_messages(record)


def history_messages(entry: HistoryEntry) -> list[Message]:
    outcome = json.loads(entry.outcome)
    messages = []
    if entry.from_state != entry.to_state:
        messages.append(
            Message(
                STATE_CHANGES,
                entry.client_id,
                f"{entry.client_id}:{entry.seq}:state",
                {
                    "client_id": entry.client_id,
                    "seq": entry.seq,
                    "from_state": None if entry.from_state == NEW else entry.from_state,
                    "to_state": entry.to_state,
                    "event_id": entry.event_id,
                    "event_type": entry.type,
                    "occurred_at": entry.occurred_at,
                    "recorded_at": entry.recorded_at,
                    "pathway_version": entry.pathway_version,
                },
            )
        )
    for change in outcome["tasks"]:
        task = change["task"]
        messages.append(
            Message(
                TASKS,
                entry.client_id,
                f"{entry.client_id}:{entry.seq}:{change['change']}:{task['id']}",
                {
                    "change": change["change"],
                    "client_id": entry.client_id,
                    "seq": entry.seq,
                    "event_id": entry.event_id,
                    "recorded_at": entry.recorded_at,
                    "task": task,
                },
            )
        )
    return messages


def dead_letter(record: RejectedRecord) -> Message:
    return Message(
        REJECTED,
        record.client_id or record.key_id,
        f"rejected:{record.key_source}:{record.key_id}",
        {
            "id": record.event_id,
            "source": record.source,
            "subject": record.client_id,
            "type": record.type,
            "recorded_at": record.recorded_at,
            "reasons": json.loads(record.reasons),
            "original": record.original,
        },
    )


# CloudEvents `type` of each outgoing message, by outbox topic.
CLOUDEVENT_TYPES = {
    STATE_CHANGES: "kapflow.state_changed",
    TASKS: "kapflow.task_changed",
    REJECTED: "kapflow.event_rejected",
}
KAPFLOW_SOURCE = "urn:kapflow"


def as_cloudevent(message: Message) -> dict[str, Any]:
    """The message as a structured-mode CloudEvent: what the Kafka topics carry."""
    payload = message.payload
    return {
        "specversion": "1.0",
        "id": message.id,
        "source": KAPFLOW_SOURCE,
        "type": CLOUDEVENT_TYPES[message.topic],
        "subject": payload.get("client_id") or payload.get("subject") or message.key,
        "time": payload.get("recorded_at"),
        "datacontenttype": "application/json",
        "data": payload,
    }

"""Rendering the outbox: what consumers receive, derived from what was recorded.

Outbox rows point at a history entry or a rejection; this module turns each into the
messages of SPEC §5 (state changes, task changes, dead letters, protocol deviations), each
with a stable id so consumers can de-duplicate. Every payload is built as its published
model (events/outputs.py) and dumped from it, so what leaves is the contract. The HTTP
stream and the Kafka relay both publish through it. The stored JSON read back here is
kapflow's own (orjson- or pydantic-written, int64 numbers), so orjson reads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel

from events.outputs import ClientState, DeadLetter, ProtocolDeviation, StateChange, TaskChange
from kapflow.store.base import EventStore, HistoryEntry, OutboxRef, RejectedRecord
from workflow.client import NEW
from workflow.tasks import iso

STATE_CHANGES = "state-changes"
TASKS = "tasks"
DEAD_LETTERS = "rejected"  # the topic of rejected inputs (outcome `rejected`)
DEVIATIONS = "deviations"
TOPICS = (STATE_CHANGES, TASKS, DEAD_LETTERS, DEVIATIONS)
REVIEW_CODE = "review-protocol-deviation"

log = logging.getLogger("kapflow.outbox")

# Published rows are kept a week: a consumer that was down can still resume the stream by
# position, and the outbox stays the size of one week's traffic plus the relay's backlog.
# The history and rejections they point at are never pruned.
OUTBOX_RETENTION = timedelta(days=7)


def prune_published(
    store: EventStore, now: datetime, retention: timedelta = OUTBOX_RETENTION
) -> int:
    """Delete outbox rows published more than `retention` before `now`; how many."""
    return store.prune_outbox(iso(now - retention))


@dataclass(slots=True)
class PruneSchedule:
    """Prune at most once per `every_seconds`: what `serve` and the relay call as they go."""

    retention: timedelta = OUTBOX_RETENTION
    every_seconds: float = 3600.0
    _next: float = field(default=0.0, repr=False)

    def run_if_due(self, store: EventStore, now: datetime) -> int:
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + self.every_seconds
        pruned = prune_published(store, now, self.retention)
        if pruned:
            log.info("pruned %d outbox rows published before the retention", pruned)
        return pruned


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


def _payload(model: BaseModel) -> dict[str, Any]:
    """The message's `data`: the model as JSON, optional fields only where they were set."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def history_messages(entry: HistoryEntry) -> list[Message]:
    outcome = orjson.loads(entry.outcome)
    messages = []
    deviation = outcome.get("outcome") == "deviation"
    if entry.from_state != entry.to_state or deviation:
        # A deviation is marked on the state-change stream even when the state stayed:
        # a dashboard following state changes must see that a rule was broken (SPEC §5).
        change = StateChange(
            client_id=entry.client_id,
            seq=entry.seq,
            # Validated as the model's states: the history holds what the engine wrote.
            from_state=None if entry.from_state == NEW else cast(ClientState, entry.from_state),
            to_state=cast(ClientState, entry.to_state),
            event_id=entry.event_id,
            event_type=entry.type,
            occurred_at=entry.occurred_at,
            recorded_at=entry.recorded_at,
            pathway_version=entry.pathway_version,
            **({"deviations": _codes(outcome["deviations"])} if deviation else {}),
        )
        messages.append(
            Message(
                STATE_CHANGES,
                entry.client_id,
                f"{entry.client_id}:{entry.seq}:state",
                _payload(change),
            )
        )
    for effect in outcome["tasks"]:
        task = effect["task"]
        messages.append(
            Message(
                TASKS,
                entry.client_id,
                f"{entry.client_id}:{entry.seq}:{effect['change']}:{task['id']}",
                _payload(
                    TaskChange(
                        change=effect["change"],
                        client_id=entry.client_id,
                        seq=entry.seq,
                        event_id=entry.event_id,
                        recorded_at=entry.recorded_at,
                        task=task,
                    )
                ),
            )
        )
    if deviation:
        messages.append(_deviation_message(entry, outcome))
    for item in outcome.get("rejudged", ()):
        messages.append(_rejudged_message(entry, outcome, item))
    return messages


def _codes(reasons: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(reason["code"] for reason in reasons))


def _review_task(outcome: dict[str, Any], focus: str) -> str | None:
    """The review task this entry opened, updated or closed for the event `focus`."""
    for change in outcome["tasks"]:
        task = change["task"]
        if task["code"] == REVIEW_CODE and task["focus"] == focus:
            return str(task["id"])
    return None


def _deviation_cause(entry: HistoryEntry) -> dict[str, Any]:
    """The fields of a `ProtocolDeviation` that name the history entry recording it."""
    return {
        "client_id": entry.client_id,
        "seq": entry.seq,
        "cause_event_id": entry.event_id,
        "cause_event_type": entry.type,
        "occurred_at": entry.occurred_at,
        "recorded_at": entry.recorded_at,
        "pathway_version": entry.pathway_version,
    }


def _deviation_message(entry: HistoryEntry, outcome: dict[str, Any]) -> Message:
    event = orjson.loads(entry.event)
    session = event.get("data", {}).get("session_id")
    return Message(
        DEVIATIONS,
        entry.client_id,
        f"{entry.client_id}:{entry.seq}:deviation",
        _payload(
            ProtocolDeviation(
                status="recorded",
                event_id=entry.event_id,
                session_id=session if isinstance(session, str) else None,
                rules=_codes(outcome["deviations"]),
                previous_rules=[],
                reasons=outcome["deviations"],
                review_task_id=_review_task(outcome, entry.event_id),
                **_deviation_cause(entry),
            )
        ),
    )


def rejudged_status(was: list[str], now: list[str]) -> Literal["resolved", "revealed", "revised"]:
    """What a late fact did to an earlier dosing's deviation."""
    if not now:
        return "resolved"
    return "revealed" if not was else "revised"


def _rejudged_message(
    entry: HistoryEntry, outcome: dict[str, Any], item: dict[str, Any]
) -> Message:
    return Message(
        DEVIATIONS,
        entry.client_id,
        f"{entry.client_id}:{entry.seq}:deviation:{item['event_id']}",
        _payload(
            ProtocolDeviation(
                status=rejudged_status(item["was"], item["now"]),
                event_id=item["event_id"],
                session_id=item.get("session_id"),
                rules=list(item["now"]),
                previous_rules=list(item["was"]),
                reasons=[],
                review_task_id=_review_task(outcome, item["event_id"]),
                **_deviation_cause(entry),
            )
        ),
    )


def dead_letter(record: RejectedRecord) -> Message:
    return Message(
        DEAD_LETTERS,
        record.client_id or record.key_id,
        f"rejected:{record.key_source}:{record.key_id}",
        _payload(
            DeadLetter(
                id=record.event_id,
                source=record.source,
                subject=record.client_id,
                type=record.type,
                recorded_at=record.recorded_at,
                reasons=orjson.loads(record.reasons),
                original=record.original,
            )
        ),
    )


# CloudEvents `type` of each outgoing message, by outbox topic.
CLOUDEVENT_TYPES = {
    STATE_CHANGES: "kapflow.state_changed",
    TASKS: "kapflow.task_changed",
    DEAD_LETTERS: "kapflow.event_rejected",
    DEVIATIONS: "kapflow.protocol_deviation",
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

"""Recording each kind of outcome into a unit of work (SPEC §3).

- accepted or deviation: the next history entry (hash-chained), the new snapshot, the
  task changes, and an outbox row when something changed;
- parked: kept to be retried after the client's next change;
- rejected: a receipt and a dead letter (the rejected log and the `rejected` topic);
- an input that is not a CloudEvent, or that kapflow could not record: a dead letter keyed
  by the input's content fingerprint.

Logs carry ids, types and outcomes, never payloads.
"""

from __future__ import annotations

import logging

from events import CloudEvent, Reason, Rejection
from kapflow.service.digest import content_digest
from kapflow.service.originals import fingerprint, original_text
from kapflow.service.results import UNPARSEABLE_SOURCE, RawInput, compact_json
from kapflow.service.unit_of_work import UnitOfWork
from kapflow.store.base import HistoryEntry, OutboxRef, ParkedEvent, RejectedRecord, entry_hash
from workflow.engine import PARKED, REJECTED, Outcome
from workflow.tasks import iso

log = logging.getLogger("kapflow.ingest")


def record_outcome(uow: UnitOfWork, event: CloudEvent, outcome: Outcome, raw: RawInput) -> None:
    """Record what the engine decided about `event`; `raw` is the input as it arrived
    (its text is kept only if it is rejected)."""
    if outcome.recorded:
        record_history(uow, event, outcome)
    elif outcome.outcome == PARKED:
        record_parked(uow, event, outcome.reasons)
    else:
        record_rejected(uow, event, outcome.reasons, original_text(raw))
    if log.isEnabledFor(logging.INFO):  # the reasons are joined only for a log that is kept
        log.info(
            "event %s client=%s type=%s outcome=%s reasons=%s",
            event.id,
            event.subject,
            event.type,
            outcome.outcome,
            ",".join(r.code for r in outcome.reasons) or "-",
        )


def record_history(uow: UnitOfWork, event: CloudEvent, outcome: Outcome) -> None:
    """An accepted event or a deviation: the client's next history entry."""
    after = outcome.client
    entry = HistoryEntry(
        after.client_id,
        after.seq,
        event.source,
        event.id,
        event.type,
        iso(event.time),
        uow.recorded_at,
        outcome.pathway_version,
        outcome.from_state,
        outcome.to_state,
        event.model_dump_json(exclude_none=True),
        compact_json(outcome.record()),
        prev_hash=uow.clients[event.subject].last_hash,
        hash="",
    )
    entry.hash = entry_hash(entry)
    after.last_hash = entry.hash
    uow.writes.history.append(entry)
    uow.save_client(after)
    uow.receipt(event.source, event.id, event.subject, outcome.outcome, content_digest(event))
    for change in outcome.task_changes:
        uow.writes.tasks[change.task.id] = change.task
    if outcome.task_changes or outcome.from_state != outcome.to_state or outcome.reasons:
        uow.writes.outbox.append(
            OutboxRef("history", after.client_id, after.seq, None, None, uow.recorded_at)
        )


def record_parked(uow: UnitOfWork, event: CloudEvent, reasons: tuple[Reason, ...]) -> None:
    """An event that refers to a fact not heard of yet: kept, and counted on the client."""
    parked = ParkedEvent(
        event.source,
        event.id,
        event.subject,
        event.type,
        iso(event.time),
        uow.recorded_at,
        event.model_dump_json(exclude_none=True),
        compact_json([reason.as_dict() for reason in reasons]),
    )
    key = (event.source, event.id)
    uow.writes.parked_added[key] = parked
    uow.writes.parked_removed.discard(key)
    uow.parked(event.subject).append(parked)
    client = uow.clients[event.subject].copy()
    client.parked += 1
    uow.save_client(client)
    uow.receipt(event.source, event.id, event.subject, PARKED, content_digest(event))


def record_rejected(
    uow: UnitOfWork, event: CloudEvent, reasons: tuple[Reason, ...], original: str
) -> None:
    """A valid CloudEvent that cannot be a fact about this client."""
    uow.receipt(event.source, event.id, event.subject, REJECTED, content_digest(event))
    uow.dead_letter(
        RejectedRecord(
            event.source,
            event.id,
            event.source,
            event.id,
            event.subject,
            event.type,
            uow.recorded_at,
            compact_json([reason.as_dict() for reason in reasons]),
            original,
        )
    )


def record_unreadable(uow: UnitOfWork, rejection: Rejection, original: str) -> None:
    """An input that is not a CloudEvent kapflow can record (or that failed to record):
    dead-lettered once per content, whoever sends it again. `rejection` carries why, and
    what could be read of its identity."""
    record = RejectedRecord(
        UNPARSEABLE_SOURCE,
        fingerprint(original),
        rejection.source,
        rejection.id,
        rejection.subject,
        rejection.type,
        uow.recorded_at,
        compact_json([reason.as_dict() for reason in rejection.reasons]),
        original,
    )
    if uow.seen(UNPARSEABLE_SOURCE, record.key_id) is None:
        uow.receipt(UNPARSEABLE_SOURCE, record.key_id, None, REJECTED)
        uow.dead_letter(record)

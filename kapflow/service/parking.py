"""Early-arriving events (SPEC §3 "parked"): retried after each change of their client,
recorded as a deviation once the client's event time passes the parking window.

A parked fact is never dropped: it is applied when it becomes possible, rejected if it
turns out to contradict what happened, or recorded as it happened (`PREMATURE_EXPIRED`)
for a person to review.
"""

from __future__ import annotations

import logging
from datetime import datetime

from events import CloudEvent
from events.upcasting import read_recorded
from kapflow.service.recording import record_history, record_rejected
from kapflow.service.results import IngestResult, public_state
from kapflow.service.unit_of_work import UnitOfWork
from kapflow.store.base import ParkedEvent
from workflow.engine import PARKED, Outcome
from workflow.policy import CarePolicy
from workflow.releases import CURRENT_RELEASE

log = logging.getLogger("kapflow.ingest")


def _event_of(parked: ParkedEvent) -> CloudEvent:
    """A parked event as it was kept, read through the upcasters (events/upcasting.py). The
    parked log does not name the release that kept it: events wait days, not releases, so
    it is read as this release's shape (a field a newer version added is optional)."""
    return read_recorded(parked.event, CURRENT_RELEASE.version)


def revisit_parked(
    uow: UnitOfWork, policy: CarePolicy, client_id: str, trigger: CloudEvent, changed: bool
) -> None:
    """Retry a client's parked events after it changed; expire those past the window."""
    waiting = uow.parked(client_id)
    progressed = changed
    while progressed and waiting:
        # Earliest arrival first, and from the start again after every acceptance: an
        # event that just became possible may unblock one that arrived before it.
        progressed = False
        for parked in list(waiting):
            event = _event_of(parked)
            outcome = uow.record_fact(event, policy)
            if outcome.outcome == PARKED:
                continue
            unpark(uow, parked)
            _record_unparked(uow, event, outcome, parked)
            log.info(
                "event %s client=%s type=%s outcome=%s (was parked)",
                event.id,
                client_id,
                event.type,
                outcome.outcome,
            )
            if outcome.recorded:
                progressed = True
                break
    window = policy.parking_window
    for parked in list(waiting):
        occurred = datetime.fromisoformat(parked.occurred_at)
        if trigger.time - occurred > window:
            unpark(uow, parked)
            record_expired(uow, policy, parked)


def record_expired(uow: UnitOfWork, policy: CarePolicy, parked: ParkedEvent) -> IngestResult:
    """A parked fact still premature after the window is recorded as it happened — a
    deviation for a person to review — never dropped (SPEC §3). Unpark it first."""
    event = _event_of(parked)
    outcome = uow.record_fact(event, policy, expired=True)
    _record_unparked(uow, event, outcome, parked)
    log.info(
        "event %s client=%s type=%s outcome=%s reasons=%s (parking window ended)",
        parked.event_id,
        parked.client_id,
        event.type,
        outcome.outcome,
        ",".join(r.code for r in outcome.reasons) or "-",
    )
    state = public_state(uow.clients[parked.client_id].state)
    return IngestResult(
        event.id, event.subject, event.type, outcome.outcome, outcome.reasons, state
    )


def unpark(uow: UnitOfWork, parked: ParkedEvent) -> None:
    """Take `parked` off its client's waiting list (it is being recorded now)."""
    uow.parked(parked.client_id).remove(parked)
    key = (parked.source, parked.event_id)
    if uow.writes.parked_added.pop(key, None) is None:
        uow.writes.parked_removed.add(key)
    client = uow.clients[parked.client_id].copy()
    client.parked = max(client.parked - 1, 0)
    uow.save_client(client)


def still_parked(uow: UnitOfWork, candidate: ParkedEvent) -> ParkedEvent | None:
    """`candidate` as this unit of work sees it, or None if it was applied meanwhile."""
    key = (candidate.source, candidate.event_id)
    return next((p for p in uow.parked(candidate.client_id) if (p.source, p.event_id) == key), None)


def _record_unparked(
    uow: UnitOfWork, event: CloudEvent, outcome: Outcome, parked: ParkedEvent
) -> None:
    if outcome.recorded:
        outcome.client.parked = uow.clients[event.subject].parked
        record_history(uow, event, outcome)
    else:
        record_rejected(uow, event, outcome.reasons, parked.event)

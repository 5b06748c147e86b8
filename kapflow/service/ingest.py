"""The service layer's write side: the commands that record what happened.

Shared by every runtime: `kapflow ingest`, the HTTP service and the Kafka worker all call
`IngestService`. Each command is one handler over one unit of work
(service/unit_of_work.py):

- `record_events`: a batch of inputs → one outcome each, in order. A batch is atomic:
  either every outcome in it is recorded (history, snapshots, tasks, rejections, parked
  events and outbox rows together) or none is. Retrying a batch is safe: every event is
  idempotent on (`source`, `id`).
- `expire_parked_events`: parked facts still premature a window after they happened are
  recorded as deviations (service/parking.py).

How each kind of outcome is written is service/recording.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from events import CloudEvent, Reason, Rejection, parse_event, parse_event_object
from kapflow.service.facts import DerivationCache
from kapflow.service.identity import answer_if_known
from kapflow.service.originals import original_text
from kapflow.service.parking import record_expired, revisit_parked, still_parked, unpark
from kapflow.service.recording import record_outcome, record_unreadable
from kapflow.service.results import (
    UNPARSEABLE_SOURCE,
    IngestResult,
    RawInput,
    compact_json,
    public_state,
)
from kapflow.service.unit_of_work import Clock, UnitOfWork, unit_of_work, utc_now
from kapflow.store.base import EventStore, ParkedEvent
from workflow.engine import PARKED, REJECTED
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.tasks import iso
from workflow.timers import CLOCK_SOURCE

__all__ = [
    "UNPARSEABLE_SOURCE",
    "Clock",
    "IngestResult",
    "IngestService",
    "RawInput",
    "compact_json",
    "utc_now",
]


log = logging.getLogger("kapflow.ingest")


def validate(raw: RawInput) -> CloudEvent | Rejection:
    if isinstance(raw, CloudEvent):
        return raw
    if isinstance(raw, str | bytes):
        return parse_event(raw)
    return parse_event_object(raw)


# SPEC §3: an event dated beyond a small clock skew in the future is not a fact yet.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def not_yet_a_fact(
    event: CloudEvent | Rejection, now: datetime, skew: timedelta = MAX_CLOCK_SKEW
) -> CloudEvent | Rejection:
    """`event`, or its rejection as `TIME_IN_FUTURE` when it is dated after `now` + `skew`.

    Kept out of the receipts (like an input that is not a CloudEvent): once its time has
    come, the same event sent again is recorded. kapflow's own deadlines are exempt: the
    clock dates them at the due time it was asked to fire (`kapflow tick --now T`).
    """
    if isinstance(event, Rejection) or event.source == CLOCK_SOURCE or event.time <= now + skew:
        return event
    reason = Reason(
        "TIME_IN_FUTURE",
        f"dated more than {int(skew.total_seconds())} s after kapflow's clock: not a fact yet",
        "time",
    )
    return Rejection((reason,), event.id, event.source, event.subject, event.type)


# Handlers: one per command, each over a unit of work ----------------------------------------
def record_events(
    uow: UnitOfWork,
    policy: CarePolicy,
    inputs: list[RawInput],
    parsed: list[CloudEvent | Rejection],
) -> list[IngestResult]:
    """Apply each input (`parsed`: each `validate`d) through the engine, in order, and
    record its outcome."""
    uow.prefetch([event for event in parsed if isinstance(event, CloudEvent)])
    return [_record_one(uow, policy, raw, event) for raw, event in zip(inputs, parsed, strict=True)]


def _record_one(
    uow: UnitOfWork, policy: CarePolicy, raw: RawInput, event: CloudEvent | Rejection
) -> IngestResult:
    if isinstance(event, Rejection):
        return _record_unparseable(uow, raw, event)
    known = answer_if_known(uow, event, raw)  # duplicate, or ID_REUSED (service/identity.py)
    if known is not None:
        return known
    client = uow.client(event.subject)
    outcome = uow.record_fact(event, policy)
    record_outcome(uow, event, outcome, raw)
    seq = outcome.client.seq if outcome.recorded else None
    if client.parked or outcome.outcome == PARKED:
        revisit_parked(uow, policy, event.subject, event, changed=outcome.recorded)
    return IngestResult(
        event.id,
        event.subject,
        event.type,
        outcome.outcome,
        outcome.reasons,
        public_state(uow.clients[event.subject].state),
        seq,
    )


def _record_unparseable(uow: UnitOfWork, raw: RawInput, rejection: Rejection) -> IngestResult:
    record_unreadable(uow, rejection, original_text(raw))
    _log_rejection(rejection)
    return IngestResult(
        rejection.id, rejection.subject, rejection.type, REJECTED, rejection.reasons, None
    )


def _log_rejection(rejection: Rejection) -> None:
    log.info(
        "event %s client=%s type=%s outcome=rejected reasons=%s",
        rejection.id or "-",
        rejection.subject or "-",
        rejection.type or "-",
        ",".join(r.code for r in rejection.reasons),
    )


def expire_parked_events(
    uow: UnitOfWork, policy: CarePolicy, stale: list[ParkedEvent]
) -> list[IngestResult]:
    """Record each of `stale` still parked in this unit of work as it happened."""
    uow.load_clients(sorted({p.client_id for p in stale}))
    results = []
    for candidate in stale:
        current = still_parked(uow, candidate)
        if current is None:
            continue  # applied or rejected meanwhile
        unpark(uow, current)
        results.append(record_expired(uow, policy, current))
    return results


class IngestService:
    """The service layer's commands over one store: applies inputs through the engine and
    records every outcome."""

    def __init__(
        self,
        store: EventStore,
        policy: CarePolicy = DEFAULT_POLICY,
        clock: Clock = utc_now,
        batch_size: int = 500,
        max_clock_skew: timedelta = MAX_CLOCK_SKEW,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.batch_size = batch_size
        self.max_clock_skew = max_clock_skew
        # Recently changed clients' facts, so a late fact is folded in from its own place.
        self.derivations = DerivationCache()

    def ingest_batch(self, items: Iterable[RawInput]) -> list[IngestResult]:
        """Process inputs in order in ONE transaction; results in the same order."""
        inputs = list(items)
        now = self.clock()  # read once: the batch's record time and its "not yet" bound
        # Before the transaction: keep it short.
        parsed = [not_yet_a_fact(validate(item), now, self.max_clock_skew) for item in inputs]
        with unit_of_work(self.store, lambda: now, self.derivations) as uow:
            return record_events(uow, self.policy, inputs, parsed)

    def expire_parked(
        self, now: datetime, owns: Callable[[str], bool] | None = None
    ) -> list[IngestResult]:
        """Record, as deviations, parked facts still premature a window after they happened."""
        limit = iso(now - self.policy.parking_window)
        stale = [
            p
            for p in self.store.parked_events()
            if p.occurred_at < limit and (owns is None or owns(p.client_id))
        ]
        if not stale:
            return []
        with unit_of_work(self.store, self.clock, self.derivations) as uow:
            return expire_parked_events(uow, self.policy, stale)

    def ingest_stream(self, items: Iterable[RawInput]) -> Iterator[IngestResult]:
        """Process a stream of any length in bounded memory, one transaction per batch."""
        pending: list[RawInput] = []
        for item in items:
            pending.append(item)
            if len(pending) >= self.batch_size:
                yield from self.ingest_batch(pending)
                pending = []
        if pending:
            yield from self.ingest_batch(pending)

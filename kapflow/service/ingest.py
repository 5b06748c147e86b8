"""The service layer's write side: one batch of inputs → outcomes, in one transaction.

Shared by every runtime: `kapflow ingest`, the HTTP service and the Kafka worker all call
`IngestService.ingest_batch`. A batch is atomic: either every outcome in it is recorded
(history, snapshots, tasks, rejections, parked events and outbox rows together) or none is.
Retrying a batch is safe: every event is idempotent on (`source`, `id`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from events import CloudEvent, Reason, Rejection, parse_event, parse_event_object
from kapflow.store.base import (
    BatchWrites,
    EventStore,
    HistoryEntry,
    OutboxRef,
    ParkedEvent,
    Receipt,
    RejectedRecord,
    StoreTransaction,
    entry_hash,
)
from workflow.client import NEW, ClientSnapshot
from workflow.engine import ACCEPTED, DUPLICATE, PARKED, REJECTED, Outcome, apply
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.states.pathway import PATHWAY_VERSION
from workflow.tasks import iso

log = logging.getLogger("kapflow.ingest")

# Key of an input that is not a valid CloudEvent: its content fingerprint.
UNPARSEABLE_SOURCE = "urn:kapflow:unparseable"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)  # a value: never mutated after construction
class IngestResult:
    """The per-event report (SPEC §7): `{"id","subject","type","outcome","reasons","state"}`."""

    id: str | None
    subject: str | None
    type: str | None
    outcome: str
    reasons: tuple[Reason, ...]
    state: str | None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "type": self.type,
            "outcome": self.outcome,
            "reasons": [reason.as_dict() for reason in self.reasons],
            "state": self.state,
        }


RawInput = str | bytes | dict[str, Any] | CloudEvent


def compact_json(value: Any) -> str:
    """Compact JSON, deterministic for the same value (history and verify depend on it)."""
    return orjson.dumps(value).decode()


def _original_text(raw: RawInput) -> str:
    """The input as text; line endings of a JSON-lines file are not part of the message."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace").strip()
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, CloudEvent):
        return raw.model_dump_json(exclude_none=True)
    return compact_json(raw)


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _public_state(state: str | None) -> str | None:
    return None if state in (None, NEW) else state


class _Batch:
    """The working set of one transaction: caches reads, accumulates writes."""

    def __init__(self, tx: StoreTransaction, policy: CarePolicy, recorded_at: str) -> None:
        self.tx = tx
        self.policy = policy
        self.recorded_at = recorded_at
        self.writes = BatchWrites()
        self.clients: dict[str, ClientSnapshot] = {}
        self.known: dict[tuple[str, str], str] = {}
        self.prefetched_keys: set[tuple[str, str]] = set()
        self.parked_cache: dict[str, list[ParkedEvent]] = {}

    # Reads through the batch ------------------------------------------------------------
    def prefetch(self, events: list[CloudEvent]) -> None:
        """Two queries for the whole batch instead of two per event.

        Clients first: on PostgreSQL that takes the batch's client locks, so the receipts
        read next cannot be raced by another worker recording the same events.
        """
        self.clients = self.tx.clients([event.subject for event in events])
        self.prefetched_keys = {event.key for event in events}
        self.known = self.tx.receipts(list(self.prefetched_keys))

    def seen(self, source: str, event_id: str) -> str | None:
        receipt = self.writes.receipts.get((source, event_id))
        if receipt is not None:
            return receipt.outcome
        known = self.known.get((source, event_id))
        if known is None and (source, event_id) not in self.prefetched_keys:
            known = self.tx.receipts([(source, event_id)]).get((source, event_id))
        return known

    def client(self, client_id: str) -> ClientSnapshot:
        snapshot = self.clients.get(client_id)
        if snapshot is None:
            snapshot = self.tx.clients([client_id]).get(client_id) or ClientSnapshot(client_id)
            self.clients[client_id] = snapshot
        return snapshot

    def parked(self, client_id: str) -> list[ParkedEvent]:
        if client_id not in self.parked_cache:
            self.parked_cache[client_id] = self.tx.parked(client_id)
        return self.parked_cache[client_id]

    # The one entry point -------------------------------------------------------------------
    def process(self, raw: RawInput, event: CloudEvent | Rejection) -> IngestResult:
        if isinstance(event, Rejection):
            return self._reject_unparseable(raw, event)
        prior = self.seen(event.source, event.id)
        if prior is not None:
            client = self.clients.get(event.subject)
            return IngestResult(
                event.id,
                event.subject,
                event.type,
                DUPLICATE,
                (Reason("DUPLICATE", f"already recorded as {prior}"),),
                _public_state(client.state if client else None),
            )
        client = self.client(event.subject)
        outcome = apply(client, event, self.policy)
        result = self._record(event, outcome, original=raw)
        if client.parked or outcome.outcome == PARKED:
            self._revisit_parked(event.subject, event, changed=outcome.accepted)
        final = self.clients[event.subject]
        return IngestResult(
            result.id,
            result.subject,
            result.type,
            result.outcome,
            result.reasons,
            _public_state(final.state),
            result.seq,
        )

    @staticmethod
    def validate(raw: RawInput) -> CloudEvent | Rejection:
        if isinstance(raw, CloudEvent):
            return raw
        if isinstance(raw, str | bytes):
            return parse_event(raw)
        return parse_event_object(raw)

    # Outcomes ------------------------------------------------------------------------------
    def _record(self, event: CloudEvent, outcome: Outcome, original: RawInput) -> IngestResult:
        if outcome.outcome == ACCEPTED:
            self._append(event, outcome)
        elif outcome.outcome == PARKED:
            self._park(event, outcome.reasons)
        else:
            self._reject(event, outcome.reasons, _original_text(original))
        state = _public_state(self.clients[event.subject].state)
        log.info(
            "event %s client=%s type=%s outcome=%s reasons=%s",
            event.id,
            event.subject,
            event.type,
            outcome.outcome,
            ",".join(r.code for r in outcome.reasons) or "-",
        )
        return IngestResult(
            event.id,
            event.subject,
            event.type,
            outcome.outcome,
            outcome.reasons,
            state,
            outcome.client.seq if outcome.accepted else None,
        )

    def _append(self, event: CloudEvent, outcome: Outcome) -> None:
        after = outcome.client
        event_json = event.model_dump_json(exclude_none=True)
        outcome_json = compact_json(outcome.record())
        occurred_at = iso(event.time)
        entry = HistoryEntry(
            after.client_id,
            after.seq,
            event.source,
            event.id,
            event.type,
            occurred_at,
            self.recorded_at,
            PATHWAY_VERSION,
            outcome.from_state,
            outcome.to_state,
            event_json,
            outcome_json,
            prev_hash=self.clients[event.subject].last_hash,
            hash="",
        )
        entry.hash = entry_hash(entry)
        after.last_hash = entry.hash
        self.writes.history.append(entry)
        self.clients[event.subject] = after
        self.writes.clients[event.subject] = after
        self._receipt(event, ACCEPTED)
        for change in outcome.task_changes:
            self.writes.tasks[change.task.id] = change.task
        if outcome.task_changes or outcome.from_state != outcome.to_state:
            self.writes.outbox.append(
                OutboxRef("history", after.client_id, after.seq, None, None, self.recorded_at)
            )

    def _receipt(self, event: CloudEvent, outcome: str) -> None:
        self.writes.receipts[(event.source, event.id)] = Receipt(
            event.source, event.id, event.subject, outcome, self.recorded_at
        )

    def _park(self, event: CloudEvent, reasons: tuple[Reason, ...]) -> None:
        parked = ParkedEvent(
            event.source,
            event.id,
            event.subject,
            event.type,
            iso(event.time),
            self.recorded_at,
            event.model_dump_json(exclude_none=True),
            compact_json([reason.as_dict() for reason in reasons]),
        )
        key = (event.source, event.id)
        self.writes.parked_added[key] = parked
        self.writes.parked_removed.discard(key)
        self.parked(event.subject).append(parked)
        client = self.clients[event.subject].copy()
        client.parked += 1
        self.clients[event.subject] = client
        self.writes.clients[event.subject] = client
        self._receipt(event, PARKED)

    def _reject(self, event: CloudEvent, reasons: tuple[Reason, ...], original: str) -> None:
        self._receipt(event, REJECTED)
        self._dead_letter(
            RejectedRecord(
                event.source,
                event.id,
                event.source,
                event.id,
                event.subject,
                event.type,
                self.recorded_at,
                compact_json([reason.as_dict() for reason in reasons]),
                original,
            )
        )

    def _reject_unparseable(self, raw: RawInput, rejection: Rejection) -> IngestResult:
        original = _original_text(raw)
        record = RejectedRecord(
            UNPARSEABLE_SOURCE,
            _fingerprint(original),
            rejection.source,
            rejection.id,
            rejection.subject,
            rejection.type,
            self.recorded_at,
            compact_json([reason.as_dict() for reason in rejection.reasons]),
            original,
        )
        if self.seen(UNPARSEABLE_SOURCE, record.key_id) is None:
            self.writes.receipts[(UNPARSEABLE_SOURCE, record.key_id)] = Receipt(
                UNPARSEABLE_SOURCE, record.key_id, None, REJECTED, self.recorded_at
            )
            self._dead_letter(record)
        log.info(
            "event %s client=%s type=%s outcome=rejected reasons=%s",
            rejection.id or "-",
            rejection.subject or "-",
            rejection.type or "-",
            ",".join(r.code for r in rejection.reasons),
        )
        return IngestResult(
            rejection.id, rejection.subject, rejection.type, REJECTED, rejection.reasons, None
        )

    def _dead_letter(self, record: RejectedRecord) -> None:
        self.writes.rejections.append(record)
        self.writes.outbox.append(
            OutboxRef(
                "rejection",
                record.client_id,
                None,
                record.key_source,
                record.key_id,
                self.recorded_at,
            )
        )

    # Early-arriving events (SPEC §3 "parked") -------------------------------------------
    def _revisit_parked(self, client_id: str, trigger: CloudEvent, changed: bool) -> None:
        """Retry a client's parked events after it changed; expire those past the window."""
        waiting = self.parked(client_id)
        progressed = changed
        while progressed and waiting:
            # Earliest arrival first, and from the start again after every acceptance: an
            # event that just became possible may unblock one that arrived before it.
            progressed = False
            for parked in list(waiting):
                event = parse_event(parked.event)
                assert isinstance(event, CloudEvent), "a parked event was valid when parked"
                outcome = apply(self.clients[client_id], event, self.policy)
                if outcome.outcome == PARKED:
                    continue
                self._unpark(waiting, parked)
                if outcome.accepted:
                    outcome.client.parked = self.clients[client_id].parked
                    self._append(event, outcome)
                else:
                    self._reject(event, outcome.reasons, parked.event)
                log.info(
                    "event %s client=%s type=%s outcome=%s (was parked)",
                    event.id,
                    client_id,
                    event.type,
                    outcome.outcome,
                )
                if outcome.accepted:
                    progressed = True
                    break
        window = self.policy.parking_window
        for parked in list(waiting):
            occurred = datetime.fromisoformat(parked.occurred_at)
            if trigger.time - occurred > window:
                self._unpark(waiting, parked)
                self._reject_parked(parked, _expired(self.policy))

    def _unpark(self, waiting: list[ParkedEvent], parked: ParkedEvent) -> None:
        waiting.remove(parked)
        key = (parked.source, parked.event_id)
        if self.writes.parked_added.pop(key, None) is None:
            self.writes.parked_removed.add(key)
        client = self.clients[parked.client_id].copy()
        client.parked = max(client.parked - 1, 0)
        self.clients[parked.client_id] = client
        self.writes.clients[parked.client_id] = client

    def _reject_parked(self, parked: ParkedEvent, reason: Reason) -> IngestResult:
        event = parse_event(parked.event)
        assert isinstance(event, CloudEvent)
        reasons = (*_reasons_from_json(parked.reasons), reason)
        self._reject(event, reasons, parked.event)
        log.info(
            "event %s client=%s outcome=rejected reasons=PREMATURE_EXPIRED",
            parked.event_id,
            parked.client_id,
        )
        state = _public_state(self.clients[parked.client_id].state)
        return IngestResult(event.id, event.subject, event.type, REJECTED, reasons, state)


def _expired(policy: CarePolicy) -> Reason:
    hours = int(policy.parking_window.total_seconds() // 3600)
    return Reason("PREMATURE_EXPIRED", f"still premature {hours} h after it happened")


def _reasons_from_json(text: str) -> tuple[Reason, ...]:
    return tuple(Reason(r["code"], r["message"], r.get("field")) for r in json.loads(text))


class IngestService:
    """Applies inputs through the engine and records every outcome in the store."""

    def __init__(
        self,
        store: EventStore,
        policy: CarePolicy = DEFAULT_POLICY,
        clock: Clock = utc_now,
        batch_size: int = 500,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.batch_size = batch_size

    def ingest_batch(self, items: Iterable[RawInput]) -> list[IngestResult]:
        """Process inputs in order in ONE transaction; results in the same order."""
        inputs = list(items)
        parsed = [_Batch.validate(item) for item in inputs]
        with self.store.transaction() as tx:
            batch = _Batch(tx, self.policy, iso(self.clock()))
            batch.prefetch([event for event in parsed if isinstance(event, CloudEvent)])
            results = [batch.process(raw, event) for raw, event in zip(inputs, parsed, strict=True)]
            tx.write(batch.writes)
        return results

    def expire_parked(
        self, now: datetime, owns: Callable[[str], bool] | None = None
    ) -> list[IngestResult]:
        """Reject parked events still premature a parking window after they happened."""
        limit = iso(now - self.policy.parking_window)
        stale = [
            p
            for p in self.store.parked_events()
            if p.occurred_at < limit and (owns is None or owns(p.client_id))
        ]
        if not stale:
            return []
        results = []
        with self.store.transaction() as tx:
            batch = _Batch(tx, self.policy, iso(self.clock()))
            batch.clients = tx.clients(sorted({p.client_id for p in stale}))
            for candidate in stale:
                waiting = batch.parked(candidate.client_id)
                current = next(
                    (
                        p
                        for p in waiting
                        if (p.source, p.event_id) == (candidate.source, candidate.event_id)
                    ),
                    None,
                )
                if current is None:
                    continue  # applied or rejected meanwhile
                batch._unpark(waiting, current)
                results.append(batch._reject_parked(current, _expired(self.policy)))
            tx.write(batch.writes)
        return results

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

"""The unit of work of one command: reads through its transaction, writes accumulated,
committed together (Cosmic Python's unit of work).

Every command of the service layer (record a batch of events, expire parked events,
dead-letter an input that cannot be recorded) runs over one of these, so "the history, the
new snapshots, the tasks, the parked events, the rejections and the outbox rows" are one
transaction: all recorded, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from events import CloudEvent
from kapflow.service.facts import DerivationCache, rebuild
from kapflow.store.base import (
    BatchWrites,
    EventStore,
    HistoryEntry,
    OutboxRef,
    ParkedEvent,
    Receipt,
    RejectedRecord,
    StoreTransaction,
)
from workflow.client import ClientSnapshot
from workflow.derivation import Derivation, fact_key, is_late, record_fact
from workflow.engine import Outcome
from workflow.policy import CarePolicy
from workflow.releases import CURRENT_RELEASE
from workflow.tasks import iso

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, read in one place: when kapflow records something (`recorded_at`),
    and the default "now" of read-side questions and operators' commands. The engine never
    reads it (SPEC §6): time reaches the rules only as events."""
    return datetime.now(UTC)


class UnitOfWork:
    """One transaction's working set: cached reads of clients, receipts and parked events,
    and the writes that commit with it (`writes`)."""

    def __init__(
        self,
        tx: StoreTransaction,
        recorded_at: str,
        derivations: DerivationCache | None = None,
    ) -> None:
        self.tx = tx
        self.recorded_at = recorded_at
        self.derivations = derivations if derivations is not None else DerivationCache()
        self.writes = BatchWrites()
        self.clients: dict[str, ClientSnapshot] = {}
        self._known: dict[tuple[str, str], Receipt] = {}
        self._prefetched_keys: set[tuple[str, str]] = set()
        self._read_clients: set[str] = set()  # read already: absent ones are new clients
        self._parked: dict[str, list[ParkedEvent]] = {}

    # Reads ---------------------------------------------------------------------------------
    def prefetch(self, events: list[CloudEvent]) -> None:
        """Two queries for the whole batch instead of two per event.

        Clients first: on PostgreSQL that takes the batch's client locks, so the receipts
        read next cannot be raced by another worker recording the same events.
        """
        subjects = [event.subject for event in events]
        self.clients = self.tx.clients(subjects)
        self._read_clients = set(subjects)
        self._prefetched_keys = {event.key for event in events}
        self._known = self.tx.receipts(list(self._prefetched_keys))

    def load_clients(self, client_ids: list[str]) -> None:
        """Read (and on PostgreSQL, lock) these clients in one query."""
        self.clients = self.tx.clients(client_ids)
        self._read_clients = set(client_ids)

    def seen(self, source: str, event_id: str) -> str | None:
        """The outcome already recorded for (`source`, `id`), in this unit or before it."""
        receipt = self.receipt_for(source, event_id)
        return None if receipt is None else receipt.outcome

    def receipt_for(self, source: str, event_id: str) -> Receipt | None:
        """The receipt of (`source`, `id`), written in this unit or before it."""
        receipt = self.writes.receipts.get((source, event_id))
        if receipt is not None:
            return receipt
        known = self._known.get((source, event_id))
        if known is None and (source, event_id) not in self._prefetched_keys:
            known = self.tx.receipts([(source, event_id)]).get((source, event_id))
        return known

    def client(self, client_id: str) -> ClientSnapshot:
        """The client as this unit last left it (a new client if never heard of)."""
        snapshot = self.clients.get(client_id)
        if snapshot is None:
            if client_id not in self._read_clients:
                snapshot = self.tx.clients([client_id]).get(client_id)
            snapshot = snapshot or ClientSnapshot(client_id)
            self.clients[client_id] = snapshot
        return snapshot

    def parked(self, client_id: str) -> list[ParkedEvent]:
        """The client's parked events, earliest arrival first (kept current by this unit)."""
        if client_id not in self._parked:
            self._parked[client_id] = self.tx.parked(client_id)
        return self._parked[client_id]

    # The engine, over the client's facts -----------------------------------------------------
    def record_fact(self, event: CloudEvent, policy: CarePolicy, expired: bool = False) -> Outcome:
        """What `event` does to its client given every fact recorded about it, in event-time
        order (workflow/derivation.py). A late fact reads the client's history once; the
        derivation is then kept (`derivations`) for the facts that follow."""
        current = self.client(event.subject)
        if not CURRENT_RELEASE.derives_from_facts:
            return record_fact(None, current, event, policy, expired=expired)
        derivation = self.derivations.get(current)
        if is_late(current, event):
            if derivation is None or not derivation.covers(fact_key(event)):
                history = self._history(event.subject)
                derivation = rebuild(event.subject, history, policy).derivation
                self.derivations.put(event.subject, derivation)
        elif derivation is None:
            # Kept from here on, so that a fact arriving late after this one (the usual
            # case: a few messages late) is folded in without reading the whole history.
            derivation = Derivation(current)
            self.derivations.put(event.subject, derivation)
        return record_fact(derivation, current, event, policy, expired=expired)

    def _history(self, client_id: str) -> list[HistoryEntry]:
        """The client's history, with the entries this unit has recorded and not committed."""
        pending = [entry for entry in self.writes.history if entry.client_id == client_id]
        return self.tx.history(client_id) + pending

    # Writes --------------------------------------------------------------------------------
    def save_client(self, snapshot: ClientSnapshot) -> None:
        self.clients[snapshot.client_id] = snapshot
        self.writes.clients[snapshot.client_id] = snapshot

    def receipt(
        self,
        source: str,
        event_id: str,
        subject: str | None,
        outcome: str,
        digest: str | None = None,
    ) -> None:
        """Record the outcome of (`source`, `id`); `digest` is its content's
        (service/digest.py), so a reuse of the id with other content is told apart."""
        self.writes.receipts[(source, event_id)] = Receipt(
            source, event_id, subject, outcome, self.recorded_at, digest
        )

    def dead_letter(self, record: RejectedRecord) -> None:
        """Into the rejected log, and onto the outbox's `rejected` topic."""
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

    def commit(self) -> None:
        self.tx.write(self.writes)


@contextmanager
def unit_of_work(
    store: EventStore, clock: Clock, derivations: DerivationCache | None = None
) -> Iterator[UnitOfWork]:
    """A unit of work in a new transaction; its writes commit when the block ends without
    an error, and none of them do otherwise."""
    with store.transaction() as tx:
        uow = UnitOfWork(tx, iso(clock()), derivations)
        yield uow
        uow.commit()

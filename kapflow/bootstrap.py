"""The one place a runtime is built from settings (Cosmic Python's `bootstrap.py`).

`kapflow <command>`, `kapflow serve` and `kapflow worker` each call `bootstrap` with their
database URL and get the same parts: the store (its adapter chosen from the URL,
store/database.py), the care policy, the service layer's commands over them
(`IngestService`), and, where the runtime needs them, the access log, the single writer
(serve) and the outbox relay's lease. The clock is built here too, so all three tick the
same `CareClock`; only how its events are recorded differs by runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kapflow.publishers.lease import Lease, lease_for
from kapflow.service.clock import CareClock, Expire, Owns, Record
from kapflow.service.ingest import IngestResult, IngestService
from kapflow.service.writer import SingleWriter
from kapflow.store import EventStore, open_store
from kapflow.store.access_log import AccessLog, open_access_log
from workflow.policy import DEFAULT_POLICY, CarePolicy


@dataclass(slots=True)
class Runtime:
    """What a runtime works with; `close` releases it all."""

    db: str
    store: EventStore
    service: IngestService
    access_log: AccessLog | None = None
    writer: SingleWriter | None = None  # serve: every write goes through it

    @property
    def policy(self) -> CarePolicy:
        return self.service.policy

    def clock(self, record: Record | None = None, expire: Expire | None = None) -> CareClock:
        """The care clock, recording through the single writer when there is one, else
        through the service; a runtime with its own way to record events (the worker's
        events topic) passes `record` (and `expire`)."""
        if self.writer is None:
            default = CareClock.over(self.service)
            return CareClock(
                self.store, self.policy, record or default.record, expire or default.expire
            )
        writer = self.writer

        def through_writer(events: list[dict[str, Any]]) -> list[IngestResult]:
            return writer.submit(events).result()

        def expire_through_writer(now: datetime, owns: Owns | None) -> list[IngestResult]:
            return writer.execute(lambda service: service.expire_parked(now, owns)).result()

        return CareClock(
            self.store, self.policy, record or through_writer, expire or expire_through_writer
        )

    def relay_lease(self) -> Lease:
        """The lease that lets one outbox relay at a time publish (publishers/lease.py)."""
        return lease_for(self.db)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.access_log is not None:
            self.access_log.close()
        self.store.close()


def bootstrap(
    db: str,
    *,
    policy: CarePolicy = DEFAULT_POLICY,
    batch_size: int = 500,
    access_log: bool = False,
    writer_queue_events: int | None = None,
    read_only: bool = False,
) -> Runtime:
    """Open the runtime for the database at `db`.

    `access_log`: also open the access log (serve records reads; verify checks its chain).
    `writer_queue_events`: also build the single writer (serve), bounded to that many queued
    events; start it with `runtime.writer.start()`.
    `read_only`: the command only reads, so opening the store never changes its
    encryption mode or key check (store/codec.py `StoreAccess`).
    """
    store = open_store(db, policy, access="read" if read_only else "write")
    try:
        log = open_access_log(db) if access_log else None
    except Exception:
        store.close()
        raise
    service = IngestService(store, policy, batch_size=batch_size)
    writer = (
        SingleWriter(service, max_queue_events=writer_queue_events)
        if writer_queue_events is not None
        else None
    )
    return Runtime(db, store, service, log, writer)

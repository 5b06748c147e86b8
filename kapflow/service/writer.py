"""The single writer: one thread owns the IngestService; requests share transactions.

Why one writer: events for the same client must be applied in arrival order and never
interleaved, whichever HTTP connection (or Kafka partition) they came from. A single thread
taking requests from one FIFO queue gives that by construction, with no per-client locks.

Why group commit: a transaction's cost is dominated by its commit (an fsync with SQLite's
`synchronous=FULL`), not by the events in it. While the writer commits one group, new
requests queue up; the next turn drains the queue into ONE `ingest_batch` call, so many
small requests share one transaction and one fsync, and each request gets its own results
back, in order. Nothing waits for a batch to fill: an idle writer takes a lone request at
once, so latency at low load is one transaction.

A request is atomic: its events are never split across transactions. If a shared
transaction fails, each request in the group is retried alone, so one poison request
(or a database hiccup) fails only the requests it touched.

Every other write goes through it too: `execute` runs a command of the service layer
(expiring parked events, say) in the writer thread, alone in its turn, so it is ordered
with the events and its commit reaches the same listeners (metrics, live streams);
`maintain` runs upkeep that records nothing (pruning published outbox rows) the same way,
so it never competes with the writer for the database.

Reusable by any runtime: `submit` returns a `concurrent.futures.Future`; `publish` awaits it
from asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kapflow.service.ingest import IngestResult, IngestService, RawInput
from kapflow.service.isolation import isolate_failure
from kapflow.store.base import EventStore

log = logging.getLogger("kapflow.writer")


Command = Callable[[IngestService], list[IngestResult]]
T = TypeVar("T")


@dataclass(slots=True)
class _Request:
    items: Sequence[RawInput]
    future: Future[Any]
    enqueued: float
    # Instead of items: a command run alone in its turn; upkeep when `records` is False.
    command: Callable[[IngestService], Any] | None = None
    records: bool = True


@dataclass(frozen=True, slots=True)
class Commit:
    """What one committed transaction did, for listeners (metrics, live streams)."""

    requests: int
    results: tuple[IngestResult, ...]
    seconds: float  # the ingest_batch call: validation, engine and commit
    waits: tuple[float, ...]  # per request: from submit to committed


@dataclass(slots=True)
class WriterStats:
    requests: int = 0
    events: int = 0
    transactions: int = 0
    failed_transactions: int = 0
    largest_group: int = 0


CommitListener = Callable[[Commit], None]


@dataclass(slots=True)
class _Queue:
    pending: deque[_Request] = field(default_factory=deque)
    events: int = 0


class SingleWriter:
    """Applies submitted batches of raw events through one IngestService, in FIFO order.

    `max_group_events` caps the events of one transaction (a single larger request still
    goes through alone: requests are never split). `max_queue_events` bounds the backlog:
    beyond it `submit` raises `WriterOverloaded` so callers can shed load (HTTP 503)
    instead of queueing without limit.
    """

    def __init__(
        self,
        service: IngestService,
        *,
        max_group_events: int = 5000,
        max_queue_events: int = 100_000,
        name: str = "kapflow-writer",
    ) -> None:
        self.service = service
        self.max_group_events = max_group_events
        self.max_queue_events = max_queue_events
        self.stats = WriterStats()
        self._queue = _Queue()
        self._cond = threading.Condition()
        self._listeners: list[CommitListener] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # Lifecycle -------------------------------------------------------------------------------
    def start(self) -> SingleWriter:
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop. Requests submitted after this are refused."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def add_listener(self, listener: CommitListener) -> None:
        """Called in the writer thread after each commit; must be quick and never raise."""
        self._listeners.append(listener)

    # Submitting ------------------------------------------------------------------------------
    def submit(self, items: Sequence[RawInput]) -> Future[list[IngestResult]]:
        future: Future[list[IngestResult]] = Future()
        if not items:
            future.set_result([])
            return future
        with self._cond:
            if self._closing or not self._thread.is_alive():
                raise WriterClosed("the writer is not running")
            if self._queue.events + len(items) > self.max_queue_events and self._queue.pending:
                raise WriterOverloaded(f"{self._queue.events} events already queued")
            self._queue.pending.append(_Request(items, future, time.perf_counter()))
            self._queue.events += len(items)
            self._cond.notify()
        return future

    def execute(self, command: Command) -> Future[list[IngestResult]]:
        """Run `command` over the service in the writer thread, in turn with every batch."""
        return self._enqueue(_Request((), Future(), time.perf_counter(), command))

    def maintain(self, upkeep: Callable[[EventStore], T]) -> Future[T]:
        """Run `upkeep` (a write that records nothing) on the store in the writer thread."""
        return self._enqueue(
            _Request((), Future(), time.perf_counter(), lambda s: upkeep(s.store), False)
        )

    def _enqueue(self, request: _Request) -> Future[Any]:
        with self._cond:
            if self._closing or not self._thread.is_alive():
                raise WriterClosed("the writer is not running")
            self._queue.pending.append(request)
            self._cond.notify()
        return request.future

    async def publish(self, items: Sequence[RawInput]) -> list[IngestResult]:
        return await asyncio.wrap_future(self.submit(items))

    def queued_events(self) -> int:
        return self._queue.events

    # The writer thread ---------------------------------------------------------------------
    def _take_group(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue.pending:
                if self._closing:
                    return None
                self._cond.wait()
            group: list[_Request] = []
            events = 0
            pending = self._queue.pending
            while pending and (
                not group
                or (
                    events + len(pending[0].items) <= self.max_group_events
                    and pending[0].command is None
                    and group[0].command is None
                )
            ):
                request = pending.popleft()
                self._queue.events -= len(request.items)
                # A request whose caller gave up before it started is dropped, unrecorded.
                if request.future.set_running_or_notify_cancel():
                    group.append(request)
                    events += len(request.items)
            return group

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            if group:
                self._apply(group)

    def _apply(self, group: list[_Request]) -> None:
        items = [item for request in group for item in request.items]
        command = group[0].command
        started = time.perf_counter()
        try:
            results = command(self.service) if command else self.service.ingest_batch(items)
        except Exception as error:  # noqa: BLE001 - isolated below, reported per request
            self.stats.failed_transactions += 1
            if command is not None:
                group[0].future.set_exception(error)
                return
            if len(group) == 1:
                try:
                    # Not the store (that is a StoreError, re-raised: 503, retry): an input
                    # of this request. It is dead-lettered alone, the rest recorded.
                    results = isolate_failure(self.service, items, error)
                except Exception as failure:  # noqa: BLE001 - reported to the request
                    log.error(
                        "ingest failed for a request of %d events: %s",
                        len(items),
                        type(failure).__name__,  # type only: a message could carry data
                    )
                    group[0].future.set_exception(failure)
                    return
            else:
                log.warning(
                    "group of %d requests failed (%s); retrying each alone", len(group), error
                )
                for request in group:
                    self._apply([request])
                return
        if command is not None and (not group[0].records or not results):
            group[0].future.set_result(results)  # upkeep, or nothing recorded: no commit
            return
        finished = time.perf_counter()
        self.stats.transactions += 1
        self.stats.requests += len(group)
        self.stats.events += len(results)
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        offset = 0
        for request in group:
            size = len(results) if request.command else len(request.items)
            request.future.set_result(results[offset : offset + size])
            offset += size
        commit = Commit(
            len(group),
            tuple(results),
            finished - started,
            tuple(finished - request.enqueued for request in group),
        )
        for listener in self._listeners:
            try:
                listener(commit)
            except Exception:  # noqa: BLE001 - a listener must never stop the writer
                log.exception("commit listener failed")


class WriterClosed(RuntimeError):
    """The writer was closed (shutting down): nothing was recorded."""


class WriterOverloaded(RuntimeError):
    """Too many events queued: nothing was recorded; retry later."""

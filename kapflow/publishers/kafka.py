"""Outbox relay to Kafka: publishes what the store recorded, in order, at least once.

Rows are read in outbox order, rendered (service/outbox.py), produced with acks from all
in-sync replicas, and only then marked published. A crash or a broker outage between the
two leaves rows unpublished, and they go out on the next pass: consumers de-duplicate by
the stable CloudEvents `id`. Per-client order holds because the key is the client id and
rows are produced in recorded order by one producer.

The relay shares its process (and so the interpreter lock) with the worker's consumer, so
a pass costs little per message: reading and rendering run off the event loop, and the
records of a pass are appended, in order, to one batch per topic partition, each sent as a
whole, instead of one `send` (a future, a partitioner call, a metadata check) per message.
The partition is the default partitioner's (murmur2 of the key, as Java clients compute
it), so each client keeps one partition per topic whichever producer wrote before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from kapflow.publishers.lease import Lease
from kapflow.service.ingest import utc_now
from kapflow.service.outbox import PruneSchedule, as_cloudevent, render
from kapflow.settings import KafkaSettings
from kapflow.store.base import EventStore, OutboxRow, StoreError
from workflow.tasks import iso

log = logging.getLogger("kapflow.relay")

# The first and the longest wait between two passes while the broker or the database is
# away.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
# Bytes of records sent to one partition in one batch: well under the 1 MiB a stock Apache
# Kafka broker accepts (message.max.bytes), large enough that a pass is a few requests.
MAX_BATCH_BYTES = 256 * 1024
# Keys whose partition hash is remembered (one per client): bounded, cleared when full.
KEY_HASHES_KEPT = 100_000
HEADERS = [("content-type", b"application/cloudevents+json")]

KafkaRecord = tuple[str, bytes, bytes]  # Kafka topic, key, value


def kafka_records(rows: Sequence[OutboxRow], topics: dict[str, str]) -> list[KafkaRecord]:
    """The records that publish `rows`, in outbox order: structured-mode CloudEvents."""
    return [
        (topics[message.topic], message.key.encode(), orjson.dumps(as_cloudevent(message)))
        for _, ref, record in rows
        for message in render(ref, record)
    ]


def _append(batch: Any, key: bytes, value: bytes) -> bool:
    """Add a record to an aiokafka `BatchBuilder`; False when the batch is full."""
    return batch.append(key=key, value=value, timestamp=None, headers=HEADERS) is not None


class KafkaOutboxRelay:
    """Publishes the outbox to Kafka while it holds `lease` (the runtime's relay lease,
    kapflow/bootstrap.py: one relay at a time)."""

    def __init__(self, store: EventStore, settings: KafkaSettings, lease: Lease) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.topics = settings.topics
        self._producer: AIOKafkaProducer | None = None
        self._key_hashes: dict[bytes, int] = {}
        self._wake = asyncio.Event()
        self.published = 0
        self._prune = PruneSchedule(timedelta(days=settings.outbox_retention_days))

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka,
            acks="all",
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=30_000,
            **self.settings.client_options(),
        )
        await self._producer.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.lease.release)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def wake(self) -> None:
        """New rows were committed: publish now rather than at the next idle poll."""
        self._wake.set()

    def _pending(self) -> tuple[list[int], list[KafkaRecord]]:
        """The next unpublished rows' positions and records (read and rendered off the loop)."""
        rows = self.store.unpublished(self.settings.relay_batch_size)
        return [position for position, _, _ in rows], kafka_records(rows, self.topics)

    def _partition(self, key: bytes, partitions: list[int]) -> int:
        """aiokafka's DefaultPartitioner for a keyed record, the key's hash remembered."""
        hashed = self._key_hashes.get(key)
        if hashed is None:
            if len(self._key_hashes) >= KEY_HASHES_KEPT:
                self._key_hashes.clear()
            hashed = self._key_hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]

    async def _produce(self, records: list[KafkaRecord]) -> None:
        """Send `records`, in order per partition, and wait for every broker ack."""
        producer = self._producer
        assert producer is not None, "start() the relay first"
        partitions = {
            topic: sorted(await producer.partitions_for(topic))
            for topic in {topic for topic, _, _ in records}
        }
        batches: dict[tuple[str, int], Any] = {}
        deliveries = []
        for topic, key, value in records:
            partition = self._partition(key, partitions[topic])
            batch = batches.get((topic, partition))
            if batch is not None and _append(batch, key, value):
                continue
            if batch is not None:  # full: send it, and the record opens the next one
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[topic, partition] = producer.create_batch()
            _append(batch, key, value)  # a new batch takes its first record whatever its size
        for (topic, partition), batch in batches.items():
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*deliveries)

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; the number of rows published."""
        assert self._producer is not None, "start() the relay first"
        positions, records = await asyncio.to_thread(self._pending)
        if not positions:
            return 0
        await self._produce(records)
        await asyncio.to_thread(self.store.mark_published, positions, iso(utc_now()))
        self.published += len(records)
        log.info("published %d messages from %d outbox rows", len(records), len(positions))
        return len(positions)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; survive broker and database outages.

        A failed pass (broker away, database restarting or locked) is retried after a
        back-off that doubles from FIRST_BACKOFF_S up to MAX_BACKOFF_S, so the relay resumes
        within seconds of the outage ending; one warning per failed pass names the error
        class, one line says when it resumed. Rows of a failed pass stay unpublished and go
        out again. A back-off ends at once when `stop` is set.
        """
        passes = AsyncRetrying(
            # Any error: the relay must outlive a bad pass (never a cancellation).
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=FIRST_BACKOFF_S, max=MAX_BACKOFF_S),
            stop=lambda _state: stop.is_set(),
            sleep=partial(_sleep_unless, stop),
            before_sleep=_log_paused,
            reraise=True,
        )
        while not stop.is_set():
            try:
                published: int | None = await passes(self._pass, stop)
            except Exception:  # noqa: BLE001 - failed as `stop` was set: it is stopping
                return
            if stop.is_set():
                return
            failures = passes.statistics.get("attempt_number", 1) - 1
            if failures:
                log.warning("outbox relay resumed after %d failed passes", failures)
            if published is None:
                # Another worker publishes; stand by to take over if it goes away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.relay_idle_seconds * 4)
            elif published == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.relay_idle_seconds)

    async def _pass(self, stop: asyncio.Event) -> int | None:
        """One pass: the rows published, or None while another relay holds the lease."""
        if stop.is_set():  # woken from a back-off to stop
            return 0
        if not await asyncio.to_thread(self.lease.acquire):
            return None
        published = await self.publish_pending()
        await asyncio.to_thread(self._prune.run_if_due, self.store, utc_now())
        return published


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _log_paused(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    expected = isinstance(error, KafkaError | StoreError | OSError)
    log.warning(
        "outbox relay paused (%s%s); retry %d in %.1fs",
        type(error).__name__,
        "" if expected else ", unexpected",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
    )

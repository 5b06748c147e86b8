"""Outbox relay to Kafka: publishes what the store recorded, in order, at least once.

Rows are read in outbox order, rendered (service/outbox.py), produced with acks from all
in-sync replicas, and only then marked published. A crash or a broker outage between the
two leaves rows unpublished, and they go out on the next pass: consumers de-duplicate by
the stable CloudEvents `id`. Per-client order holds because the key is the client id and
rows are produced in recorded order by one producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from kapflow.publishers.lease import Lease
from kapflow.service.ingest import utc_now
from kapflow.service.outbox import PruneSchedule, as_cloudevent, render
from kapflow.settings import KafkaSettings
from kapflow.store.base import EventStore, StoreError
from workflow.tasks import iso

log = logging.getLogger("kapflow.relay")

# The longest wait between two attempts while the broker or the database is away.
MAX_BACKOFF_S = 5.0


class KafkaOutboxRelay:
    """Publishes the outbox to Kafka while it holds `lease` (the runtime's relay lease,
    kapflow/bootstrap.py: one relay at a time)."""

    def __init__(self, store: EventStore, settings: KafkaSettings, lease: Lease) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.topics = settings.topics
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self.published = 0
        self._prune = PruneSchedule(timedelta(days=settings.outbox_retention_days))

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka,
            acks="all",
            linger_ms=5,
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

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; the number of rows published."""
        assert self._producer is not None, "start() the relay first"
        rows = await asyncio.to_thread(self.store.unpublished, self.settings.relay_batch_size)
        if not rows:
            return 0
        deliveries = []
        for _, ref, record in rows:
            for message in render(ref, record):
                deliveries.append(
                    await self._producer.send(
                        self.topics[message.topic],
                        key=message.key.encode(),
                        value=orjson.dumps(as_cloudevent(message)),
                        headers=[("content-type", b"application/cloudevents+json")],
                    )
                )
        await asyncio.gather(*deliveries)
        positions = [position for position, _, _ in rows]
        await asyncio.to_thread(self.store.mark_published, positions, iso(utc_now()))
        self.published += len(deliveries)
        log.info("published %d messages from %d outbox rows", len(deliveries), len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; survive broker and database outages.

        A failed pass (broker away, database restarting or locked) is retried after a
        back-off that doubles up to MAX_BACKOFF_S, so the relay resumes within seconds of
        the outage ending; one warning per failed pass names the error class, one line
        says when it resumed. Rows of a failed pass stay unpublished and go out again.
        """
        backoff = 0.5
        failures = 0
        while not stop.is_set():
            if not await asyncio.to_thread(self.lease.acquire):
                # Another worker publishes; stand by to take over if it goes away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.relay_idle_seconds * 4)
                continue
            try:
                published = await self.publish_pending()
                await asyncio.to_thread(self._prune.run_if_due, self.store, utc_now())
            except Exception as error:  # noqa: BLE001 - the relay must outlive a bad pass
                expected = isinstance(error, KafkaError | StoreError | OSError)
                failures += 1
                log.warning(
                    "outbox relay paused (%s%s); retry %d in %.1fs",
                    type(error).__name__,
                    "" if expected else ", unexpected",
                    failures,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if failures:
                log.warning("outbox relay resumed after %d failed passes", failures)
                failures, backoff = 0, 0.5
            if published == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.relay_idle_seconds)

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

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from kapflow.publishers.lease import Lease, lease_for
from kapflow.service.ingest import utc_now
from kapflow.service.outbox import as_cloudevent, render
from kapflow.settings import KafkaSettings
from kapflow.store.base import EventStore, StoreError
from workflow.tasks import iso

log = logging.getLogger("kapflow.relay")


class KafkaOutboxRelay:
    def __init__(
        self, store: EventStore, settings: KafkaSettings, lease: Lease | None = None
    ) -> None:
        self.store = store
        self.lease = lease or lease_for(store.url)
        self.settings = settings
        self.topics = settings.topics
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self.published = 0

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
        """Publish until `stop` is set; survive broker and database outages."""
        backoff = 0.5
        while not stop.is_set():
            if not await asyncio.to_thread(self.lease.acquire):
                # Another worker publishes; stand by to take over if it goes away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.relay_idle_seconds * 4)
                continue
            try:
                published = await self.publish_pending()
                backoff = 0.5
            except (KafkaError, StoreError, OSError) as error:
                log.warning(
                    "outbox relay paused (%s); retrying in %.1fs", type(error).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if published == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.relay_idle_seconds)

"""`kapflow worker`: the Kafka stream worker (faust-streaming over aiokafka).

Thin by design: decode each record (CloudEvents Kafka binding), hand the batch to the same
`IngestService` the CLI and HTTP service use (built by kapflow/bootstrap.py), then let the
outbox relay publish: in this process by default, or in its own (`kapflow relay`, with
`KAPFLOW_EMBEDDED_RELAY=false` here). The clock is the same `CareClock` as everywhere;
here it records deadlines by publishing them to the events topic (see `clock` below).
Offsets are committed by faust only for events acked after `ingest_batch` returned, i.e. after the
store transaction committed: at-least-once delivery plus idempotent writes keyed by
(`source`, `id`) gives effectively-once effects without faust's `exactly_once` mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.types import EventT
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from events.kafka_binding import from_kafka_record
from kapflow.bootstrap import Runtime
from kapflow.entrypoints.kafka_start import open_kafka_runtime
from kapflow.publishers.kafka import KafkaOutboxRelay
from kapflow.service.identity import dead_letter_refused, split_by_source
from kapflow.service.ingest import IngestResult, IngestService, RawInput, utc_now
from kapflow.service.isolation import ingest_isolating
from kapflow.settings import KafkaSettings
from kapflow.store import StoreError

log = logging.getLogger("kapflow.worker")

# The cyclic collector's thresholds in the worker. Faust and aiokafka allocate several
# container objects per record (message, event, futures, tasks): at CPython's default
# (700, 10, 10) a young collection runs every few hundred records and a full one, which
# walks the whole heap, every hundred of those. The young generation is let grow larger
# (cyclic garbage waits a little longer, a few MB at most), and the start-up heap is frozen
# out of full passes (`freeze_startup_heap`). Measured by benchmarks/worker.py.
GC_THRESHOLDS = (50_000, 50, 100)


def _faust_broker(settings: KafkaSettings) -> str:
    return ";".join(f"kafka://{host}" for host in settings.kafka.split(","))


def _credentials(settings: KafkaSettings) -> Any:
    options = settings.client_options()
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=options["sasl_plain_password"],
            mechanism=settings.sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if "ssl_context" in options:
        return faust.SSLCredentials(options["ssl_context"])
    return None


async def ingest_until_recorded(
    service: IngestService, inputs: list[RawInput], settings: KafkaSettings
) -> None:
    """Record a batch, retrying while the database is unavailable.

    Returning is what lets faust ack (and so commit) these offsets; giving up would lose
    events, so a store outage (`StoreError`) pauses the partitions instead. An input the
    store or the engine fails on is not an outage: it is dead-lettered alone and the rest
    recorded (service/isolation), so it can never stall its partitions. Nor can a record
    under a source the topic does not accept (`KAPFLOW_KAFKA_SOURCES`): it is dead-lettered
    and never recorded (service/identity).
    """
    admitted, refused = split_by_source(inputs, settings.allowed_sources)

    async def record() -> None:
        nonlocal refused
        if refused:
            await asyncio.to_thread(dead_letter_refused, service.store, service.clock, refused)
            refused = []
        if admitted:
            await asyncio.to_thread(ingest_isolating, service, admitted)

    def log_outage(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "store unavailable (%s); retrying batch of %d in %.1fs",
            type(error).__name__,
            len(inputs),
            state.next_action.sleep if state.next_action else 0.0,
        )

    # No stop: only a recorded batch may be acked; a shutdown cancels the wait instead.
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(StoreError),
        wait=wait_exponential(multiplier=0.2, max=settings.store_retry_max_seconds),
        before_sleep=log_outage,
        reraise=True,
    )
    await retrying(record)


def partition_owner(app: faust.App, topic: str) -> Callable[[str], bool] | None:
    """Whether a client's events land on a partition this worker is assigned (the default
    partitioner: murmur2 of the key). None until the group has assigned partitions."""
    partitions = app.consumer.topic_partitions(topic)
    owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
    if not partitions or not owned:
        return None
    return lambda client_id: (murmur2(client_id.encode()) & 0x7FFFFFFF) % partitions in owned


def build_app(settings: KafkaSettings, runtime: Runtime) -> faust.App:
    app = faust.App(
        settings.group_id,
        broker=_faust_broker(settings),
        broker_credentials=_credentials(settings),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    service = runtime.service
    relay = (
        KafkaOutboxRelay(runtime.store, settings, runtime.relay_lease())
        if settings.embedded_relay
        else None
    )
    events = app.topic(
        settings.events_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    stopping = asyncio.Event()

    @app.agent(events)
    async def apply_events(stream: faust.StreamT) -> None:
        """Decode the next batch while the previous one is being recorded.

        Batches are recorded one at a time, in order; a batch's events are acked (so their
        offsets may be committed) by `record_batch`, once its store transaction committed.
        Faust feeds the stream only while this loop waits for the next batch, so taking and
        decoding batch N+1 overlaps recording batch N instead of following it.
        """
        recording: asyncio.Task[None] | None = None
        try:
            # `noack_take` (acks left to us) is on faust's Stream, not on its StreamT protocol.
            batches = cast(faust.Stream, stream).noack_take(
                settings.batch_size, settings.batch_wait_seconds
            )
            async for batch in batches:
                inputs = await decode_batch(batch)
                if recording is not None:
                    await recording
                recording = asyncio.create_task(record_batch(stream, batch, inputs))
        finally:
            if recording is not None and not recording.done():
                # Stopping: the batch is not acked, so it is redelivered (its writes are
                # idempotent) if its transaction did commit.
                recording.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recording

    async def decode_batch(batch: Sequence[EventT]) -> list[RawInput]:
        inputs: list[RawInput] = []
        for event in batch:
            message = event.message
            record = from_kafka_record(message.key, message.value, message.headers)
            if not record.keyed_by_subject and record.subject:
                # Per-client order needs the client's partition: forward it re-keyed.
                await events.send(
                    key=record.subject.encode(),
                    value=message.value,
                    headers=list(message.headers or []),
                )
                continue
            inputs.append(record.raw)
        return inputs

    async def record_batch(
        stream: faust.StreamT, batch: Sequence[EventT], inputs: list[RawInput]
    ) -> None:
        if inputs:
            await ingest_until_recorded(service, inputs, settings)
            log.info("recorded a batch of %d events", len(inputs))
        for event in batch:
            await stream.ack(event)
        if relay is not None:
            relay.wake()

    loop: asyncio.AbstractEventLoop | None = None
    published: list[dict[str, Any]] = []  # by the current tick

    def publish_deadlines(deadline_events: list[dict[str, Any]]) -> list[IngestResult]:
        """Deadline events go through the events topic, keyed by client, so the partition
        owner applies them in order with everything else; the ids make repeats (another
        worker after a rebalance, a restart) duplicates. Nothing is recorded here yet, so
        the clock does not look for further rounds: the next tick does."""
        assert loop is not None, "called from the clock's thread"
        for event in deadline_events:
            asyncio.run_coroutine_threadsafe(
                events.send(key=event["subject"].encode(), value=orjson.dumps(event)), loop
            ).result()
        published.extend(deadline_events)
        return []

    care_clock = runtime.clock(record=publish_deadlines)

    @app.timer(interval=settings.clock_interval_seconds)
    async def clock() -> None:
        """kapflow's clock for the clients of this worker's partitions (service/clock)."""
        nonlocal loop
        owns = partition_owner(app, settings.events_topic)
        if owns is None:
            return
        loop = asyncio.get_running_loop()
        published.clear()
        report = await asyncio.to_thread(care_clock.tick, utc_now(), owns)
        if published or report.expired_parked:
            log.info(
                "clock: %d deadlines published, %d parked events expired",
                len(published),
                len(report.expired_parked),
            )
            if relay is not None:
                relay.wake()

    @app.task
    async def freeze_startup_heap() -> None:
        """Everything built at start-up lives as long as the process: keep it out of the
        collector's full passes (as `kapflow serve` does)."""
        gc.collect()
        gc.freeze()

    if relay is not None:

        @app.task
        async def publish_outbox() -> None:
            assert relay is not None
            await relay.start()
            try:
                await relay.run(stopping)
            finally:
                await relay.stop()

    @app.on_before_shutdown.connect
    async def _stop_relay(app: faust.App, **_: Any) -> None:
        stopping.set()

    return app


def run(args: argparse.Namespace) -> int:
    opened = open_kafka_runtime(args, "worker")
    if isinstance(opened, int):
        return opened
    settings, runtime = opened
    app = build_app(settings, runtime)
    gc.set_threshold(*GC_THRESHOLDS)
    print(
        f"kapflow worker: consuming {settings.events_topic} from {settings.kafka} as group "
        f"{settings.group_id}; store {settings.db.split('@')[-1]}"
        + ("" if settings.embedded_relay else "; outbox left to `kapflow relay`"),
        file=sys.stderr,
    )
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        runtime.close()
    return 0

"""Faults under load (issue: nothing lost under faults): the poison corpus interleaved with a
cohort, through two workers on four partitions over PostgreSQL, one of them SIGKILLed again
and again mid-stream. Real processes, the real Tansu broker, real PostgreSQL.

The invariant: the histories equal `kapflow ingest` of the same events; each poison message
is exactly one dead letter; every outbox message reaches its topic at least once under a
stable id (consumers de-duplicate on it); no partition stalls.

`KAPFLOW_FAULT_KILLS` sets the number of kills (default 4 here, to keep the suite short;
the closing note's figure is a run with 20).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from kafka_harness import (
    Topics,
    Worker,
    comparable,
    progress,
    publish,
    run,
    structured,
    wait_until,
)
from test_cli import kapflow
from test_kafka_worker import published_ids, reference
from test_poison import CORPUS, KAFKA_CORPUS, kafka_record

from kapflow.demo.cohort import generate_cohort
from kapflow.entrypoints.broker import LocalBroker
from kapflow.store import open_store

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.postgres]

KILLS = int(os.environ.get("KAPFLOW_FAULT_KILLS", "4"))


def _dead_letters(db: str) -> int:
    store = open_store(db)
    try:
        return len(store.rejections(limit=10**7))
    finally:
        store.close()


def test_poison_and_repeated_sigkills_of_a_worker_lose_and_double_nothing(
    kafka_broker: LocalBroker, tmp_path: Path, postgres_url: str
) -> None:
    events = list(generate_cohort(clients=100, seed=21))
    reference_url, expected_valid = reference(tmp_path, events)
    rejected_in_reference = _dead_letters(reference_url)
    records = structured(events)
    poisons = [(b"c-poison", path.read_bytes(), []) for path in CORPUS]
    poisons += [kafka_record(path) for path in KAFKA_CORPUS]
    rng = random.Random(5)
    for poison in poisons:  # anywhere in the stream, on whatever partition the key picks
        records.insert(rng.randrange(len(records)), poison)
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap, partitions=4))
    run(publish(kafka_broker.bootstrap, topics.events, records))
    open_store(postgres_url).close()  # schema first, then the workers
    logs = [tmp_path / f"w{n}.log" for n in range(2)]
    workers = [Worker(kafka_broker.bootstrap, postgres_url, topics, log).start() for log in logs]
    expected = (expected_valid + len(poisons), 0)
    kills = 0
    started = time.monotonic()
    try:
        while kills < KILLS and progress(postgres_url)[0] < expected[0]:
            time.sleep(rng.uniform(1.0, 4.0))
            victim = rng.randrange(2)
            workers[victim].kill()
            kills += 1
            workers[victim] = Worker(
                kafka_broker.bootstrap, postgres_url, topics, logs[victim]
            ).start()
        wait_until(lambda: progress(postgres_url) == expected, 300, "every message recorded")
    finally:
        for worker in workers:
            worker.stop()
    elapsed = time.monotonic() - started
    print(f"\n{kills} SIGKILLs, {len(records)} messages ({len(poisons)} poison) in {elapsed:.0f} s")
    assert kills >= min(KILLS, 2), "the kills must land mid-stream"
    ours, theirs = comparable(postgres_url), comparable(reference_url)
    assert ours["histories"] == theirs["histories"]
    assert ours["snapshots"] == theirs["snapshots"]
    assert ours["tasks"] == theirs["tasks"]
    # Each poison message exactly one dead letter, beside the reference's own rejections.
    assert _dead_letters(postgres_url) == rejected_in_reference + len(poisons)
    assert "verify: OK" in kapflow("verify", db=postgres_url).stdout
    # Every outbox message reached its topic (at least once; ids are stable).
    for topic, ids in published_ids(postgres_url).items():
        got = run(ids_on_topic(kafka_broker.bootstrap, topics.outputs[topic], ids))
        assert ids <= got, f"{topic}: {len(ids - got)} messages never published"


async def ids_on_topic(bootstrap: str, topic: str, wanted: set[str]) -> set[str]:
    """The CloudEvent ids on a topic, read until every wanted one is seen (or 120 s)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"audit-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while not wanted <= seen and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                seen.update(json.loads(record.value)["id"] for record in records)
    finally:
        await consumer.stop()
    return seen

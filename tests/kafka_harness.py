"""Running real `kapflow worker` processes against the real local broker in tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from kafka_fixtures import create_topics

from kapflow.store import open_store

KAPFLOW = str(Path(sys.executable).parent / "kapflow")


@dataclass
class Topics:
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def outputs(self) -> dict[str, str]:
        return {
            "state-changes": f"{self.prefix}.state-changes",
            "tasks": f"{self.prefix}.tasks",
            "rejected": f"{self.prefix}.rejected",
            "deviations": f"{self.prefix}.deviations",
        }

    def env(self) -> dict[str, str]:
        return {
            "KAPFLOW_EVENTS_TOPIC": self.events,
            "KAPFLOW_STATE_CHANGES_TOPIC": self.outputs["state-changes"],
            "KAPFLOW_TASKS_TOPIC": self.outputs["tasks"],
            "KAPFLOW_REJECTED_TOPIC": self.outputs["rejected"],
            "KAPFLOW_DEVIATIONS_TOPIC": self.outputs["deviations"],
            "KAPFLOW_GROUP_ID": f"{self.prefix}-workers",
        }

    async def create(self, bootstrap: str, partitions: int = 4) -> None:
        await create_topics(bootstrap, [self.events, *self.outputs.values()], partitions)


class Worker:
    """One `kapflow worker` subprocess, with the short group timeouts tests need."""

    def __init__(
        self,
        bootstrap: str,
        db: str,
        topics: Topics,
        log: Path,
        partitions: int = 4,
        clock_seconds: float = 3600,
        verbose: bool = True,
        embedded_relay: bool = True,
        command: str = "worker",
    ) -> None:
        # -v logs each event's outcome, which the tests read; a benchmark measures the
        # worker as deployed, without it.
        # `command="relay"`: a `kapflow relay` process instead, with the same settings.
        self.command = [KAPFLOW, command, "--kafka", bootstrap, "--db", db]
        if verbose:
            self.command.append("-v")
        self.env = {
            **os.environ,
            **topics.env(),
            "KAPFLOW_SESSION_TIMEOUT_SECONDS": "3",
            "KAPFLOW_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "KAPFLOW_REPLICATION_FACTOR": "1",
            "KAPFLOW_PARTITIONS": str(partitions),
            "KAPFLOW_BATCH_SIZE": os.environ.get("KAPFLOW_BATCH_SIZE", "200"),
            # The wall clock is far past the synthetic cohort: keep the worker's clock
            # out of the tests that compare with `kapflow ingest`.
            "KAPFLOW_CLOCK_INTERVAL_SECONDS": str(clock_seconds),
            "KAPFLOW_EMBEDDED_RELAY": "true" if embedded_relay else "false",
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s; its exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return None if self.process is None else self.process.returncode


async def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    count = 0
    try:
        for key, value, headers in records:
            await producer.send(topic, key=key, value=value, headers=headers or None)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


def structured(
    events: Iterable[dict[str, Any]],
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Keyed structured-mode records, serialised as `write_jsonl` writes the same events."""
    return [
        (
            e["subject"].encode(),
            json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode(),
            [],
        )
        for e in events
    ]


async def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def committed(bootstrap: str, topics: Topics, partitions: int = 4) -> int:
    """The worker group's committed offsets on the events topic, summed over partitions:
    how many input records it may never be handed again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            topics.env()["KAPFLOW_GROUP_ID"],
            partitions=[TopicPartition(topics.events, p) for p in range(partitions)],
        )
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for meta in offsets.values())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def progress(db: str) -> tuple[int, int]:
    """How many inputs the store has an outcome for, and how many outbox rows are unpublished."""
    store = open_store(db)
    try:
        stats = store.stats()
        unpublished = len(store.unpublished(limit=10**7))
        return stats["history"] + stats["rejections"] + stats["parked"], unpublished
    finally:
        store.close()


def comparable(db: str) -> dict[str, Any]:
    """What must be identical between two stores fed the same events (record times and the
    hashes covering them differ by design)."""
    store = open_store(db)
    try:
        histories: dict[str, list[tuple[Any, ...]]] = {}
        for e in store.iter_history():
            histories.setdefault(e.client_id, []).append(
                (e.seq, e.source, e.event_id, e.type, e.from_state, e.to_state, e.event, e.outcome)
            )
        snapshots = {}
        for client_id in store.client_ids():
            snapshot = store.get_client(client_id)
            assert snapshot is not None
            record = snapshot.to_record()
            record.pop("last_hash")
            snapshots[client_id] = record
        tasks = sorted((t.id, t.status, t.priority, t.due) for t in store.tasks(limit=10**7))
        rejections = sorted(
            (r.key_source, r.key_id, r.reasons) for _, r in store.rejections(limit=10**7)
        )
        return {
            "histories": histories,
            "snapshots": snapshots,
            "tasks": tasks,
            "rejections": rejections,
        }
    finally:
        store.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)

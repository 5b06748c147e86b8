"""Kafka worker benchmark: one run, side by side, on the local Tansu broker.

    .venv/bin/python benchmarks/worker.py [--events 50000] [--db postgresql://postgres@127.0.0.1:5432/test]

Prints:
- the raw aiokafka consume rate of the input topic (a consumer group reading every record);
- one `kapflow worker` end to end (consume → store → outbox published), from its first
  recorded event to the last outbox row published, as events/s and as a fraction of
  the raw consume rate; plus the rate including start-up and group join;
- consumer lag after the run (committed offsets vs records produced: must be zero);
- two workers in one group on the same events (fresh store and topic): combined rate.

With a postgresql:// --db, each run uses a fresh database created next to the given one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kafka_harness import Topics, Worker, progress, publish, structured  # noqa: E402

from kapflow.demo.cohort import cohort_size_for, generate_cohort  # noqa: E402
from kapflow.entrypoints.broker import LocalBroker  # noqa: E402


async def raw_consume_rate(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
    )
    await consumer.start()
    seen = 0
    first = None
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batch.values():
                if records and first is None:
                    first = time.perf_counter()
                seen += len(records)
    finally:
        await consumer.stop()
    assert first is not None
    return count / (time.perf_counter() - first)


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for meta in offsets.values())


def fresh_db(base: str, work: Path, name: str) -> str:
    if base.startswith("sqlite"):
        return f"sqlite:///{work / f'{name}.db'}"
    import psycopg

    db = f"kapflow_bench_{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    return base.rsplit("/", 1)[0] + "/" + db


def run_workers(
    bootstrap: str, db: str, events: list[dict], workers: int, work: Path, partitions: int
) -> dict[str, float]:
    topics = Topics()
    asyncio.run(topics.create(bootstrap, partitions))
    asyncio.run(publish(bootstrap, topics.events, structured(events)))
    raw = asyncio.run(raw_consume_rate(bootstrap, topics.events, len(events)))
    from kapflow.store import open_store

    open_store(db).close()  # create the schema before the workers race to
    started = time.perf_counter()
    procs = [
        Worker(bootstrap, db, topics, work / f"w{n}.log", partitions).start()
        for n in range(workers)
    ]
    first = None
    all_recorded = None
    distinct = len({(e["source"], e["id"]) for e in events})
    try:
        while True:
            recorded, unpublished = progress(db)
            now = time.perf_counter()
            if recorded and first is None:
                first = now
            if recorded >= distinct and all_recorded is None:
                all_recorded = now
            if recorded >= distinct and unpublished == 0:
                break
            if now - started > 1800:
                raise SystemExit("benchmark timed out")
            time.sleep(0.2)
        done = time.perf_counter()
        time.sleep(6)  # faust commits offsets periodically
        committed = asyncio.run(
            committed_total(bootstrap, topics.env()["KAPFLOW_GROUP_ID"], topics.events, partitions)
        )
    finally:
        for proc in procs:
            proc.stop()
    assert first is not None and all_recorded is not None
    return {
        "raw_consume_per_s": raw,
        "recorded_per_s": len(events) / (all_recorded - first),
        "end_to_end_per_s": len(events) / (done - first),
        "end_to_end_with_startup_per_s": len(events) / (done - started),
        "lag_after_run": len(events) - committed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kapflow-worker-bench-"))
    events = list(generate_cohort(clients=cohort_size_for(args.events), seed=11))
    print(f"cohort: {len(events)} events; store: {args.db.split('@')[-1]}; work dir {work}")
    broker = LocalBroker(log_path=work / "broker.log").start()
    try:
        one = run_workers(
            broker.bootstrap, fresh_db(args.db, work, "one"), events, 1, work, args.partitions
        )
        two = run_workers(
            broker.bootstrap, fresh_db(args.db, work, "two"), events, 2, work, args.partitions
        )
    finally:
        broker.stop()
    summary = {
        "events": len(events),
        "raw_consume_per_s": round(one["raw_consume_per_s"]),
        "one_worker_per_s": round(one["end_to_end_per_s"]),
        "one_worker_recorded_per_s": round(one["recorded_per_s"]),
        "one_worker_fraction_of_raw": round(one["end_to_end_per_s"] / one["raw_consume_per_s"], 3),
        "one_worker_with_startup_per_s": round(one["end_to_end_with_startup_per_s"]),
        "lag_after_one_worker": one["lag_after_run"],
        "two_workers_per_s": round(two["end_to_end_per_s"]),
        "lag_after_two_workers": two["lag_after_run"],
    }
    print(json.dumps(summary, indent=2))
    print(
        ("MET " if summary["one_worker_per_s"] >= 5000 else "MISS")
        + " one worker >= 5,000 events/s"
    )


if __name__ == "__main__":
    os.environ.setdefault("KAPFLOW_BATCH_SIZE", "2000")
    main()

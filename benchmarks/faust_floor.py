"""What faust-streaming costs per record before kapflow does anything: the worker's floor.

    .venv/bin/python benchmarks/faust_floor.py [--events 20000] [--runs 3] [--batch-size 2000]

The same cohort lines `benchmarks/worker.py` produces go to a fresh topic (4 partitions) on
the local broker; then, as separate processes, each run:
- **faust**: an app configured as `kapflow worker` configures its own (raw key and value,
  `noack_take(batch)`, every event acked) whose agent does nothing else;
- **faust + decode**: the same, also decoding every record with the CloudEvents Kafka
  binding as the worker does (`events.kafka_binding.from_kafka_record`);
- **aiokafka**: a bare `AIOKafkaConsumer.getmany` loop over the same topic, for scale.
Each consumer times itself from its first record to its last (group join outside it) and
reports records/s and CPU microseconds per record (process time, all threads). The order
rotates from run to run; medians are printed.

What it is for: kapflow's worker cannot be cheaper per event than the first line plus
in-process ingest. `benchmarks/worker.py` gives the worker's own CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

PARTITIONS = 4


def consume_with_faust(bootstrap: str, topic: str, expected: int, batch: int, decode: bool) -> None:
    """Child process: a faust app that takes, (decodes) and acks `expected` records."""
    import faust

    from events.kafka_binding import from_kafka_record

    app = faust.App(
        f"floor-{uuid.uuid4().hex[:8]}",  # a new group each run: the topic read from its start
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(
        topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    seen = 0
    first: tuple[float, float] | None = None

    @app.agent(source)
    async def take(stream: faust.StreamT) -> None:
        nonlocal seen, first
        async for events in stream.noack_take(batch, 0.2):  # type: ignore[attr-defined]
            if first is None:
                first = (time.perf_counter(), time.process_time())
            if decode:
                for event in events:
                    message = event.message
                    from_kafka_record(message.key, message.value, message.headers)
            for event in events:
                await stream.ack(event)
            seen += len(events)
            if seen >= expected:
                wall, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
                print(json.dumps({"records": seen, "wall": wall, "cpu": cpu}), flush=True)
                os._exit(0)  # measured: nothing after this matters

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    worker.execute_from_commandline()


async def consume_with_aiokafka(bootstrap: str, topic: str, expected: int, batch: int) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"floor-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    first: tuple[float, float] | None = None
    try:
        while seen < expected:
            records = await consumer.getmany(timeout_ms=200, max_records=batch)
            if records and first is None:
                first = (time.perf_counter(), time.process_time())
            seen += sum(len(batch_) for batch_ in records.values())
        await consumer.commit()
    finally:
        await consumer.stop()
    assert first is not None
    wall, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
    print(json.dumps({"records": seen, "wall": wall, "cpu": cpu}), flush=True)


def child(kind: str, bootstrap: str, topic: str, expected: int, batch: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, bootstrap, topic, str(expected), str(batch)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # faust writes a terminal escape sequence before the line: take from its first brace.
    lines = [line[line.index("{") :] for line in done.stdout.splitlines() if "{" in line]
    if not lines:
        raise SystemExit(f"{kind} consumer failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, bootstrap, topic, expected, batch = sys.argv[2:7]
        if kind == "aiokafka":
            asyncio.run(consume_with_aiokafka(bootstrap, topic, int(expected), int(batch)))
        else:
            consume_with_faust(bootstrap, topic, int(expected), int(batch), kind == "faust+decode")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()

    from kafka_harness import Topics, publish
    from postgres_ingest import cohort_lines

    from kapflow.entrypoints.broker import LocalBroker

    lines = cohort_lines(args.events)
    records = [(json.loads(line)["subject"].encode(), line.encode(), []) for line in lines]
    kinds = ["faust", "faust+decode", "aiokafka"]
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    broker = LocalBroker().start()
    try:
        topics = Topics()
        asyncio.run(topics.create(broker.bootstrap, PARTITIONS))
        asyncio.run(publish(broker.bootstrap, topics.events, records))  # type: ignore[arg-type]
        for run in range(args.runs):
            order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
            for kind in order:
                results[kind].append(
                    child(kind, broker.bootstrap, topics.events, len(records), args.batch_size)
                )
            print(
                f"run {run + 1}: "
                + ", ".join(
                    f"{kind} {r[-1]['records'] / r[-1]['wall']:,.0f} records/s"
                    f" ({r[-1]['cpu'] / r[-1]['records'] * 1e6:.0f} us CPU/record)"
                    for kind, r in results.items()
                ),
                flush=True,
            )
    finally:
        broker.stop()
    med = statistics.median
    summary = {
        "records": len(records),
        "runs": args.runs,
        "batch_size": args.batch_size,
        **{
            kind: {
                "records_per_s": round(med(r["records"] / r["wall"] for r in runs)),
                "cpu_us_per_record": round(med(r["cpu"] / r["records"] for r in runs) * 1e6),
            }
            for kind, runs in results.items()
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

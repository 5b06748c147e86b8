"""Hand-over benchmark: how long a SIGKILLed worker's partitions stand still.

    .venv/bin/python benchmarks/handover.py [--trials 3] [--partitions 4] [--db URL]
            [--session-timeout S --heartbeat S]   # default: kapflow's own settings

With a postgresql:// --db, each trial uses a fresh database created next to the given one.

Per trial, on the local Tansu broker with a fresh topic and store: two `kapflow worker`s
join one group and both record warm-up events (so each owns partitions); one is
SIGKILLed; at that instant events for `--clients` new clients (spread over every
partition) are published. The hand-over time is from the kill until every one of them is
recorded: the survivor records its own partitions' share at once, the dead worker's share
only after the group has noticed the death and handed its partitions over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import Journey  # noqa: E402
from kafka_harness import Topics, Worker, progress, publish, structured  # noqa: E402

from kapflow.entrypoints.broker import LocalBroker  # noqa: E402
from kapflow.settings import KafkaSettings  # noqa: E402


def fresh_db(base: str, work: Path, name: str) -> str:
    """A store of its own for one trial: a file beside the others, or a new PostgreSQL
    database next to `base`'s (named kapflow_bench_…; drop them when done)."""
    if base.startswith("sqlite"):
        return f"sqlite:///{work / f'{name}.db'}"
    import psycopg

    db = f"kapflow_bench_{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    return base.rsplit("/", 1)[0] + "/" + db


def inquiries(prefix: str, clients: int) -> list[dict[str, object]]:
    events = []
    for n in range(clients):
        event = Journey(f"c-{prefix}-{n}").inquiry()
        event["id"] = f"{prefix}-{n}"
        events.append(event)
    return events


def wait_recorded(db: str, count: int, timeout: float) -> float | None:
    """Seconds until the store holds `count` outcomes, polled every 50 ms; None on timeout."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if progress(db)[0] >= count:
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def both_recorded(logs: list[Path]) -> bool:
    return all(log.exists() and b"recorded a batch" in log.read_bytes() for log in logs)


def trial(
    bootstrap: str, db: str, work: Path, partitions: int, clients: int, group: dict[str, str]
) -> float:
    topics = Topics()
    asyncio.run(topics.create(bootstrap, partitions))
    logs = [work / f"{topics.prefix}-w{n}.log" for n in range(2)]
    workers = [Worker(bootstrap, db, topics, log, partitions) for log in logs]
    for worker in workers:
        for name in ("KAPFLOW_SESSION_TIMEOUT_SECONDS", "KAPFLOW_HEARTBEAT_INTERVAL_SECONDS"):
            worker.env.pop(name)
        worker.env.update(group)
        worker.start()
    recorded = 0
    try:
        # Warm up until both workers have recorded something: each owns partitions.
        for round_ in range(60):
            batch = inquiries(f"warm{round_}-{topics.prefix}", 40)
            asyncio.run(publish(bootstrap, topics.events, structured(batch)))
            recorded += len(batch)
            if wait_recorded(db, recorded, 60) is None:
                raise SystemExit("warm-up events were not recorded within 60 s")
            if both_recorded(logs):
                break
            time.sleep(1)
        else:
            raise SystemExit("the two workers never both owned partitions")
        events = inquiries(f"after-{topics.prefix}", clients)
        victim = workers[0]
        killed = time.perf_counter()
        victim.kill()
        asyncio.run(publish(bootstrap, topics.events, structured(events)))
        if wait_recorded(db, recorded + clients, 120) is None:
            raise SystemExit("the dead worker's partitions were not handed over within 120 s")
        return time.perf_counter() - killed
    finally:
        for worker in workers:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--session-timeout", type=float)
    parser.add_argument("--heartbeat", type=float)
    args = parser.parse_args()
    defaults = KafkaSettings(kafka="127.0.0.1:9092")
    session = args.session_timeout or defaults.session_timeout_seconds
    heartbeat = args.heartbeat or defaults.heartbeat_interval_seconds
    group = {
        "KAPFLOW_SESSION_TIMEOUT_SECONDS": str(session),
        "KAPFLOW_HEARTBEAT_INTERVAL_SECONDS": str(heartbeat),
    }
    work = Path(tempfile.mkdtemp(prefix="kapflow-handover-"))
    broker = LocalBroker(log_path=work / "broker.log").start()
    seconds = []
    try:
        for n in range(args.trials):
            db = fresh_db(args.db, work, f"handover{n}")
            took = trial(broker.bootstrap, db, work, args.partitions, args.clients, group)
            seconds.append(took)
            print(f"trial {n + 1}: partitions handed over and caught up in {took:.1f} s")
    finally:
        broker.stop()
    print(
        json.dumps(
            {
                "session_timeout_s": session,
                "heartbeat_interval_s": heartbeat,
                "trials": len(seconds),
                "handover_s": [round(s, 1) for s in seconds],
                "median_s": round(statistics.median(seconds), 1),
                "max_s": round(max(seconds), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Peer benchmark: `kapflow ingest` vs the `eventsourcing` library on the same cohort file.

    .venv/bin/pip install -e '.[bench]'      # eventsourcing, pinned; benchmarks only
    .venv/bin/python benchmarks/peer_eventsourcing.py [--events 50000] [--runs 3]

The peer is what a Python team would otherwise write with pyeventsourcing, used the
library's ordinary, fastest way: one `Aggregate` per client, one domain event per input
line carrying the line's type, time and data, SQLite persistence, `save` every 5,000
lines (only the aggregates touched since the last save), aggregates kept in memory across
batches. It records; it applies no rules, opens no tasks and keeps no outbox.

Each run is a whole process (start-up included), timed by the parent with wait4, and the
two are interleaved (peer, kapflow, peer, kapflow, …) so that a busy machine slows both
alike; medians of --runs. A bare SQLite append of the same lines (one transaction) is
reported as the floor. Bytes per event are file sizes after VACUUM divided by the events.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from core import BARE_APPEND, KAPFLOW, timed_run, write_cohort

SAVE_EVERY = 5000


def store_with_eventsourcing(cohort: str, db: str) -> None:
    """The peer: runs in its own process (`--peer FILE DB`)."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class ClientRecord(Aggregate):
        @staticmethod
        def create_id(client_id: str) -> UUID:
            return uuid5(NAMESPACE_URL, client_id)

        @event("Opened")
        def __init__(self, client_id: str) -> None:
            self.client_id = client_id

        @event("Received")
        def receive(self, type: str, time: str, data: dict[str, Any]) -> None:
            self.last_type = type
            self.last_time = time

    app = Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db})
    clients: dict[str, ClientRecord] = {}
    touched: dict[str, ClientRecord] = {}
    with open(cohort, encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            message = json.loads(line)
            subject = message["subject"]
            client = clients.get(subject)
            if client is None:
                client = clients[subject] = ClientRecord(subject)
            client.receive(message["type"], message["time"], message["data"])
            touched[subject] = client
            if n % SAVE_EVERY == 0:
                app.save(*touched.values())
                touched.clear()
    if touched:
        app.save(*touched.values())


def bytes_per_event(db: Path, events: int) -> float:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    return db.stat().st_size / events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer", nargs=2, metavar=("FILE", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        store_with_eventsourcing(*args.peer)
        return

    work = Path(tempfile.mkdtemp(prefix="kapflow-peer-"))
    cohort = work / "cohort.jsonl"
    count = write_cohort(cohort, args.events)
    print(f"cohort: {count} events, {cohort.stat().st_size / 1e6:.1f} MB ({work})")

    peer_s, kapflow_s, bare_s = [], [], []
    peer_rss, kapflow_rss = [], []
    for run in range(args.runs):
        peer_db = work / f"peer-{run}.db"
        seconds, rss = timed_run([sys.executable, __file__, "--peer", str(cohort), str(peer_db)])
        peer_s.append(seconds)
        peer_rss.append(rss / 1024)
        kapflow_db = work / f"kapflow-{run}.db"
        seconds, rss = timed_run(
            [KAPFLOW, "ingest", str(cohort), "--db", f"sqlite:///{kapflow_db}"]
        )
        kapflow_s.append(seconds)
        kapflow_rss.append(rss / 1024)
        bare_db = work / f"bare-{run}.db"
        seconds, _ = timed_run([sys.executable, "-c", BARE_APPEND, str(cohort), str(bare_db)])
        bare_s.append(seconds)
        print(
            f"run {run + 1}: eventsourcing {count / peer_s[-1]:,.0f}/s,"
            f" kapflow {count / kapflow_s[-1]:,.0f}/s, bare append {count / bare_s[-1]:,.0f}/s"
        )

    med = statistics.median
    summary = {
        "events": count,
        "runs": args.runs,
        "eventsourcing_per_s": round(count / med(peer_s)),
        "kapflow_ingest_per_s": round(count / med(kapflow_s)),
        "bare_sqlite_append_per_s": round(count / med(bare_s)),
        "kapflow_vs_eventsourcing": round(med(peer_s) / med(kapflow_s), 3),
        "kapflow_vs_bare_append": round(med(bare_s) / med(kapflow_s), 3),
        "eventsourcing_vs_bare_append": round(med(bare_s) / med(peer_s), 3),
        "bytes_per_event_kapflow": round(bytes_per_event(work / "kapflow-0.db", count)),
        "bytes_per_event_eventsourcing": round(bytes_per_event(work / "peer-0.db", count)),
        "bytes_per_event_bare_append": round(bytes_per_event(work / "bare-0.db", count)),
        "peak_rss_mib_kapflow": round(med(kapflow_rss), 1),
        "peak_rss_mib_eventsourcing": round(med(peer_rss), 1),
    }
    print(json.dumps(summary, indent=2))
    met = summary["kapflow_vs_eventsourcing"] >= 1.0
    print(f"{'MET ' if met else 'MISS'} kapflow_vs_eventsourcing >= 1.0")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

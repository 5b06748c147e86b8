"""Storage codec benchmark (issues 9 and 10): bytes per event, ingest and verify rates for
the same cohort stored plain, compressed (format 0x03) and compressed + encrypted (0x02).

    .venv/bin/python benchmarks/storage_codec.py [--events 20000] [--runs 3]
                                                 [--postgres postgresql://postgres@127.0.0.1:5432/test]

Each run ingests the cohort through the CLI's own code path in this process (`kapflow
ingest` into a fresh SQLite file, output discarded), then `VACUUM`s the file and divides
its size by the history entries, then times `kapflow verify`. The three modes run
interleaved (a, b, c, a, b, c, …) and the medians are printed, with the ratios to plain.
"Plain" is the codec's own 0x00 format (text behind a format byte): what the columns cost
with the codec's compression switched off, everything else the same.

`--postgres URL` also stores the cohort once per mode in a fresh PostgreSQL database
beside URL's and prints its bytes per event: the tables, their TOAST and their indexes
after `VACUUM FULL`, divided by the history entries.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.entrypoints.cli import main as kapflow
from kapflow.store import codec

MODES = ("plain", "compressed", "encrypted")


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    original = codec.compress
    if name == "plain":
        codec.compress = lambda text: bytes([codec.PLAIN]) + text.encode()
    if name == "encrypted":
        os.environ[codec.ENCRYPTION_KEY_ENV] = base64.b64encode(b"k" * codec.KEY_BYTES).decode()
    try:
        yield
    finally:
        codec.compress = original
        os.environ.pop(codec.ENCRYPTION_KEY_ENV, None)


def run(name: str, events: Path, folder: Path) -> tuple[float, float, float]:
    """(ingest events/s, verify entries/s, bytes per event) for one mode."""
    db = folder / f"{name}.db"
    url = f"sqlite:///{db}"
    with mode(name), contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        assert kapflow(["ingest", str(events), "--db", url]) == 0
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        assert kapflow(["verify", "--db", url]) == 0
        verify_s = time.perf_counter() - started
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    entries = int(conn.execute("SELECT count(*) FROM history").fetchone()[0])
    conn.close()
    size = db.stat().st_size
    for leftover in folder.glob(f"{name}.db*"):
        leftover.unlink()
    return entries / ingest_s, entries / verify_s, size / entries


def postgres_bytes_per_event(name: str, events: Path, url: str) -> float:
    """Bytes per event of the cohort stored in a fresh PostgreSQL database, one mode."""
    database = f"kapflow_codec_{name}_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        admin.execute(f'CREATE DATABASE "{database}"')
    fresh = _url_with_db(url, database)
    try:
        with mode(name), contextlib.redirect_stdout(io.StringIO()):
            assert kapflow(["ingest", str(events), "--db", fresh]) == 0
        with psycopg.connect(fresh, autocommit=True) as conn:
            conn.execute("VACUUM FULL")
            entries = conn.execute("SELECT count(*) FROM history").fetchone()
            size = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname = current_schema()"
            ).fetchone()
        assert entries is not None and size is not None
        return float(size[0]) / int(entries[0])
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _url_with_db(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--postgres", help="also measure bytes/event in PostgreSQL (a URL)")
    args = parser.parse_args()
    postgres: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        events = folder / "cohort.jsonl"
        cohort = generate_cohort(clients=max(1, args.events // 21), seed=args.seed)
        count = write_jsonl(cohort, events)
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in MODES}
        for _ in range(args.runs):
            for name in MODES:
                results[name].append(run(name, events, folder))
        if args.postgres:
            for name in MODES:
                postgres[name] = postgres_bytes_per_event(name, events, args.postgres)
    print(f"{count} events (seed {args.seed}), medians of {args.runs} interleaved runs")
    print(f"{'mode':<12}{'ingest/s':>10}{'×plain':>8}{'verify/s':>10}{'×plain':>8}{'B/event':>9}")
    base_ingest = statistics.median(r[0] for r in results["plain"])
    base_verify = statistics.median(r[1] for r in results["plain"])
    for name in MODES:
        ingest = statistics.median(r[0] for r in results[name])
        verify = statistics.median(r[1] for r in results[name])
        size = statistics.median(r[2] for r in results[name])
        print(
            f"{name:<12}{ingest:>10,.0f}{ingest / base_ingest:>8.2f}"
            f"{verify:>10,.0f}{verify / base_verify:>8.2f}{size:>9,.0f}"
            + (f"   PostgreSQL {postgres[name]:,.0f} B/event" if postgres else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

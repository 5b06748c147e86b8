"""PostgreSQL vs SQLite ingest, side by side in one run (the distributed vs the embedded store).

    .venv/bin/python benchmarks/postgres_ingest.py [--events 50000] [--runs 3] [--workers 2]

Ingests the same synthetic cohort (`generate_cohort(clients=cohort_size_for(N), seed=11)`,
as JSON lines) through `IngestService` into a fresh PostgreSQL database and a fresh SQLite
file per run, and prints events/s for both (median of --runs) and their ratio. With
--workers N > 1 it also ingests into PostgreSQL from N processes at once, the events split
by client as Kafka partitions them (per-client order kept), which is the shape PostgreSQL
is for. Store opening and schema creation are outside the timings; commits are inside.

Then `kapflow verify` over each store just written (a real subprocess, default `--jobs`,
process start included), as a multiple of that store's ingest rate: the target is 3x on
both. The ingest here runs in this process (no process start), so the multiple is a
little below the one benchmarks/core.py reports for SQLite.

Needs a PostgreSQL server where --admin-url can create and drop databases.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import psycopg

from kapflow.demo.cohort import cohort_size_for, generate_cohort
from kapflow.service.ingest import IngestService
from kapflow.store import open_store

KAPFLOW = str(Path(sys.executable).parent / "kapflow")


def cohort_lines(events_wanted: int) -> list[str]:
    return [
        json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        for event in generate_cohort(clients=cohort_size_for(events_wanted), seed=11)
    ]


def ingest(url: str, lines: list[str], batch_size: int) -> tuple[float, dict[str, int]]:
    """Seconds to ingest `lines` into the store at `url`, and the store's counts after."""
    store = open_store(url)
    try:
        service = IngestService(store, batch_size=batch_size)
        start = time.perf_counter()
        for _ in service.ingest_stream(lines):
            pass
        elapsed = time.perf_counter() - start
        return elapsed, store.stats()
    finally:
        store.close()


def verify(url: str) -> float:
    """Wall seconds of `kapflow verify` over the store at `url` (which must verify OK)."""
    start = time.perf_counter()
    result = subprocess.run([KAPFLOW, "verify", "--db", url], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"kapflow verify failed on {url}: {result.stdout[-500:]}")
    return elapsed


def _worker(
    url: str, lines: list[str], batch_size: int, ready: ProcessEvent, go: ProcessEvent
) -> None:
    store = open_store(url)
    service = IngestService(store, batch_size=batch_size)
    ready.set()
    go.wait()
    for _ in service.ingest_stream(lines):
        pass
    store.close()


def ingest_parallel(url: str, lines: list[str], batch_size: int, workers: int) -> float:
    """Wall time for `workers` processes, each owning the clients of one partition."""
    partitions: list[list[str]] = [[] for _ in range(workers)]
    for line in lines:
        subject = json.loads(line).get("subject") or ""
        partitions[zlib.crc32(subject.encode()) % workers].append(line)
    context = multiprocessing.get_context("fork")
    go = context.Event()
    readies = [context.Event() for _ in range(workers)]
    processes = [
        context.Process(target=_worker, args=(url, part, batch_size, ready, go))
        for part, ready in zip(partitions, readies, strict=True)
    ]
    for process in processes:
        process.start()
    for ready in readies:
        ready.wait()
    start = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed (exit {process.exitcode})")
    return time.perf_counter() - start


class Databases:
    """Fresh PostgreSQL databases for each run, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin = psycopg.connect(admin_url, autocommit=True)
        info = self.admin.info
        self.base = f"postgresql://{info.user}@{info.host}:{info.port}"
        self.names: list[str] = []

    def fresh(self) -> str:
        name = f"kapflow_bench_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        # The schema is created here, outside any timing.
        open_store(f"{self.base}/{name}").close()
        return f"{self.base}/{name}"

    def drop_all(self) -> None:
        for name in self.names:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.close()


def verify_order(run: int, pg_url: str, sqlite_url: str) -> list[tuple[str, str]]:
    """Which store is verified first alternates between runs, as the ingests do."""
    order = [("postgres", pg_url), ("sqlite", sqlite_url)]
    return order[::-1] if run % 2 else order


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="PostgreSQL writer processes")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    lines = cohort_lines(args.events)
    count = len(lines)
    print(f"cohort: {count} events, batch size {args.batch_size}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kapflow-pg-bench-"))
    databases = Databases(args.admin_url)
    pg_rates: list[float] = []
    sqlite_rates: list[float] = []
    parallel_rates: list[float] = []
    pg_verify_ratios: list[float] = []
    sqlite_verify_ratios: list[float] = []
    try:
        for run in range(args.runs):
            pg_url = databases.fresh()
            sqlite_url = f"sqlite:///{work / f'run-{run}.db'}"
            open_store(sqlite_url).close()
            steps: list[tuple[str, Callable[[], tuple[float, dict[str, int]]]]] = [
                ("postgres", functools.partial(ingest, pg_url, lines, args.batch_size)),
                ("sqlite", functools.partial(ingest, sqlite_url, lines, args.batch_size)),
            ]
            if run % 2:  # alternate which store goes first, so neither always runs warm
                steps.reverse()
            measured: dict[str, tuple[float, dict[str, int]]] = {}
            for name, step in steps:
                measured[name] = step()
            (pg_s, pg_stats), (sqlite_s, sqlite_stats) = measured["postgres"], measured["sqlite"]
            if pg_stats != sqlite_stats:
                raise SystemExit(f"stores disagree: postgres {pg_stats} vs sqlite {sqlite_stats}")
            pg_rates.append(count / pg_s)
            sqlite_rates.append(count / sqlite_s)
            verified = {name: verify(url) for name, url in verify_order(run, pg_url, sqlite_url)}
            pg_verify_ratios.append(pg_s / verified["postgres"])
            sqlite_verify_ratios.append(sqlite_s / verified["sqlite"])
            line = (
                f"run {run + 1}: postgres {count / pg_s:,.0f} events/s,"
                f" sqlite {count / sqlite_s:,.0f} events/s;"
                f" verify postgres {count / verified['postgres']:,.0f}/s"
                f" ({pg_verify_ratios[-1]:.2f}x ingest),"
                f" sqlite {count / verified['sqlite']:,.0f}/s"
                f" ({sqlite_verify_ratios[-1]:.2f}x ingest)"
            )
            if args.workers > 1:
                parallel_s = ingest_parallel(
                    databases.fresh(), lines, args.batch_size, args.workers
                )
                parallel_rates.append(count / parallel_s)
                line += f", postgres ×{args.workers} workers {count / parallel_s:,.0f} events/s"
            print(line, flush=True)
    finally:
        databases.drop_all()

    med = statistics.median
    summary = {
        "events": count,
        "runs": args.runs,
        "batch_size": args.batch_size,
        "postgres_events_per_s": round(med(pg_rates)),
        "sqlite_events_per_s": round(med(sqlite_rates)),
        "postgres_over_sqlite": round(med(pg_rates) / med(sqlite_rates), 2),
        "postgres_verify_vs_ingest": round(med(pg_verify_ratios), 2),
        "sqlite_verify_vs_ingest": round(med(sqlite_verify_ratios), 2),
    }
    if parallel_rates:
        summary[f"postgres_{args.workers}_workers_events_per_s"] = round(med(parallel_rates))
        summary[f"postgres_{args.workers}_workers_over_sqlite"] = round(
            med(parallel_rates) / med(sqlite_rates), 2
        )
    print(
        f"median of {args.runs}: postgres {summary['postgres_events_per_s']:,} events/s,"
        f" sqlite {summary['sqlite_events_per_s']:,} events/s,"
        f" ratio postgres/sqlite {summary['postgres_over_sqlite']};"
        f" verify vs ingest: postgres {summary['postgres_verify_vs_ingest']}x,"
        f" sqlite {summary['sqlite_verify_vs_ingest']}x"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

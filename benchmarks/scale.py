"""Does the cost of an event or a tick grow with the store? A big store against a fresh one.

    .venv/bin/python benchmarks/scale.py [--big-events 1000000] [--new-events 50000] [--runs 3]
                                         [--same-dates] [--big-store PATH]

1. Builds the big store once: `kapflow ingest` of a cohort of --big-events, then one
   `kapflow tick` far past the cohort, so every deadline of its clients has fired once
   (a store that has run for a while, not one with a year of clock work pending).
2. Each run (interleaved, medians of --runs): copies the big store, and ingests the same
   file of --new-events events of clients neither store has seen into the copy and into a
   fresh store (`kapflow ingest`, whole processes, start-up included); then one tick on
   each at a time when only those new clients have deadlines due (timed in-process around
   `tick()` alone: a process start would hide it). Same file, same due deadlines: any
   difference is the size of the store.

The new clients arrive after the big store's (their cohort starts two years later), as
they would at a clinic: their tasks fall due after the old ones. `--same-dates` gives them
the big cohort's dates instead (every new due time lands among the old ones: the harsher,
less realistic case for the indexes on due times).

`--big-store PATH` keeps the big store (and its build figures) at PATH, and a later run
given the same PATH starts from it instead of building it again (it is only ever copied).

Targets (issue 10): big-store ingest rate >= 0.9 x fresh; big-store tick <= 2 x fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from core import KAPFLOW, timed_run, write_cohort

from kapflow.demo.cohort import cohort_size_for, generate_cohort, write_jsonl

# The big cohort starts 2026-01-05 (the demo default) and ends within the year.
FAR_PAST_THE_COHORT = "2028-01-01T00:00:00Z"
NEW_CLIENTS_START = datetime(2028, 1, 5, 9, tzinfo=UTC)
# About four months into the new clients' cohort: their early deadlines (assessment and
# integration booking, inactivity) are due, and those of no old client.
TICK_AT = {False: "2028-05-01T00:00:00Z", True: "2026-05-01T00:00:00Z"}

TIMED_TICK = r"""
import json, sys, time
from datetime import datetime
from kapflow.service.clock import deadlines, tick
from kapflow.service.ingest import IngestService
from kapflow.store import open_store
store = open_store(sys.argv[1])
service = IngestService(store)
now = datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00"))
start = time.perf_counter()
due = deadlines(store, service.policy, now)
listed = time.perf_counter() - start
start = time.perf_counter()
report = tick(service, now)
ticked = time.perf_counter() - start
print(json.dumps({"due": len(due), "fired": len(report.fired), "list_s": listed,
                  "tick_s": ticked}))
store.close()
"""


def new_clients(cohort: Path, renamed: Path) -> int:
    """The same kind of cohort under client and event ids no store has seen (`n-…`)."""
    count = 0
    with cohort.open(encoding="utf-8") as src, renamed.open("w", encoding="utf-8") as dst:
        for line in src:
            event = json.loads(line)
            event["subject"] = "n" + event["subject"][1:]
            event["id"] = "n-" + event["id"]
            dst.write(json.dumps(event, separators=(",", ":")) + "\n")
            count += 1
    return count


def timed_tick(db: Path, now: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", TIMED_TICK, f"sqlite:///{db}", now],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def settled_copy(big: Path, copy: Path) -> None:
    """A copy of the big store, on disk before the clock starts: otherwise the kernel is
    still writing gigabytes of the copy back while the ingest runs, and the store's first
    fsync waits for all of it (a store that has been running has long been on disk)."""
    shutil.copyfile(big, copy)
    with copy.open("rb+") as written:
        os.fsync(written.fileno())


def checkpoint(db: Path) -> None:
    """Fold the WAL into the file, so that copying the .db file copies the whole store."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def build_big_store(work: Path, big: Path, events: int) -> dict[str, float]:
    """`kapflow ingest` of a cohort of about `events`, then one tick far past it."""
    big_file = work / "big.jsonl"
    big_count = write_cohort(big_file, events)
    build_s, _ = timed_run([KAPFLOW, "ingest", str(big_file), "--db", f"sqlite:///{big}"])
    start = time.perf_counter()
    subprocess.run(
        [KAPFLOW, "tick", "--now", FAR_PAST_THE_COHORT, "--db", f"sqlite:///{big}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    settle_s = time.perf_counter() - start
    checkpoint(big)
    big_file.unlink()
    return {"events": big_count, "build_s": build_s, "settle_s": settle_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-events", type=int, default=1_000_000)
    parser.add_argument("--new-events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--same-dates", action="store_true", help="new clients in 2026 too")
    parser.add_argument("--big-store", type=Path, help="build the big store here once; reuse it")
    args = parser.parse_args()
    tick_at = TICK_AT[args.same_dates]

    work = Path(tempfile.mkdtemp(prefix="kapflow-scale-"))
    generated = work / "generated.jsonl"
    start = datetime(2026, 1, 5, 9, tzinfo=UTC) if args.same_dates else NEW_CLIENTS_START
    cohort = generate_cohort(clients=cohort_size_for(args.new_events), seed=12, start=start)
    write_jsonl(cohort, generated)
    new_file = work / "new-clients.jsonl"
    new_count = new_clients(generated, new_file)
    generated.unlink()

    big = args.big_store or work / "big.db"
    built = big.with_name(big.name + ".built.json")
    if args.big_store is None or not built.exists():
        build = build_big_store(work, big, args.big_events)
        built.write_text(json.dumps(build))
    else:
        build = json.loads(built.read_text())
        print(f"big store: reusing {big}")
    big_count, build_s = build["events"], build["build_s"]
    print(
        f"big store: {big_count} events in {build_s:.1f} s ({big_count / build_s:,.0f}/s),"
        f" {big.stat().st_size / 1e6:.0f} MB ({big.stat().st_size / big_count:,.0f} B/event"
        f" before VACUUM); first tick to {FAR_PAST_THE_COHORT}: {build['settle_s']:.1f} s"
    )
    print(f"new clients: {new_count} events ({work})")

    fresh_s, big_s, fresh_ticks, big_ticks = [], [], [], []
    for run in range(args.runs):
        copy = work / f"big-{run}.db"
        settled_copy(big, copy)
        seconds, _ = timed_run([KAPFLOW, "ingest", str(new_file), "--db", f"sqlite:///{copy}"])
        big_s.append(seconds)
        fresh = work / f"fresh-{run}.db"
        seconds, _ = timed_run([KAPFLOW, "ingest", str(new_file), "--db", f"sqlite:///{fresh}"])
        fresh_s.append(seconds)
        big_tick = timed_tick(copy, tick_at)
        fresh_tick = timed_tick(fresh, tick_at)
        big_ticks.append(big_tick)
        fresh_ticks.append(fresh_tick)
        print(
            f"run {run + 1}: ingest big {new_count / big_s[-1]:,.0f}/s,"
            f" fresh {new_count / fresh_s[-1]:,.0f}/s;"
            f" tick big {big_tick['tick_s'] * 1000:.0f} ms ({big_tick['due']:.0f} due),"
            f" fresh {fresh_tick['tick_s'] * 1000:.0f} ms ({fresh_tick['due']:.0f} due)"
        )
        for db in (copy, fresh):
            for path in db.parent.glob(db.name + "*"):
                path.unlink()

    med = statistics.median

    def median_of(ticks: list[dict[str, float]], key: str) -> float:
        return med(t[key] for t in ticks)

    summary = {
        "big_store_events": big_count,
        "new_events": new_count,
        "new_clients_dated": "like the big cohort" if args.same_dates else "two years later",
        "runs": args.runs,
        "big_store_build_per_s": round(big_count / build_s),
        "ingest_fresh_per_s": round(new_count / med(fresh_s)),
        "ingest_big_per_s": round(new_count / med(big_s)),
        "ingest_big_vs_fresh": round(med(fresh_s) / med(big_s), 3),
        "tick_due_deadlines_big": median_of(big_ticks, "due"),
        "tick_due_deadlines_fresh": median_of(fresh_ticks, "due"),
        "tick_ms_big": round(median_of(big_ticks, "tick_s") * 1000, 1),
        "tick_ms_fresh": round(median_of(fresh_ticks, "tick_s") * 1000, 1),
        "tick_big_vs_fresh": round(
            median_of(big_ticks, "tick_s") / median_of(fresh_ticks, "tick_s"), 2
        ),
        "deadline_listing_ms_big": round(median_of(big_ticks, "list_s") * 1000, 1),
        "deadline_listing_ms_fresh": round(median_of(fresh_ticks, "list_s") * 1000, 1),
    }
    print(json.dumps(summary, indent=2))
    targets = {
        "ingest_big_vs_fresh >= 0.9": summary["ingest_big_vs_fresh"] >= 0.9,
        "tick_big_vs_fresh <= 2": summary["tick_big_vs_fresh"] <= 2,
    }
    for name, met in targets.items():
        print(f"{'MET ' if met else 'MISS'} {name}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

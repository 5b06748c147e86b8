"""Core benchmark (issue: engine, ingest, verify, memory), measured side by side in one run.

    .venv/bin/python benchmarks/core.py [--events 50000] [--runs 3]
    .venv/bin/python benchmarks/core.py --profile [--events 50000] [--top 40]

Prints, as medians over --runs:
- engine apply rate vs a naive baseline that builds a python-statemachine per event;
- `kapflow ingest` (a real subprocess, process start included) vs a bare SQLite append of
  the same JSON lines in one transaction (also a subprocess, process start included);
- `kapflow verify` rate over that store, as a multiple of the ingest rate: with its default
  `--jobs` (one process per CPU) and with `--jobs 1` (in one process);
- peak RSS of the ingest process, for the full file and for a file 4× smaller (streaming:
  memory must not grow with the file).

`--profile` instead runs `kapflow ingest` of the cohort in this process (the CLI's own
code path, output discarded) under cProfile and prints the top functions by cumulative
time, then the top by own time: what to attack first.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
KAPFLOW = str(Path(sys.executable).parent / "kapflow")

BARE_APPEND = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, body TEXT NOT NULL)")
conn.execute("BEGIN")
with open(sys.argv[1], encoding="utf-8") as f:
    conn.executemany("INSERT INTO events (body) VALUES (?)", ((line,) for line in f))
conn.execute("COMMIT")
"""


def write_cohort(path: Path, events_wanted: int) -> int:
    from kapflow.demo.cohort import cohort_size_for, generate_cohort, write_jsonl

    return write_jsonl(generate_cohort(clients=cohort_size_for(events_wanted), seed=11), path)


def timed_run(command: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of a child process, via wait4."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return elapsed, int(usage.ru_maxrss)


def engine_rates(lines: list[str]) -> tuple[float, float]:
    from events import CloudEvent, parse_event
    from workflow.client import ClientSnapshot
    from workflow.engine import apply
    from workflow.policy import DEFAULT_POLICY
    from workflow.states.pathway import TRIGGERS, CarePathway
    from workflow.states.rules import RuleContext

    events = [e for e in map(parse_event, lines) if isinstance(e, CloudEvent)]
    clients: dict[str, ClientSnapshot] = {}
    start = time.perf_counter()
    for event in events:
        client = clients.get(event.subject) or ClientSnapshot(event.subject)
        outcome = apply(client, event)
        if outcome.recorded:
            clients[event.subject] = outcome.client
    fast = len(events) / (time.perf_counter() - start)

    # Naive baseline: a python-statemachine per event, at the client's current state.
    sample = events[: max(len(events) // 10, 1000)]
    clients = {}
    warnings.simplefilter("ignore", DeprecationWarning)
    start = time.perf_counter()
    for event in sample:
        client = clients.get(event.subject) or ClientSnapshot(event.subject)
        machine = CarePathway(start_value=client.state)
        try:
            machine.send(TRIGGERS[event.type], ctx=RuleContext(client, event, DEFAULT_POLICY))
        except Exception:  # noqa: BLE001 - refusals are outcomes here
            continue
        outcome = apply(client, event)  # the same facts, so both walk the same path
        if outcome.recorded:
            clients[event.subject] = outcome.client
    naive = len(sample) / (time.perf_counter() - start)
    return fast, naive


def profile_ingest(cohort: Path, db: Path, top: int) -> None:
    """cProfile of `kapflow ingest FILE` run in-process (no process start, no output)."""
    from kapflow.entrypoints.cli import main as kapflow

    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()) as discarded:
        profiler.enable()
        status = kapflow(["ingest", str(cohort), "--db", f"sqlite:///{db}"])
        profiler.disable()
        discarded.truncate(0)
    if status != 0:
        raise SystemExit("kapflow ingest failed under the profiler")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process ingest")
    parser.add_argument("--top", type=int, default=40, help="functions listed by --profile")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kapflow-bench-"))
    cohort = work / "cohort.jsonl"
    count = write_cohort(cohort, args.events)
    if args.profile:
        print(f"cohort: {count} events ({work}); profiling kapflow ingest in-process")
        profile_ingest(cohort, work / "profile.db", args.top)
        return
    quarter = work / "quarter.jsonl"
    with cohort.open() as src, quarter.open("w") as dst:
        for n, line in enumerate(src):
            if n >= count // 4:
                break
            dst.write(line)
    lines = cohort.read_text().splitlines()
    print(f"cohort: {count} events, {cohort.stat().st_size / 1e6:.1f} MB ({work})")

    fast_rates, naive_rates, ratios = [], [], []
    ingest_rates, bare_rates, ingest_ratio, verify_rates, verify_ratio = [], [], [], [], []
    verify1_rates, verify1_ratio = [], []
    rss_full, rss_quarter = [], []
    for run in range(args.runs):
        fast, naive = engine_rates(lines)
        fast_rates.append(fast)
        naive_rates.append(naive)
        ratios.append(fast / naive)

        bare_db = work / f"bare-{run}.db"
        bare_s, _ = timed_run([sys.executable, "-c", BARE_APPEND, str(cohort), str(bare_db)])
        db = work / f"kapflow-{run}.db"
        ingest_s, rss = timed_run([KAPFLOW, "ingest", str(cohort), "--db", f"sqlite:///{db}"])
        verify_s, _ = timed_run([KAPFLOW, "verify", "--db", f"sqlite:///{db}"])
        verify1_s, _ = timed_run([KAPFLOW, "verify", "--jobs", "1", "--db", f"sqlite:///{db}"])
        q_db = work / f"quarter-{run}.db"
        _, rss_q = timed_run([KAPFLOW, "ingest", str(quarter), "--db", f"sqlite:///{q_db}"])
        bare_rates.append(count / bare_s)
        ingest_rates.append(count / ingest_s)
        ingest_ratio.append(bare_s / ingest_s)
        verify_rates.append(count / verify_s)
        verify_ratio.append(ingest_s / verify_s)
        verify1_rates.append(count / verify1_s)
        verify1_ratio.append(ingest_s / verify1_s)
        rss_full.append(rss / 1024)
        rss_quarter.append(rss_q / 1024)
        print(
            f"run {run + 1}: engine {fast:,.0f}/s vs naive {naive:,.0f}/s;"
            f" ingest {count / ingest_s:,.0f}/s vs bare {count / bare_s:,.0f}/s;"
            f" verify {count / verify_s:,.0f}/s ({count / verify1_s:,.0f}/s with --jobs 1);"
            f" rss {rss / 1024:.0f} MiB (quarter file {rss_q / 1024:.0f} MiB)"
        )

    from kapflow.service.verification import default_jobs

    med = statistics.median
    summary = {
        "events": count,
        "runs": args.runs,
        "engine_apply_per_s": round(med(fast_rates)),
        "naive_statemachine_per_s": round(med(naive_rates)),
        "engine_vs_naive": round(med(ratios), 1),
        "ingest_per_s": round(med(ingest_rates)),
        "bare_sqlite_append_per_s": round(med(bare_rates)),
        "ingest_vs_bare": round(med(ingest_ratio), 3),
        "verify_per_s": round(med(verify_rates)),
        "verify_vs_ingest": round(med(verify_ratio), 2),
        "verify_jobs": default_jobs(),
        "verify_one_process_per_s": round(med(verify1_rates)),
        "verify_one_process_vs_ingest": round(med(verify1_ratio), 2),
        "ingest_peak_rss_mib": round(med(rss_full), 1),
        "ingest_peak_rss_mib_quarter_file": round(med(rss_quarter), 1),
    }
    print(json.dumps(summary, indent=2))
    targets = {
        "engine_vs_naive >= 20": summary["engine_vs_naive"] >= 20,
        "ingest_vs_bare >= 0.15": summary["ingest_vs_bare"] >= 0.15,
        "verify_vs_ingest >= 3": summary["verify_vs_ingest"] >= 3,
    }
    for name, met in targets.items():
        print(f"{'MET ' if met else 'MISS'} {name}")


if __name__ == "__main__":
    main()

"""Late delivery: the demo cohort in event-time order, and with 10 % of its events delivered
1–300 lines late, must give equal clients, at ≥ 0.8× the in-order ingest rate (issue 17).

    python benchmarks/late_delivery.py --events 50000 --runs 3

Whole `kapflow ingest` processes into fresh SQLite stores, the two deliveries interleaved,
medians of `--runs`. Prints both rates, their ratio, and whether every client (state, open
tasks, unresolved deviations) is the same.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kapflow.demo.cohort import cohort_size_for, generate_cohort, write_jsonl
from kapflow.store import open_store


def late_order(events: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """`share` of the events each moved 1–300 lines later than its place."""
    rng = random.Random(seed)
    keyed = [
        (index + (rng.randint(1, 300) + 0.5 if rng.random() < share else 0), index)
        for index in range(len(events))
    ]
    return [events[index] for _, index in sorted(keyed)]


def ingest(path: Path, db: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kapflow.entrypoints.cli",
            "ingest",
            str(path),
            "--db",
            f"sqlite:///{db}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its summary line; the rates are timed here
    )
    return time.perf_counter() - started


def clients(db: Path) -> dict[str, Any]:
    store = open_store(f"sqlite:///{db}")
    try:
        seen = {}
        for client_id in store.client_ids():
            client = store.get_client(client_id)
            assert client is not None
            seen[client_id] = (
                client.state,
                sorted((t.id, t.status, t.owner, t.priority) for t in client.open_tasks.values()),
                sorted((d["session"], tuple(d["rules"])) for d in client.open_deviations),
            )
        return seen
    finally:
        store.close()


def rederivation_cost(lengths: tuple[int, ...] = (10, 20, 40, 80), repeat: int = 50) -> None:
    """The cost of folding in one late fact at the start of a client's facts (the worst
    case: every later fact applied again), in process, by history length."""
    from events.registry import parse_event_object
    from workflow.client import ClientSnapshot
    from workflow.derivation import Fact, fact_key, fold, record_fact

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from builders import Journey

    for length in lengths:
        j = Journey("c-bench")
        inquiry = parse_event_object(j.inquiry())
        raw = [*j.to_prepared()[1:]]
        while len(raw) < length:
            raw += [j.booking("preparation", f"p-{len(raw)}"), j.preparation(1)]
        events = [parse_event_object(e) for e in raw[:length]]
        facts = [Fact(fact_key(e), e) for e in events]  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(repeat):
            derivation, _ = fold(ClientSnapshot("c-bench"), facts)
            current = derivation.client
            started = time.perf_counter()
            outcome = record_fact(derivation, current, inquiry)  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - started)
            assert outcome.recorded and outcome.rederived == length
        print(json.dumps({"history_length": length, "late_fact_at_start_ms": round(best * 1e3, 3)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.10)
    parser.add_argument(
        "--rederivation", action="store_true", help="only the cost of one late fact by length"
    )
    args = parser.parse_args()
    if args.rederivation:
        rederivation_cost()
        return 0
    events = sorted(generate_cohort(cohort_size_for(args.events), seed=7), key=lambda e: e["time"])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        in_order, late = work / "in-order.jsonl", work / "late.jsonl"
        write_jsonl(events, in_order)
        write_jsonl(late_order(events, args.share, seed=17), late)
        times: dict[str, list[float]] = {"in_order": [], "late": []}
        for run in range(args.runs):
            for name, path in (("in_order", in_order), ("late", late)):
                times[name].append(ingest(path, work / f"{name}-{run}.db"))
        same = clients(work / "in_order-0.db") == clients(work / "late-0.db")
    rate = {name: len(events) / statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "events": len(events),
                "late_share": args.share,
                "in_order_events_per_s": round(rate["in_order"]),
                "late_events_per_s": round(rate["late"]),
                "late_vs_in_order": round(rate["late"] / rate["in_order"], 3),
                "clients_equal": same,
                "runs": args.runs,
            },
            indent=2,
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

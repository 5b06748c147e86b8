"""HTTP benchmark of `kapflow serve` (issue 3): latency at a fixed load, and batch throughput.

    .venv/bin/python benchmarks/http_load.py [--rate 300] [--seconds 20] [--batch-events 20000]
                                             [--runs 3]

The server is a real `kapflow serve --insecure-dev` subprocess on a free loopback port with a
temporary SQLite database; this process is the load generator (raw asyncio HTTP/1.1 over
keep-alive connections, so the client costs little CPU next to the server on a small machine).
Everything is bounded in count and time and talks to 127.0.0.1 only.

1. Single-event POSTs, open loop: one event every 1/rate s for --seconds, sent on schedule
   whatever the responses do (latency is measured from the scheduled send time, so a slow
   server cannot hide its queueing: no coordinated omission). Reports achieved throughput
   and p50/p99/max latency, medians of --runs runs (each on a fresh server and database).
   Target: p99 < 50 ms at 300 events/s.
2. Batch POSTs (1000 events each, one in flight, so per-client order is the file's order)
   vs `kapflow ingest` of the same JSON lines (a subprocess, process start included),
   medians of --runs runs, each on a fresh database. Target: HTTP >= 0.5x ingest.
Events come from kapflow.demo.cohort.generate_cohort.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KAPFLOW = str(Path(sys.executable).parent / "kapflow")
MAX_CONNECTIONS = 256


def cohort(events_wanted: int, seed: int) -> list[dict[str, Any]]:
    from kapflow.demo.cohort import cohort_size_for, generate_cohort

    return list(generate_cohort(clients=cohort_size_for(events_wanted), seed=seed))


class Server:
    """`kapflow serve --insecure-dev --port 0` in a subprocess; learns its port from stderr."""

    def __init__(self, db: str) -> None:
        self.process = subprocess.Popen(
            [KAPFLOW, "serve", "--insecure-dev", "--port", "0", "--db", db],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        assert self.process.stderr is not None
        while True:
            line = self.process.stderr.readline()
            found = re.search(r" on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
            if not line and self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("kapflow serve did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed by the server (keep-alive timeout)")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


class Pool:
    """Keep-alive connections; a new one whenever all are busy (open-loop never waits)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Connection] = []
        self.opened = 0

    async def post(self, body: bytes) -> tuple[int, bytes]:
        while self.idle:
            connection = self.idle.pop()
            try:
                status, body_out = await connection.post(body)
            except (ConnectionError, asyncio.IncompleteReadError):
                # An idle connection the server closed (uvicorn's keep-alive timeout): it
                # never saw this request; use another (events are idempotent anyway).
                connection.writer.close()
                continue
            self.idle.append(connection)
            return status, body_out
        if self.opened >= MAX_CONNECTIONS:
            raise RuntimeError("too many connections: the server is not keeping up")
        self.opened += 1
        connection = Connection(*await asyncio.open_connection("127.0.0.1", self.port))
        status, body_out = await connection.post(body)
        self.idle.append(connection)
        return status, body_out

    def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()


async def open_loop(port: int, bodies: list[bytes], rate: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pool = Pool(port)
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    errors = 0

    async def send(body: bytes, due: float) -> None:
        nonlocal errors
        try:
            status, answer = await pool.post(body)
        except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError):
            errors += 1
            return
        latencies.append(loop.time() - due)
        if status == 200:
            outcomes[json.loads(answer)["outcome"]] += 1
        else:
            errors += 1

    start = loop.time() + 0.2
    tasks = []
    for i, body in enumerate(bodies):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(body, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    pool.close()
    latencies.sort()
    return {
        "sent": len(bodies),
        "seconds": elapsed,
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": 1000 * latencies[-1],
        "errors": errors,
        "connections": pool.opened,
        "outcomes": dict(outcomes),
    }


async def batches(port: int, bodies: list[bytes]) -> tuple[float, collections.Counter[str]]:
    pool = Pool(port)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    for body in bodies:
        status, answer = await pool.post(body)
        if status != 200:
            raise SystemExit(f"batch POST failed with {status}")
        outcomes.update(item["outcome"] for item in json.loads(answer))
    elapsed = time.perf_counter() - started
    pool.close()
    return elapsed, outcomes


def ingest_seconds(path: Path, db: str) -> tuple[float, collections.Counter[str]]:
    started = time.perf_counter()
    result = subprocess.run(
        [KAPFLOW, "ingest", str(path), "--db", db],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    return elapsed, collections.Counter(
        json.loads(line)["outcome"] for line in result.stdout.splitlines()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="events/s offered (open loop)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the open loop")
    parser.add_argument("--batch-events", type=int, default=20000, help="events for part 2")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch POST")
    parser.add_argument("--runs", type=int, default=3, help="runs of each part (medians)")
    args = parser.parse_args()
    if args.rate * args.seconds > 50_000 or args.batch_events > 200_000:
        raise SystemExit("refusing an unbounded run: keep rate×seconds ≤ 50000, batches ≤ 200000")

    with tempfile.TemporaryDirectory(prefix="kapflow-http-bench-") as folder:
        tmp = Path(folder)
        # 1. single-event POSTs at a fixed offered load ---------------------------------
        count = int(args.rate * args.seconds)
        singles = [json.dumps(e).encode() for e in cohort(count, seed=5)][:count]
        reports = []
        for run in range(args.runs):
            server = Server(f"sqlite:///{tmp / f'open-loop-{run}.db'}")
            try:
                reports.append(asyncio.run(open_loop(server.port, singles, args.rate)))
            finally:
                server.stop()
            r = reports[-1]
            print(
                f"  run {run + 1}: {r['throughput']:.0f} events/s, p50 {r['p50_ms']:.1f} ms,"
                f" p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms, errors {r['errors']},"
                f" connections {r['connections']}"
            )

        def median(key: str) -> float:
            return statistics.median(r[key] for r in reports)

        print(
            f"single-event POST, open loop at {args.rate:.0f} events/s for {args.seconds:.0f} s,"
            f" median of {args.runs}: {median('throughput'):.0f} events/s achieved,"
            f" p50 {median('p50_ms'):.1f} ms, p99 {median('p99_ms'):.1f} ms,"
            f" max {median('max_ms'):.1f} ms, errors {sum(r['errors'] for r in reports)}"
        )
        print(f"  outcomes (run 1) {reports[0]['outcomes']}")
        met = median("p99_ms") < 50 and not any(r["errors"] for r in reports)
        print(f"  target p99 < 50 ms at {args.rate:.0f} events/s: {'MET' if met else 'MISSED'}")

        # 2. batch POSTs vs kapflow ingest ------------------------------------------------
        events = cohort(args.batch_events, seed=11)
        lines = tmp / "events.jsonl"
        lines.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        bodies = [
            json.dumps(events[i : i + args.batch_size]).encode()
            for i in range(0, len(events), args.batch_size)
        ]
        http_rates, cli_rates = [], []
        for run in range(args.runs):
            seconds, cli_outcomes = ingest_seconds(lines, f"sqlite:///{tmp / f'cli-{run}.db'}")
            cli_rates.append(len(events) / seconds)
            server = Server(f"sqlite:///{tmp / f'http-{run}.db'}")
            try:
                seconds, http_outcomes = asyncio.run(batches(server.port, bodies))
            finally:
                server.stop()
            http_rates.append(len(events) / seconds)
            if http_outcomes != cli_outcomes:
                print(
                    f"  note: outcomes differ: http {dict(http_outcomes)} cli {dict(cli_outcomes)}"
                )
        http_rate, cli_rate = statistics.median(http_rates), statistics.median(cli_rates)
        print(
            f"batch POST ({args.batch_size} events each, one in flight), {len(events)} events,"
            f" median of {args.runs}: {http_rate:.0f} events/s"
        )
        print(f"kapflow ingest (subprocess, start included), same events: {cli_rate:.0f} events/s")
        ratio = http_rate / cli_rate
        verdict = "MET" if ratio >= 0.5 else "MISSED"
        print(f"  HTTP / ingest = {ratio:.2f}x (target >= 0.5x: {verdict})")
        print(f"  cpu count {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A `kapflow ingest` killed with SIGKILL loses nothing committed and never half-applies:
ingesting the same file again ends with the same store as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import KAPFLOW, kapflow

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.store.codec import StorageCodec

# Everything an ingest records, without the wall-clock record time and the hashes that
# cover it (those differ between any two runs by design).
COMPARABLE = {
    "history": "SELECT client_id, seq, source, event_id, type, occurred_at, pathway_version,"
    " from_state, to_state, event, outcome FROM history ORDER BY client_id, seq",
    "clients": "SELECT client_id, state, seq, snapshot FROM clients ORDER BY client_id",
    "tasks": "SELECT task_id, client_id, status, owner, due, task FROM tasks ORDER BY task_id",
    "receipts": "SELECT source, event_id, client_id, outcome FROM receipts"
    " ORDER BY source, event_id",
    "rejections": "SELECT key_source, key_id, reasons, original FROM rejections"
    " ORDER BY key_source, key_id",
    "parked": "SELECT source, event_id, event FROM parked ORDER BY source, event_id",
    "outbox": "SELECT kind, client_id, seq, key_source, key_id FROM outbox"
    " ORDER BY kind, client_id, seq, key_source, key_id",
}


def snapshot_of(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    codec = StorageCodec()
    try:
        tables = {name: conn.execute(sql).fetchall() for name, sql in COMPARABLE.items()}
    finally:
        conn.close()
    # The snapshot's last_hash covers the record time too; the rest must match.
    tables["clients"] = [
        (*row[:3], {k: v for k, v in json.loads(codec.decode(row[3])).items() if k != "last_hash"})
        for row in tables["clients"]
    ]
    return tables


def history_rows(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT count(*) FROM history").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkilled_ingest_then_reingest_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    events = tmp_path / "cohort.jsonl"
    total = write_jsonl(generate_cohort(clients=300, seed=3), events)
    reference = tmp_path / "reference.db"
    kapflow("ingest", str(events), "--batch-size", "100", db=f"sqlite:///{reference}")

    crashed = tmp_path / "crashed.db"
    process = subprocess.Popen(
        [KAPFLOW, "ingest", str(events), "--batch-size", "100", "--db", f"sqlite:///{crashed}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while history_rows(crashed) < total // 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = history_rows(crashed)
    assert 0 < interrupted_at < total, "the kill must land mid-stream"

    second = kapflow("ingest", str(events), "--batch-size", "100", db=f"sqlite:///{crashed}")
    outcomes = [json.loads(line)["outcome"] for line in second.stdout.splitlines()]
    assert outcomes.count("duplicate") >= interrupted_at  # the committed part is recognised

    assert snapshot_of(crashed) == snapshot_of(reference)
    assert "verify: OK" in kapflow("verify", db=f"sqlite:///{crashed}").stdout

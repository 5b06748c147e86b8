"""Auditors replay any client as of any time and prove nothing was altered."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta

from builders import Journey
from conftest import Clinic

from kapflow.service.audit import export_csv, export_jsonl, replay, verify
from kapflow.service.ingest import IngestService
from kapflow.store.codec import StorageCodec


def test_replay_as_of_a_time_shows_the_state_then(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared())
    cleared_at = j.now
    clinic.send(j.preparation(1, ready=True), *j.dosing("s-1"))
    history = clinic.store.history("c-1")
    assert replay(history, "c-1", as_of=cleared_at).client.state == "cleared"
    assert replay(history, "c-1", as_of=cleared_at - timedelta(minutes=1)).client.state == (
        "assessed"
    )
    assert replay(history, "c-1").client.state == "dosed"


def test_replay_known_at_shows_what_kapflow_had_recorded(sqlite_url: str) -> None:
    from kapflow.store import open_store

    store = open_store(sqlite_url)
    clock = [datetime(2026, 2, 1, tzinfo=UTC)]
    service = IngestService(store, clock=lambda: clock[0])
    j = Journey()
    service.ingest_batch(j.to_assessed())
    clock[0] = datetime(2026, 3, 1, tzinfo=UTC)
    service.ingest_batch([j.evaluation()])
    history = store.history("c-1")
    assert replay(history, "c-1", known_at=datetime(2026, 2, 15, tzinfo=UTC)).client.state == (
        "assessed"
    )
    assert replay(history, "c-1", known_at=datetime(2026, 3, 2, tzinfo=UTC)).client.state == (
        "cleared"
    )
    store.close()


def test_verify_passes_on_an_untouched_store(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"))
    report = verify(clinic.store)
    assert report.ok and report.entries == 8 and report.clients == 1


def _tamper(sqlite_url: str, sql: str) -> None:
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    conn.execute(sql)
    conn.commit()
    conn.close()


def _rewrite(sqlite_url: str, table: str, column: str, where: str, old: str, new: str) -> None:
    """An insider edits stored text in place: read through the storage codec, changed,
    stored again the same way (the values are compressed, so SQL `replace` cannot)."""
    codec = StorageCodec()
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    rows = conn.execute(f"SELECT rowid, {column} FROM {table} WHERE {where}").fetchall()
    for rowid, value in rows:
        changed = codec.encode(codec.decode(value).replace(old, new))
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (changed, rowid))
    conn.commit()
    conn.close()


def test_verify_detects_an_altered_event(clinic: Clinic, sqlite_url: str) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"))
    _rewrite(
        sqlite_url,
        "history",
        "event",
        "seq = 6",
        '"chaperone_confirmed":true',
        '"chaperone_confirmed":false',
    )
    kinds = {(d.seq, d.kind) for d in verify(clinic.store).divergences}
    assert (6, "chain") in kinds and (6, "outcome") in kinds


def test_verify_detects_a_deleted_entry(clinic: Clinic, sqlite_url: str) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    _tamper(sqlite_url, "DELETE FROM history WHERE seq = 2")
    kinds = {d.kind for d in verify(clinic.store).divergences}
    assert {"gap", "chain"} <= kinds


def test_verify_detects_a_rewritten_snapshot(clinic: Clinic, sqlite_url: str) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    _rewrite(sqlite_url, "clients", "snapshot", "1", '"state":"prepared"', '"state":"integrating"')
    assert [d.kind for d in verify(clinic.store).divergences] == ["snapshot"]


def test_verify_detects_a_recomputed_chain_with_a_changed_outcome(
    clinic: Clinic, sqlite_url: str
) -> None:
    """Even a forger who rewrites the hashes cannot change what the engine would decide."""
    from kapflow.store.base import chain_hash
    from kapflow.store.sqlite import HISTORY_COLUMNS

    j = Journey()
    clinic.send(*j.to_assessed())
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    rows = conn.execute(f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY seq").fetchall()
    previous = "0" * 64
    codec = StorageCodec()
    for row in rows:
        row = list(row)
        row[10:12] = [codec.decode(value) for value in row[10:12]]
        if row[1] == 3:
            row[9] = "ineligible"
        digest = chain_hash(previous, *row[0:12])
        conn.execute(
            "UPDATE history SET to_state=?, prev_hash=?, hash=? WHERE seq=?",
            (row[9], previous, digest, row[1]),
        )
        previous = digest
    conn.commit()
    kinds = [d.kind for d in verify(clinic.store).divergences]
    assert "state" in kinds


def test_export_gives_json_lines_and_csv_for_auditors(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    out = io.StringIO()
    assert export_jsonl(clinic.store.iter_history(), out) == 5
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["event"]["type"] == "scheduling.inquiry_received"
    out = io.StringIO()
    export_csv(clinic.store.iter_history(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[2]["to_state"] == "assessed"
    assert rows[2]["tasks_opened"] == "refer-medical-evaluation;verify-insurance-benefits"

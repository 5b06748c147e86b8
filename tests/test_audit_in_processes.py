"""An auditor gets the same verdict however many processes `kapflow verify` uses: the
clients are shared out between processes, and every broken chain, replay divergence and
snapshot mismatch is still found and reported in the same order, on SQLite and PostgreSQL,
encrypted or not."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from builders import Journey
from conftest import Clinic
from test_cli import kapflow

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.service import verification
from kapflow.service.audit import VerifyReport, verify, verify_by_scan
from kapflow.store import open_store
from kapflow.store.base import EventStore
from kapflow.store.codec import (
    ENCRYPTION_KEY_ENV,
    StorageCodec,
    cipher_from_environment,
    generate_key,
)
from kapflow.store.sql import history_context, snapshot_context
from workflow.policy import CarePolicy

# Runs one statement on the database directly (an insider, not kapflow) and returns its rows.
Execute = Callable[[str, tuple[Any, ...]], list[Any]]


def recorded_cohort(url: str, tmp_path: Path, clients: int = 24) -> None:
    events = tmp_path / "cohort.jsonl"
    write_jsonl(generate_cohort(clients=clients, seed=7), events)
    kapflow("ingest", str(events), db=url)


def clients_to_tamper_with(store: EventStore) -> list[str]:
    """Five clients spread over the cohort (so over several batches), each with an
    assessment on record that is not its last entry (so an age can be forged, and an
    entry after it removed)."""
    assessed = [
        client_id
        for client_id in store.client_ids()
        if any(e.type == "clinician.assessment_completed" for e in store.history(client_id)[:-1])
    ]
    assert len(assessed) >= 20, "the cohort is too small to tamper with"
    return assessed[:: len(assessed) // 5][:5]


def tamper(execute: Execute, codec: StorageCodec, clients: list[str], p: str) -> None:
    """An insider edits the database directly, one way per client: an assessment forged
    to an underage client, an entry deleted, a snapshot rewritten, a whole history
    deleted."""
    forged, gap, snapshot, no_history = clients[:4]
    [(seq, event)] = execute(
        f"SELECT seq, event FROM history WHERE client_id = {p}"
        " AND type = 'clinician.assessment_completed' ORDER BY seq LIMIT 1",
        (forged,),
    )
    # With the key, as an insider holding it would: each value sealed for its own row.
    place = history_context(forged, seq, "event")
    text = re.sub(r'"age_years":\d+', '"age_years":17', codec.decode(event, place))
    execute(
        f"UPDATE history SET event = {p} WHERE client_id = {p} AND seq = {p}",
        (codec.encode(text, place), forged, seq),
    )
    execute(f"DELETE FROM history WHERE client_id = {p} AND seq = 2", (gap,))
    [(stored,)] = execute(f"SELECT snapshot FROM clients WHERE client_id = {p}", (snapshot,))
    record = json.loads(codec.decode(stored, snapshot_context(snapshot)))
    record["preparation_sessions"] = record.get("preparation_sessions", 0) + 5
    execute(
        f"UPDATE clients SET snapshot = {p} WHERE client_id = {p}",
        (
            codec.encode(json.dumps(record, separators=(",", ":")), snapshot_context(snapshot)),
            snapshot,
        ),
    )
    execute(f"DELETE FROM history WHERE client_id = {p}", (no_history,))


def delete_snapshot(execute: Execute, client_id: str, p: str) -> None:
    """Leaves a history that no client id leads to."""
    execute(f"DELETE FROM clients WHERE client_id = {p}", (client_id,))


def assert_same_report_for_any_jobs(
    store: EventStore, clients: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify` in 2 and 3 processes gives the report one gives; with a history that no
    client id leads to, by scanning it all again."""
    one = verify(store, jobs=1)
    kinds = {(d.client_id, d.kind) for d in one.divergences}
    forged, gap, snapshot, no_history = clients[:4]
    assert {(forged, "chain"), (gap, "gap"), (gap, "chain")} <= kinds
    assert {(snapshot, "snapshot"), (no_history, "gap")} <= kinds
    assert any(d.client_id == forged and d.kind in ("outcome", "state") for d in one.divergences)
    no_snapshot = clients[4:]
    if no_snapshot:
        assert (no_snapshot[0], "snapshot") in kinds
    # Batches of two clients: shared out between the workers and this process, and
    # finished in any order.
    monkeypatch.setattr(verification, "CLIENTS_PER_BATCH", 2)
    scans: list[EventStore] = []

    def scan(store: EventStore, policy: CarePolicy) -> VerifyReport:
        scans.append(store)
        return verify_by_scan(store, policy)

    monkeypatch.setattr(verification, "verify_by_scan", scan)
    for jobs in (2, 3):
        assert verify(store, jobs=jobs).as_dict() == one.as_dict()
    assert verify(store, jobs=2).as_dict() == one.as_dict()  # the store reads on after a run
    assert len(scans) == (3 if no_snapshot else 0)


def sqlite_execute(url: str) -> Execute:
    def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql, params).fetchall()

    return execute


def postgres_execute(url: str) -> Execute:
    def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    return execute


def tampered_sqlite_store(sqlite_url: str, tmp_path: Path) -> tuple[EventStore, list[str]]:
    """A recorded cohort in SQLite with five clients tampered with (see `tamper`)."""
    recorded_cohort(sqlite_url, tmp_path)
    store = open_store(sqlite_url)
    clients = clients_to_tamper_with(store)
    tamper(sqlite_execute(sqlite_url), StorageCodec(), clients, "?")
    return store, clients


def test_verify_in_two_processes_reports_tampering_exactly_as_one_on_sqlite(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clients = tampered_sqlite_store(sqlite_url, tmp_path)
    assert_same_report_for_any_jobs(store, clients[:4], monkeypatch)
    one = kapflow("verify", "--jobs", "1", db=sqlite_url, check=False)
    two = kapflow("verify", "--jobs", "2", db=sqlite_url, check=False)
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout and "DIVERGENCE" in one.stdout
    delete_snapshot(sqlite_execute(sqlite_url), clients[4], "?")
    assert_same_report_for_any_jobs(store, clients, monkeypatch)
    store.close()


@pytest.mark.postgres
def test_verify_in_two_processes_reports_tampering_exactly_as_one_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_cohort(postgres_url, tmp_path)
    store = open_store(postgres_url)
    try:
        clients = clients_to_tamper_with(store)
        tamper(postgres_execute(postgres_url), StorageCodec(), clients, "%s")
        assert_same_report_for_any_jobs(store, clients[:4], monkeypatch)
        one = kapflow("verify", "--json", "--jobs", "1", db=postgres_url, check=False)
        two = kapflow("verify", "--json", "--jobs", "2", db=postgres_url, check=False)
        assert one.returncode == two.returncode == 1
        assert one.stdout == two.stdout
        delete_snapshot(postgres_execute(postgres_url), clients[4], "%s")
        assert_same_report_for_any_jobs(store, clients, monkeypatch)
    finally:
        store.close()


def test_verify_in_processes_reports_an_encrypted_store_exactly_as_one(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    recorded_cohort(sqlite_url, tmp_path)
    codec = StorageCodec(cipher_from_environment())
    store = open_store(sqlite_url, cipher=codec.cipher)
    clients = clients_to_tamper_with(store)
    tamper(sqlite_execute(sqlite_url), codec, clients, "?")
    # Forked workers open the store with this process's cipher, key or no key around.
    with monkeypatch.context() as without_key:
        without_key.delenv(ENCRYPTION_KEY_ENV)
        assert_same_report_for_any_jobs(store, clients[:4], monkeypatch)
    # Spawned workers (where there is no fork) take the key from the environment.
    monkeypatch.setattr(verification, "START_METHOD", "spawn")
    assert verify(store, jobs=2).as_dict() == verify(store, jobs=1).as_dict()
    store.close()


def test_verify_of_an_in_memory_store_stays_in_this_process() -> None:
    """No other process can open it: verified here, whatever `jobs` says."""
    clinic = Clinic(open_store("sqlite:///"))
    for client_id in ("c-1", "c-2", "c-3"):
        j = Journey(client_id)
        clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    report = verify(clinic.store, jobs=2)
    assert report.ok and report.clients == 3 and report.entries == 21
    assert report.as_dict() == verify(clinic.store, jobs=1).as_dict()
    clinic.store.close()


def _killed(clients: list[tuple[int, str]]) -> None:
    os._exit(137)  # what the out-of-memory killer leaves of a worker


def test_a_verify_worker_that_dies_leaves_its_clients_to_be_verified_here(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clients = tampered_sqlite_store(sqlite_url, tmp_path)
    one = verify(store, jobs=1)
    monkeypatch.setattr(verification, "CLIENTS_PER_BATCH", 2)
    monkeypatch.setattr(verification, "_verify_in_worker", _killed)
    assert verify(store, jobs=2).as_dict() == one.as_dict()
    store.close()


def test_verify_refuses_a_number_of_processes_below_one(sqlite_url: str) -> None:
    result = kapflow("verify", "--jobs", "0", db=sqlite_url, check=False)
    assert result.returncode != 0 and "--jobs" in result.stderr

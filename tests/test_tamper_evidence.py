"""Issue 18, finding 3: what an insider with the database can edit, and how verify sees it.

Each test records a small demo cohort (and one early message, parked), edits the SQLite
file directly as someone with the database but not the service would, and asks
`kapflow verify` what changed: the rows kept beside the histories are recomputed from
them (service/derived_rows.py); what no history derives is pinned by the store head an
auditor kept outside the store (service/store_head.py).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from builders import Journey
from conftest import FIXED_NOW
from test_cli import kapflow

from kapflow.demo.cohort import generate_cohort
from kapflow.service.audit import verify
from kapflow.service.ingest import IngestService
from kapflow.service.store_head import check_store_head
from kapflow.store import open_store
from kapflow.store.base import BatchWrites, EventStore, entry_hash
from kapflow.store.codec import pack_hash
from kapflow.store.sql import history_row

HEAD_KEY = b"kept by the clinic's auditor, never in the database"
PARKED_CLIENT = "p-1"


def record_cohort(url: str) -> None:
    """Twenty clients of the demo cohort, and a client whose integration note arrived
    before anything else of its dosing (parked)."""
    store = open_store(url)
    service = IngestService(store, clock=lambda: FIXED_NOW)
    service.ingest_batch(list(generate_cohort(20, seed=7)))
    early = Journey(PARKED_CLIENT)
    service.clock = lambda: FIXED_NOW + timedelta(hours=1)  # a later batch
    results = service.ingest_batch([early.inquiry(), early.integration("s-1")])
    assert results[-1].outcome == "parked"
    store.close()


@pytest.fixture
def cohort(sqlite_url: str) -> str:
    record_cohort(sqlite_url)
    return sqlite_url


@pytest.fixture
def store(cohort: str) -> Iterator[EventStore]:
    opened = open_store(cohort)
    yield opened
    opened.close()


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute(statement, params).fetchall()


def findings(url: str) -> set[tuple[str, str]]:
    """(kind, detail) of every divergence verify reports, in one process and in two."""
    store = open_store(url)
    try:
        report = verify(store)
        assert verify(store, jobs=2).as_dict() == report.as_dict()
    finally:
        store.close()
    return {(d.kind, d.detail) for d in report.divergences}


def kinds(url: str) -> set[str]:
    return {kind for kind, _ in findings(url)}


def an_open_task(url: str) -> tuple[str, str]:
    [(task_id, client_id)] = sql(
        url,
        "SELECT task_id, client_id FROM tasks WHERE status = 'requested' ORDER BY task_id LIMIT 1",
    )
    return task_id, client_id


def test_an_untouched_store_verifies(cohort: str) -> None:
    assert findings(cohort) == set()


# (a) the work queue: tasks closed, deleted, reassigned, postponed -------------------------


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE tasks SET status = 'completed' WHERE task_id = ?",
        "DELETE FROM tasks WHERE task_id = ?",
        "UPDATE tasks SET owner = 'front_desk' WHERE task_id = ?",
        "UPDATE tasks SET due = '2099-01-01T00:00:00Z', fires_at = NULL WHERE task_id = ?",
    ],
    ids=["closed", "deleted", "reassigned", "postponed"],
)
def test_a_task_closed_deleted_reassigned_or_postponed_by_hand_is_reported(
    cohort: str, edit: str
) -> None:
    task_id, client_id = an_open_task(cohort)
    sql(cohort, edit, (task_id,))
    reported = findings(cohort)
    assert {kind for kind, _ in reported} == {"task"}
    assert all(task_id in detail for _, detail in reported)


def test_a_task_no_deadline_will_fire_for_is_reported(cohort: str) -> None:
    [(task_id,)] = sql(
        cohort, "SELECT task_id FROM tasks WHERE fires_at IS NOT NULL ORDER BY task_id LIMIT 1"
    )
    sql(cohort, "UPDATE tasks SET fires_at = NULL WHERE task_id = ?", (task_id,))
    [(kind, detail)] = findings(cohort)
    assert kind == "task" and detail.startswith(f"task {task_id} fires at None")


# (b) the client row's columns ------------------------------------------------------------


def test_a_client_state_edited_beside_its_snapshot_is_reported(cohort: str) -> None:
    [(client_id, state)] = sql(
        cohort, "SELECT client_id, state FROM clients WHERE state <> 'completed' LIMIT 1"
    )
    sql(cohort, "UPDATE clients SET state = 'completed' WHERE client_id = ?", (client_id,))
    [(kind, detail)] = findings(cohort)
    assert kind == "client-row"
    assert "client row says completed" in detail and f"its history {state}" in detail


def test_a_client_timer_postponed_beside_its_snapshot_is_reported(cohort: str) -> None:
    [(client_id,)] = sql(cohort, "SELECT client_id FROM clients WHERE next_due IS NOT NULL LIMIT 1")
    sql(cohort, "UPDATE clients SET next_due = NULL WHERE client_id = ?", (client_id,))
    assert kinds(cohort) == {"client-row"}


# (c) receipts ----------------------------------------------------------------------------


def test_a_deleted_receipt_is_reported(cohort: str) -> None:
    [(source, event_id)] = sql(
        cohort, "SELECT source, event_id FROM history WHERE client_id = 'c-000003' AND seq = 2"
    )
    sql(cohort, "DELETE FROM receipts WHERE source = ? AND event_id = ?", (source, event_id))
    [(kind, detail)] = findings(cohort)
    assert (kind, detail) == ("receipt", f"event {event_id} has no receipt")


@pytest.mark.parametrize("outcome", ["accepted", "duplicate", "rejected", "parked"])
def test_a_forged_receipt_that_would_silence_a_future_event_is_reported(
    cohort: str, outcome: str
) -> None:
    sql(
        cohort,
        "INSERT INTO receipts (source, event_id, client_id, outcome, recorded_at)"
        " VALUES ('urn:qmts:clinical-record', 'rec-000003-0099', 'c-000003', ?, ?)",
        (outcome, "2026-06-01T12:00:00Z"),
    )
    [(kind, detail)] = findings(cohort)
    assert kind == "receipt"
    assert detail.startswith(f"receipt {outcome} with no") and "rec-000003-0099" in detail


# (d) rejections, parked events, unpublished outbox rows ------------------------------------


def test_a_deleted_rejection_is_reported(cohort: str) -> None:
    [(key_id,)] = sql(cohort, "SELECT key_id FROM rejections ORDER BY position LIMIT 1")
    sql(cohort, "DELETE FROM rejections WHERE key_id = ?", (key_id,))
    assert kinds(cohort) == {"receipt", "outbox"}  # its receipt, and its dead letter's row


def test_a_deleted_parked_event_is_reported(cohort: str) -> None:
    sql(cohort, "DELETE FROM parked WHERE client_id = ?", (PARKED_CLIENT,))
    assert kinds(cohort) == {"receipt", "parked"}


def test_a_deleted_unpublished_outbox_row_is_reported(cohort: str) -> None:
    sql(cohort, "DELETE FROM outbox WHERE position IN (10, 11)")
    assert findings(cohort) == {("outbox", "unpublished outbox row(s) 10..11 removed")}


def test_the_newest_unpublished_outbox_rows_deleted_are_reported(cohort: str) -> None:
    [(position, client_id, seq)] = sql(
        cohort, "SELECT position, client_id, seq FROM outbox ORDER BY position DESC LIMIT 1"
    )
    sql(cohort, "DELETE FROM outbox WHERE position = ?", (position,))
    [(kind, detail)] = findings(cohort)
    assert (kind, client_id) == ("outbox", PARKED_CLIENT)
    assert detail.startswith("no outbox row for this entry")


def test_a_rejection_deleted_with_its_receipt_is_caught_by_the_head_kept(cohort: str) -> None:
    head = kept_head(cohort)
    [(position, key_source, key_id)] = sql(
        cohort, "SELECT position, key_source, key_id FROM rejections ORDER BY position LIMIT 1"
    )
    sql(cohort, "DELETE FROM rejections WHERE position = ?", (position,))
    sql(cohort, "DELETE FROM receipts WHERE source = ? AND event_id = ?", (key_source, key_id))
    sql(cohort, "DELETE FROM outbox WHERE key_id = ?", (key_id,))
    sql(cohort, "UPDATE outbox SET published_at = '2026-06-01T12:00:00Z'")  # as if relayed
    assert findings(cohort) == set()
    assert head_problems(cohort, head)


# (e) a client erased, (f) a chain recomputed: the store head ---------------------------------


def kept_head(url: str, key: bytes | None = HEAD_KEY) -> str:
    store = open_store(url)
    try:
        return check_store_head(store, key, None).head.text()
    finally:
        store.close()


def head_problems(url: str, head: str, key: bytes | None = HEAD_KEY) -> list[str]:
    store = open_store(url)
    try:
        return check_store_head(store, key, head).problems
    finally:
        store.close()


def test_a_client_erased_from_every_table_is_caught_by_the_head_kept(cohort: str) -> None:
    head = kept_head(cohort)
    sql(
        cohort,
        "DELETE FROM receipts WHERE (source, event_id) IN"
        " (SELECT key_source, key_id FROM rejections WHERE client_id = 'c-000007')",
    )
    for table in ("history", "clients", "tasks", "receipts", "parked", "rejections", "outbox"):
        sql(cohort, f"DELETE FROM {table} WHERE client_id = 'c-000007'")
    sql(cohort, "UPDATE outbox SET published_at = '2026-06-01T12:00:00Z'")  # hides the hole
    assert findings(cohort) == set()
    [problem] = head_problems(cohort, head)
    assert problem.startswith("store head") and "removed or rewritten" in problem


def recompute_chain_after_editing(
    store: EventStore, url: str, client_id: str, seq: int, *, receipt_too: bool
) -> str:
    """Edit the event of entry `seq` (its id returned) and re-hash the chain from there,
    and the snapshot's last hash (and, `receipt_too`, the receipt's content digest): what
    someone with the database and kapflow's code can do."""
    entries = store.history(client_id)
    previous = entries[seq - 2].hash
    rewritten = []
    for entry in entries[seq - 1 :]:
        event = json.loads(entry.event)
        if entry.seq == seq:
            event["data"]["symptoms"] = ["anxiety"]
        entry = replace(entry, event=json.dumps(event, separators=(",", ":")), prev_hash=previous)
        entry = replace(entry, hash=entry_hash(entry))
        rewritten.append(entry)
        previous = entry.hash
    edited = rewritten[0]
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for entry in rewritten:
            row = history_row(entry, store.codec)
            conn.execute(
                "UPDATE history SET event = ?, prev_hash = ?, hash = ?"
                " WHERE client_id = ? AND seq = ?",
                (row[10], row[12], row[13], client_id, entry.seq),
            )
        if receipt_too:
            digest = pack_hash(hashlib.sha256(edited.event.encode()).hexdigest())
            conn.execute(
                "UPDATE receipts SET digest = ? WHERE source = ? AND event_id = ?",
                (digest, edited.source, edited.event_id),
            )
    snapshot = store.get_client(client_id)
    assert snapshot is not None
    snapshot.last_hash = previous
    with store.transaction() as tx:
        tx.write(BatchWrites(clients={client_id: snapshot}))
    return edited.event_id


def first_adverse_event(url: str) -> tuple[str, int]:
    [(client_id, seq)] = sql(
        url,
        "SELECT client_id, seq FROM history WHERE type = 'clinician.adverse_event_reported'"
        " ORDER BY client_id, seq LIMIT 1",
    )
    return client_id, seq


def test_an_adverse_event_edited_with_its_chain_recomputed_is_caught_by_its_receipt(
    cohort: str, store: EventStore
) -> None:
    client_id, seq = first_adverse_event(cohort)
    event_id = recompute_chain_after_editing(store, cohort, client_id, seq, receipt_too=False)
    assert findings(cohort) == {
        ("receipt", f"event {event_id} is not the content its receipt was recorded with")
    }


def test_an_adverse_event_edited_with_chain_and_receipt_recomputed_is_caught_by_the_keyed_head(
    cohort: str, store: EventStore
) -> None:
    head = kept_head(cohort)
    client_id, seq = first_adverse_event(cohort)
    recompute_chain_after_editing(store, cohort, client_id, seq, receipt_too=True)
    assert findings(cohort) == set()  # every chain links, every replay and receipt agrees
    [problem] = head_problems(cohort, head)
    assert "with the head key" in problem
    # Without the key, the head of the edited store is the database's alone to compute:
    # the editor could hand that in. With it, nobody holding only the database can.
    assert kept_head(cohort, None) != kept_head(cohort)


def test_a_head_kept_earlier_still_verifies_after_later_events(cohort: str, tmp_path: Path) -> None:
    key_file = tmp_path / "head.key"
    key_file.write_bytes(HEAD_KEY)
    first = kapflow("verify", "--head-key-file", str(key_file), "--jobs", "1", db=cohort)
    [head] = [
        line.split()[2] for line in first.stdout.splitlines() if line.startswith("store head:")
    ]
    assert "HMAC-SHA256 with the head key" in first.stdout
    store = open_store(cohort)
    later = Journey("c-later")
    IngestService(store, clock=lambda: FIXED_NOW).ingest_batch(
        [later.inquiry(), later.booking("assessment", "a-1"), "not json"]
    )
    store.close()
    again = ["verify", "--head-key-file", str(key_file), "--store-head", head, "--jobs", "1"]
    assert kapflow(*again, db=cohort).returncode == 0
    sql(cohort, "DELETE FROM history WHERE client_id = 'c-000002' AND seq = 1")
    failed = kapflow(*again, "--json", db=cohort, check=False)
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["store_head"]["ok"] is False
    assert "store-head" in {d["kind"] for d in report["divergences"]}


def test_without_a_key_verify_says_the_head_is_plain_sha256(cohort: str) -> None:
    out = kapflow("verify", "--jobs", "1", db=cohort).stdout
    assert "store head: " in out and "plain SHA-256" in out


def test_on_postgresql_a_closed_task_and_a_forged_receipt_are_reported(
    postgres_url: str,
) -> None:
    record_cohort(postgres_url)
    store = open_store(postgres_url)
    head = check_store_head(store, HEAD_KEY, None).head.text()
    assert verify(store).ok
    task_id = store.tasks(open_only=True, limit=1)[0].id
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET status = 'completed' WHERE task_id = %s", (task_id,))
        conn.execute(
            "INSERT INTO receipts (source, event_id, client_id, outcome, recorded_at)"
            " VALUES ('urn:qmts:clinical-record', 'rec-x', 'c-000003', 'accepted', 'now')"
        )
        conn.execute("DELETE FROM history WHERE client_id = 'c-000004'")
    assert {d.kind for d in verify(store).divergences} >= {"task", "receipt"}
    assert check_store_head(store, HEAD_KEY, head).problems
    store.close()

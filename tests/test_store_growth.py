"""A store that runs for years: what a batch or a tick costs must not grow with the history.

Every hot-path read goes through an index that matches it (checked with SQLite's own query
plans, on the statements the service really runs); the clock reads only clients with a
timer due; counts come from indexes; published outbox rows are pruned after a retention;
and a store written by the previous release is migrated in place when it is opened.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from builders import Journey
from conftest import FIXED_NOW, Clinic

from kapflow.demo.cohort import generate_cohort
from kapflow.entrypoints.cli import main as kapflow
from kapflow.service.audit import Findings, verify, verify_clients
from kapflow.service.clock import deadlines, tick
from kapflow.service.ingest import IngestService
from kapflow.service.outbox import PruneSchedule
from kapflow.store import open_store
from kapflow.store.base import EventStore
from kapflow.store.due import ReceiptKey, deadline_event_id
from kapflow.store.sql import SCHEMA_VERSION
from kapflow.store.sqlite import SQLiteStore
from workflow.policy import DEFAULT_POLICY
from workflow.tasks import OPEN_STATUSES, iso
from workflow.timers import CLOCK_SOURCE, timers

FIXTURES = Path(__file__).parent / "fixtures"
PREVIOUS_RELEASE = FIXTURES / "store_2026.11.3.sqlite"
# Tables whose size grows with everything ever recorded: never scanned on the hot path.
GROWING = ("receipts", "history", "tasks", "outbox", "clients", "rejections")


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[EventStore]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    yield store
    store.close()


def previous_release_copy(tmp_path: Path) -> str:
    """The committed fixture is never opened in place: a copy is migrated."""
    copy = tmp_path / "store_2026.11.3.sqlite"
    shutil.copyfile(PREVIOUS_RELEASE, copy)
    return f"sqlite:///{copy}"


def unrecorded_deadlines_by_full_scan(store: EventStore, until: datetime) -> set[tuple[str, str]]:
    """What the clock must find, computed the slow way: every client, every open task."""
    limit = iso(until + timedelta(seconds=1))
    due = {
        (client.client_id, timer.id, timer.due)
        for client in store.clients(limit=10**9)
        for timer in timers(client, DEFAULT_POLICY)
    } | {(task.for_, task.id, task.due) for task in store.tasks(open_only=True, limit=10**9)}
    return {
        (client_id, what)
        for client_id, what, at in due
        if at < limit and not recorded(store, (CLOCK_SOURCE, deadline_event_id(what, at)))
    }


def deadlines_the_clock_finds(store: EventStore, until: datetime) -> set[tuple[str, str]]:
    return {
        (d.client_id, d.task_id)
        for d in deadlines(store, DEFAULT_POLICY, until)
        if not recorded(store, (CLOCK_SOURCE, deadline_event_id(d.task_id, d.due)))
    }


def recorded(store: EventStore, key: ReceiptKey) -> bool:
    with store.transaction() as tx:
        return key in tx.receipts([key])


# Query plans ---------------------------------------------------------------------------


class StatementLog:
    """Every statement a SQLite store runs, with its bound values, for EXPLAIN."""

    def __init__(self, store: SQLiteStore) -> None:
        self.connection = store._conn()
        self.statements: list[str] = []
        self.connection.set_trace_callback(self.statements.append)

    def reads_and_updates(self) -> list[str]:
        self.connection.set_trace_callback(None)
        kinds = ("SELECT", "UPDATE", "DELETE")
        return sorted({s for s in self.statements if s.lstrip().upper().startswith(kinds)})

    def plan(self, statement: str) -> list[str]:
        rows = self.connection.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
        return [row[3] for row in rows]


def scans_of_growing_tables(plan: list[str]) -> list[str]:
    """Plan steps that read a growing table from end to end.

    Scanning the partial index of unpublished outbox rows is allowed: it holds only the
    relay's backlog, and the query stops at its LIMIT.
    """
    tables = "|".join(GROWING)
    aliases = {"o": "outbox", "h": "history", "r": "rejections"}
    bad = []
    for step in plan:
        match = re.match(r"SCAN (\w+)", step)
        if not match or "outbox_unpublished" in step:
            continue
        table = aliases.get(match.group(1), match.group(1))
        if re.fullmatch(tables, table):
            bad.append(step)
    return bad


def test_a_batch_a_tick_and_the_relay_read_through_indexes_only(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    clinic = Clinic(store)
    cohort = list(generate_cohort(clients=40, seed=3))
    clinic.send(cohort[: len(cohort) // 2])  # a store with history in it

    statements = StatementLog(store)
    clinic.send(cohort[len(cohort) // 2 :])  # new events, and the first half again:
    clinic.send(cohort[:50])  # duplicates are found by their (source, id) key
    tick(clinic.service, FIXED_NOW + timedelta(days=400))
    store.mark_published([position for position, _, _ in store.unpublished(100)], iso(FIXED_NOW))
    store.outbox_after(10, 100)
    store.prune_outbox(iso(FIXED_NOW))
    reads = statements.reads_and_updates()

    assert any("FROM receipts WHERE source" in s for s in reads)
    assert any("next_due <" in s for s in reads), "the tick reads clients by next_due"
    for statement in reads:
        assert scans_of_growing_tables(statements.plan(statement)) == [], statement
    store.close()


def test_the_receipts_lookup_searches_the_key_source_and_event_id(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    clinic = Clinic(store)
    statements = StatementLog(store)
    clinic.send(*Journey().to_prepared())
    lookups = [s for s in statements.reads_and_updates() if "FROM receipts" in s]
    assert lookups  # the batch's own events, and the clock's deadlines for next_due
    for lookup in lookups:
        assert statements.plan(lookup) == [
            "SEARCH receipts USING PRIMARY KEY (source=? AND event_id=?)"
        ]
    store.close()


def test_verify_reads_a_batch_of_clients_in_two_statements_through_their_keys(
    sqlite_url: str,
) -> None:
    store = SQLiteStore(sqlite_url)
    Clinic(store).send(list(generate_cohort(clients=40, seed=3)))
    batch = list(enumerate(store.client_ids()))[:25]
    sources = {entry.source for _, client_id in batch for entry in store.history(client_id)}
    statements = StatementLog(store)
    findings = Findings()
    verify_clients(store, batch, DEFAULT_POLICY, findings)
    selects = [s for s in statements.statements if s.lstrip().upper().startswith("SELECT")]
    reads = statements.reads_and_updates()
    # The batch's histories and snapshots; the rows kept beside them (client columns, tasks,
    # parked counts); their receipts, one search per source; the deadlines recorded.
    assert len(selects) == len(reads) <= 2 + 3 + len(sources) + 1
    for statement in reads:
        plan = statements.plan(statement)
        assert scans_of_growing_tables(plan) == [], statement
        assert not [step for step in plan if "TEMP B-TREE" in step], statement  # seq order
    assert (findings.clients, findings.found) == (25, [])
    assert findings.history_rows == sum(len(store.history(c)) for _, c in batch)
    store.close()


def test_dashboard_counts_come_from_indexes_not_from_loading_tasks(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    statements = StatementLog(store)
    store.count_by_state()
    store.open_task_counts(iso(FIXED_NOW))
    for statement in statements.reads_and_updates():
        steps = [s for s in statements.plan(statement) if s.startswith(("SCAN", "SEARCH"))]
        assert steps and all("COVERING INDEX" in step for step in steps), statement
    store.close()


# The clock ---------------------------------------------------------------------------------


def test_the_clock_finds_every_deadline_a_full_scan_would_find(any_store: EventStore) -> None:
    clinic = Clinic(any_store)
    cohort = list(generate_cohort(clients=30, seed=5))
    halves = (cohort[: len(cohort) // 2], cohort[len(cohort) // 2 :])
    times = ("2026-03-01T00:00:00Z", "2026-06-01T00:00:00Z")
    for half, ticked_at in zip(halves, times, strict=True):
        clinic.send(half)  # snapshots rewritten after some of their deadlines were recorded
        now = datetime.fromisoformat(ticked_at)
        assert tick(clinic.service, now).fired
        for days in (0, 30, 400):
            until = now + timedelta(days=days)
            found = deadlines_the_clock_finds(any_store, until)
            assert found == unrecorded_deadlines_by_full_scan(any_store, until)


def test_a_fired_timer_is_not_read_again_on_later_ticks(any_store: EventStore) -> None:
    clinic = Clinic(any_store)
    j = Journey()
    clinic.send(j.inquiry(), j.booking("assessment", "a-1"))
    much_later = j.now + timedelta(days=200)
    assert [c.client_id for c in any_store.clients_due(iso(much_later))] == ["c-1"]
    tick(clinic.service, much_later)
    assert "follow-up-inactive-client" in clinic.open_codes()
    assert any_store.clients_due(iso(much_later)) == []
    # A new event from a person restarts the inactivity timer.
    clinic.send(j.assessment())
    assert [c.client_id for c in any_store.clients_due(iso(much_later + timedelta(days=200)))] == [
        "c-1"
    ]


def test_an_overdue_task_is_offered_to_the_clock_once_then_escalated(
    any_store: EventStore,
) -> None:
    clinic = Clinic(any_store)
    j = Journey()
    clinic.send(j.inquiry())
    [task] = clinic.client().open_tasks.values()
    later = j.now + timedelta(days=5)
    assert [t.id for t in any_store.tasks_due(iso(later))] == [task.id]
    tick(clinic.service, later)
    escalated = any_store.task(task.id)
    assert escalated is not None and escalated.priority == "urgent"
    assert task.id not in {t.id for t in any_store.tasks_due(iso(later))}
    # Still open and overdue for the people who must act on it.
    assert task.id in {t.id for t in any_store.tasks(open_only=True, due_before=iso(later))}


def test_open_and_overdue_counts_per_owner_match_the_open_tasks(any_store: EventStore) -> None:
    clinic = Clinic(any_store)
    clinic.send(list(generate_cohort(clients=30, seed=7)))
    now = iso(FIXED_NOW - timedelta(days=200))
    expected: dict[str, tuple[int, int]] = {}
    for task in any_store.tasks(open_only=True, limit=10**6):
        total, overdue = expected.get(task.owner, (0, 0))
        expected[task.owner] = (total + 1, overdue + (task.due < now))
    assert expected, "the cohort leaves tasks open"
    assert any_store.open_task_counts(now) == expected
    assert all(t.status in OPEN_STATUSES for t in any_store.tasks(open_only=True))


# Outbox retention ----------------------------------------------------------------------------


def test_published_outbox_rows_are_pruned_after_the_retention_and_nothing_else(
    any_store: EventStore,
) -> None:
    clinic = Clinic(any_store)
    clinic.send(*Journey().to_prepared())
    rows = any_store.unpublished(100)
    old, recent, pending = rows[:2], rows[2:4], rows[4:]
    assert pending, "some rows stay unpublished"
    any_store.mark_published([p for p, _, _ in old], "2026-01-01T00:00:00Z")
    any_store.mark_published([p for p, _, _ in recent], "2026-01-09T00:00:00Z")

    assert any_store.prune_outbox("2026-01-02T00:00:00Z") == len(old)
    remaining = [position for position, _, _ in any_store.outbox_after(0, 1000)]
    assert remaining == [p for p, _, _ in recent + pending]
    assert [p for p, _, _ in any_store.unpublished(100)] == [p for p, _, _ in pending]
    assert len(any_store.history("c-1")) == len(rows)  # the history itself is never pruned


def test_kapflow_prune_deletes_rows_published_more_than_a_week_ago(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    store = open_store(url)
    Clinic(store).send(*Journey().to_prepared())
    positions = [p for p, _, _ in store.unpublished(100)]
    store.mark_published(positions[:3], "2000-01-01T00:00:00Z")
    store.close()
    assert kapflow(["prune", "--db", url]) == 0
    assert kapflow(["prune", "--db", url, "--older-than", "7d"]) == 0
    store = open_store(url)
    assert [p for p, _, _ in store.outbox_after(0, 1000)] == positions[3:]
    store.close()


# Migration ---------------------------------------------------------------------------------


def test_a_store_of_the_previous_release_is_migrated_in_place_and_still_verifies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = previous_release_copy(tmp_path)
    with caplog.at_level("INFO", logger="kapflow.store"):
        store = SQLiteStore(url)
    assert store.migrated_from == "1"
    migrated = [r for r in caplog.records if "migrated in place" in r.getMessage()]
    assert len(migrated) == 1
    until = FIXED_NOW + timedelta(days=3650)
    assert deadlines_the_clock_finds(store, until) == unrecorded_deadlines_by_full_scan(
        store, until
    )
    report = verify(store)
    assert report.ok, report.as_dict()
    store.close()
    with sqlite3.connect(PREVIOUS_RELEASE) as original:  # the fixture itself is untouched
        assert original.execute("SELECT value FROM meta").fetchone() == ("1",)


def test_kapflow_migrate_upgrades_once_then_says_the_store_is_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = previous_release_copy(tmp_path)
    assert kapflow(["migrate", "--db", url]) == 0
    assert f"from schema version 1 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert kapflow(["migrate", "--db", url]) == 0
    assert f"already at schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert kapflow(["verify", "--db", url]) == 0


def downgrade_to_version_1(store: EventStore) -> None:
    """Put a current store back in the previous release's shape (PostgreSQL has no
    committed fixture): no next_due column, none of the version-2 indexes."""
    statements = [
        "DROP INDEX clients_next_due",
        "DROP INDEX outbox_published",
        "DROP INDEX tasks_fire_at",
        "ALTER TABLE clients DROP COLUMN next_due",
        "ALTER TABLE tasks DROP COLUMN fires_at",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
        "DELETE FROM meta WHERE key = 'clock_recorded_until'",
    ]
    for statement in statements:
        if isinstance(store, SQLiteStore):
            store._query(statement)
        else:
            store._query(statement, rows=False)  # type: ignore[attr-defined]


def test_both_adapters_migrate_a_version_1_store_at_open(any_store: EventStore) -> None:
    clinic = Clinic(any_store)
    clinic.send(list(generate_cohort(clients=20, seed=9)))
    until = FIXED_NOW + timedelta(days=3650)
    expected = deadlines_the_clock_finds(any_store, until)
    assert expected
    downgrade_to_version_1(any_store)
    any_store.close()

    reopened = open_store(any_store.url)
    assert reopened.migrated_from == "1"  # type: ignore[attr-defined]
    assert deadlines_the_clock_finds(reopened, until) == expected
    assert verify(reopened).ok
    reopened.close()
    assert open_store(any_store.url).migrated_from is None  # type: ignore[attr-defined]


def test_serve_and_the_relay_prune_at_most_once_per_interval(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    Clinic(store).send(*Journey().to_prepared())
    positions = [p for p, _, _ in store.unpublished(100)]
    schedule = PruneSchedule(retention=timedelta(days=7), every_seconds=3600)
    store.mark_published(positions[:2], iso(FIXED_NOW - timedelta(days=8)))
    assert schedule.run_if_due(store, FIXED_NOW) == 2
    store.mark_published(positions[2:4], iso(FIXED_NOW - timedelta(days=8)))
    assert schedule.run_if_due(store, FIXED_NOW) == 0  # within the hour: not again yet
    assert [p for p, _, _ in store.outbox_after(0, 1000)] == positions[2:]
    store.close()


def test_the_wal_is_checkpointed_in_the_background_not_inside_a_commit(tmp_path: Path) -> None:
    """A commit appends to the WAL; a thread of the store moves the pages into the database
    file soon after (SQLite's own checkpoint, inside a commit, is only a far backstop)."""
    db = tmp_path / "kapflow.db"
    store = open_store(f"sqlite:///{db}")
    assert isinstance(store, SQLiteStore)
    with store._conn() as conn:  # noqa: SLF001 - the writer connection's own setting
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] >= 65536
    empty = db.stat().st_size
    clinic_events = list(generate_cohort(clients=30, seed=3))
    service = IngestService(store)
    results = list(service.ingest_stream(clinic_events))
    assert len(results) == len(clinic_events)
    deadline = time.monotonic() + 10
    while db.stat().st_size == empty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size > empty  # pages reached the file while the store is open
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "kapflow-wal-checkpoint"]
    assert verify(open_store(f"sqlite:///{db}")).ok

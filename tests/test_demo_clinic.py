"""The demo clinic dated relative to "now": journeys end then, staff work the queue, and a
clock running at that time finds a realistic picture (most tasks on time, a few overdue)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from conftest import Clinic
from test_cli import kapflow

from kapflow.demo.clinic import run_clinic, start_for
from kapflow.demo.cohort import generate_cohort
from kapflow.service.audit import verify
from kapflow.service.ingest import IngestService
from kapflow.service.work_queue import OPERATIONS_SOURCE
from kapflow.store import open_store

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_after_the_demo_a_tick_at_that_now_finds_fewer_than_15_percent_of_tasks_overdue(
    sqlite_url: str,
) -> None:
    now = "2026-11-27T08:00:00Z"
    kapflow("demo", "--now", now, db=sqlite_url)
    kapflow("tick", "--now", now, db=sqlite_url)
    open_tasks = json.loads(kapflow("tasks", "--open", "--json", db=sqlite_url).stdout)
    overdue = json.loads(
        kapflow("tasks", "--overdue", "--now", now, "--json", db=sqlite_url).stdout
    )
    assert len(open_tasks) > 50, "staff leave a realistic queue open"
    assert len(overdue) < 0.15 * len(open_tasks), (len(overdue), len(open_tasks))


def test_the_cohorts_journeys_end_around_now_and_begin_half_a_year_earlier() -> None:
    times = [event["time"] for event in generate_cohort(clients=60, start=start_for(NOW))]
    first = datetime.fromisoformat(min(times))
    last = datetime.fromisoformat(max(times))
    assert first >= NOW - timedelta(days=180)
    assert NOW - timedelta(days=3) <= last <= NOW


def test_staff_complete_tasks_as_events_and_leave_a_share_open(clinic: Clinic) -> None:
    report = run_clinic(clinic.service, NOW, clients=40, seed=3)
    staff = [
        entry
        for client_id in clinic.store.client_ids()
        for entry in clinic.store.history(client_id)
        if entry.source == OPERATIONS_SOURCE
    ]
    assert len(staff) == report.staff_completions > 0
    assert {entry.type for entry in staff} == {"operations.task_completed"}
    assert all(entry.occurred_at <= report.now for entry in staff)
    assert clinic.store.tasks(open_only=True), "some work is still waiting at `now`"
    assert verify(clinic.store).ok, "replay reproduces the staff's work and the clock exactly"


def test_the_same_seed_and_now_give_the_same_clinic(tmp_path: object) -> None:
    def histories(name: str) -> list[tuple[str, int, str, str, str]]:
        store = open_store(f"sqlite:///{tmp_path}/{name}.db")
        run_clinic(IngestService(store), NOW, clients=25, seed=5)
        rows = [
            (e.client_id, e.seq, e.event_id, e.occurred_at, e.to_state)
            for client_id in sorted(store.client_ids())
            for e in store.history(client_id)
        ]
        store.close()
        return rows

    assert histories("first") == histories("second")

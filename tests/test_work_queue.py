"""The work queue: staff complete, claim, cancel and reassign tasks, and each action is a fact
in the client's history (so the stream shows it and replay rebuilds the queue exactly)."""

from __future__ import annotations

import pytest
from builders import Journey
from conftest import FIXED_NOW, Clinic
from test_cli import kapflow

from kapflow.service.audit import verify
from kapflow.service.work_queue import (
    OPERATIONS_SOURCE,
    TaskAction,
    TaskAlreadyClosed,
    TaskNotFound,
    act_on_task,
)
from workflow.tasks import Task, TaskCode

ACTED_AT = FIXED_NOW  # staff act at the clinic's now (a later time is not a fact yet)


def _assessment_task(clinic: Clinic) -> Task:
    """c-1 made an inquiry: `schedule-assessment` is open in the scheduler's queue."""
    clinic.send(Journey().inquiry())
    [task] = [
        t for t in clinic.client().open_tasks.values() if t.code == TaskCode.SCHEDULE_ASSESSMENT
    ]
    return task


def _act(clinic: Clinic, action: TaskAction, key: str | None = None) -> str:
    result = act_on_task(
        clinic.store,
        clinic.service.ingest_batch,
        action,
        actor="ops-key",
        at=ACTED_AT,
        idempotency_key=key,
    )
    return result.outcome


def test_claiming_a_task_marks_it_in_progress_and_leaves_it_open(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    assert _act(clinic, TaskAction("claim", task.id)) == "accepted"
    claimed = clinic.store.task(task.id)
    assert claimed is not None and claimed.status == "in-progress" and claimed.is_open
    assert clinic.client().open_tasks[task.id].status == "in-progress"


def test_a_cancelled_task_is_closed_with_the_reason_code_in_its_note(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("cancel", task.id, reason="client_declined"))
    cancelled = clinic.store.task(task.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.note == "cancelled: client_declined"
    assert task.id not in clinic.client().open_tasks


def test_a_reassigned_task_moves_to_the_new_owners_queue_with_its_due_time(
    clinic: Clinic,
) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("reassign", task.id, to_role="clinician"))
    moved = clinic.store.task(task.id)
    assert moved is not None and moved.owner == "clinician" and moved.due == task.due
    assert [t.id for t in clinic.store.tasks(open_only=True, owner="clinician")] == [task.id]


def test_completing_a_task_is_recorded_in_the_clients_history(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("complete", task.id, by_role="scheduler"))
    done = clinic.store.task(task.id)
    assert done is not None and done.status == "completed"
    last = clinic.store.history("c-1")[-1]
    assert (last.source, last.type) == (OPERATIONS_SOURCE, "operations.task_completed")
    assert last.occurred_at == "2026-06-01T12:00:00Z"


def test_a_retried_request_with_the_same_idempotency_key_is_a_duplicate(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    assert _act(clinic, TaskAction("complete", task.id), key="req-1") == "accepted"
    assert _act(clinic, TaskAction("complete", task.id), key="req-1") == "duplicate"
    operations = [e for e in clinic.store.history("c-1") if e.source == OPERATIONS_SOURCE]
    assert len(operations) == 1


def test_a_closed_task_cannot_be_completed_again_by_a_new_request(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("complete", task.id))
    with pytest.raises(TaskAlreadyClosed):
        _act(clinic, TaskAction("claim", task.id))


def test_an_unknown_task_is_not_found_and_nothing_is_recorded(clinic: Clinic) -> None:
    _assessment_task(clinic)
    with pytest.raises(TaskNotFound):
        _act(clinic, TaskAction("complete", "no-such-task"))
    assert len(clinic.store.history("c-1")) == 1


def test_replay_rebuilds_the_queue_exactly_after_staff_actions(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("claim", task.id))
    _act(clinic, TaskAction("reassign", task.id, to_role="clinician"))
    clinic.send(Journey("c-2").inquiry())
    [other] = clinic.client("c-2").open_tasks.values()
    _act(clinic, TaskAction("cancel", other.id, reason="duplicate_request"))
    report = verify(clinic.store)
    assert report.ok, report.as_dict()


def test_the_cli_completes_claims_and_cancels_tasks(clinic: Clinic, sqlite_url: str) -> None:
    task = _assessment_task(clinic)
    claimed = kapflow("tasks", "claim", task.id, "--json", db=sqlite_url)
    assert '"outcome": "accepted"' in claimed.stdout and '"in-progress"' in claimed.stdout
    kapflow("tasks", "complete", task.id, db=sqlite_url)
    again = kapflow(
        "tasks", "cancel", task.id, "--reason", "not_applicable", db=sqlite_url, check=False
    )
    assert again.returncode == 2 and "already completed" in again.stderr
    done = clinic.store.task(task.id)
    assert done is not None and done.status == "completed"

"""SPEC §6 accountability: every act of a person names who did it, and every read of clinical
data from the command line is in the access log with who read it."""

from __future__ import annotations

import json

import pytest
from builders import Journey
from conftest import FIXED_NOW, Clinic

from events.upcasting import read_recorded
from kapflow.entrypoints.cli import main
from kapflow.service.access import CLI_ROLE, os_user
from kapflow.service.audit import verify
from kapflow.service.work_queue import InvalidTaskAction, TaskAction, act_on_task
from kapflow.store.access_log import iter_entries, open_access_log
from workflow.tasks import Task, TaskCode


def _assessment_task(clinic: Clinic) -> Task:
    clinic.send(Journey().inquiry())
    [task] = [
        t for t in clinic.client().open_tasks.values() if t.code == TaskCode.SCHEDULE_ASSESSMENT
    ]
    return task


def _act(clinic: Clinic, action: TaskAction, actor: str) -> Task | None:
    result = act_on_task(
        clinic.store, clinic.service.ingest_batch, action, actor=actor, at=FIXED_NOW
    )
    assert result.outcome == "accepted", result.reasons
    return result.task


def _operations_entries(clinic: Clinic) -> list[dict[str, object]]:
    return [
        entry.as_dict()
        for entry in clinic.store.history("c-1")
        if entry.type.startswith("operations.")
    ]


def test_the_history_names_who_claimed_and_who_completed_a_task(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    claimed = _act(clinic, TaskAction("claim", task.id), actor="nurse.ana")
    assert claimed is not None
    assert (claimed.status, claimed.owner, claimed.claimed_by) == (
        "in-progress",
        "scheduler",
        "nurse.ana",
    )
    assert claimed.as_dict()["claimed_by"] == "nurse.ana"
    _act(clinic, TaskAction("complete", task.id), actor="dr-bo")
    claim, completion = _operations_entries(clinic)
    assert claim["event"]["data"]["actor"] == "nurse.ana"  # type: ignore[index]
    assert completion["event"]["data"]["actor"] == "dr-bo"  # type: ignore[index]
    [closed] = completion["outcome"]["tasks"]  # type: ignore[index]
    assert closed["task"]["completed_by"] == "dr-bo"
    assert closed["task"]["claimed_by"] == "nurse.ana"
    # The task's people come from the events: a full replay reproduces them exactly.
    assert verify(clinic.store).ok


def test_a_cancellation_names_who_cancelled(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    _act(clinic, TaskAction("cancel", task.id, reason="not_applicable"), actor="sched-key")
    [cancel] = _operations_entries(clinic)
    [closed] = cancel["outcome"]["tasks"]  # type: ignore[index]
    assert (closed["task"]["status"], closed["task"]["cancelled_by"]) == (
        "cancelled",
        "sched-key",
    )


def test_an_operations_event_that_names_no_one_is_refused(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    j = Journey()
    [result] = clinic.send(
        j.event(
            "operations.task_completed",
            {"task_id": task.id, "by_role": "scheduler"},
            source="urn:kapflow:operations",
        )
    )
    assert result.outcome == "rejected"
    assert [(r.code, r.field) for r in result.reasons] == [("SCHEMA", "data.actor")]


def test_an_actor_is_a_short_token_never_a_name_with_spaces(clinic: Clinic) -> None:
    task = _assessment_task(clinic)
    with pytest.raises(InvalidTaskAction) as refused:
        act_on_task(
            clinic.store,
            clinic.service.ingest_batch,
            TaskAction("claim", task.id),
            actor="Ana Lopez",
            at=FIXED_NOW,
        )
    assert [reason.field for reason in refused.value.reasons] == ["data.actor"]


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("operations.task_completed", {"task_id": "t-1", "by_role": "billing"}),
        ("operations.task_claimed", {"task_id": "t-1", "by_role": "billing"}),
        (
            "operations.task_cancelled",
            {"task_id": "t-1", "by_role": "billing", "reason": "duplicate_request"},
        ),
        (
            "operations.task_reassigned",
            {"task_id": "t-1", "by_role": "billing", "to_role": "clinician"},
        ),
    ],
)
def test_an_act_recorded_before_actors_were_named_reads_back_with_no_actor(
    event_type: str, data: dict[str, str]
) -> None:
    recorded = json.dumps(Journey().event(event_type, data, source="urn:kapflow:operations"))
    # Version 1 (releases before 2026.12.1), through the upcaster; and a store this release
    # wrote before its events named the actor: read back as recorded, never refused.
    for release in ("2026.11.4", "2026.12.1"):
        event = read_recorded(recorded, release)
        assert event.data.actor is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "action", "detail"),
    [
        (["client", "c-1", "--json"], "client", None),
        (["history", "c-1", "--json"], "history", None),
        (["replay", "c-1", "--as-of", "2026-01-06T00:00:00Z"], "replay", "as_of="),
        (["check", "c-1", "--dose", "--json"], "check", "action=dose"),
        (["tasks", "--json", "--owner", "scheduler"], "tasks", "owner=scheduler"),
        (["deviations"], "deviations", None),
        (["export"], "export", "format=jsonl"),
    ],
)
def test_every_cli_read_is_in_the_access_log_under_the_os_user(
    clinic: Clinic,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    action: str,
    detail: str | None,
) -> None:
    _assessment_task(clinic)
    assert main([*command, "--db", sqlite_url]) == 0, capsys.readouterr().err
    log = open_access_log(sqlite_url)
    try:
        [row] = list(iter_entries(log))
    finally:
        log.close()
    assert (row.who, row.role, row.action) == (os_user(), CLI_ROLE, action)
    if action in {"client", "history", "replay", "check"}:
        assert row.client_id == "c-1"
    if detail is None:
        assert row.detail is None
    else:
        assert row.detail is not None and row.detail.startswith(detail)

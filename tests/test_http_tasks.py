"""The work queue over HTTP: who may act on tasks, and each action as a recorded event that the
history and the live stream show."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from builders import Journey
from test_http_api import Service, start_service

from kapflow.service.access import ROLES
from kapflow.service.work_queue import OPERATIONS_SOURCE

ACTIONS: dict[str, dict[str, Any] | None] = {
    "complete": None,
    "claim": None,
    "cancel": {"reason": "not_applicable"},
    "reassign": {"to_role": "clinician"},
}
ACTIONS_RECORDED_AS = {
    "complete": "operations.task_completed",
    "claim": "operations.task_claimed",
    "cancel": "operations.task_cancelled",
    "reassign": "operations.task_reassigned",
}
# Written out independently of kapflow.service.access.ROLE_PERMISSIONS.
MAY_ACT = {"operations", "admin"}
_clients = itertools.count(1)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-tasks') / 'kapflow.db'}"
    server, secrets = start_service(db)
    yield Service(server.url, db, secrets)
    server.stop()


def open_task(service: Service) -> dict[str, Any]:
    """A new client's inquiry: its `schedule-assessment` task, open in the scheduler's queue."""
    client_id = f"c-q-{next(_clients)}"
    with service.client("admin") as admin:
        assert admin.post("/v1/events", json=Journey(client_id).inquiry()).status_code == 200
        tasks = admin.get("/v1/tasks", params={"open": "true", "client": client_id}).json()
    [task] = [t for t in tasks if t["code"] == "schedule-assessment"]
    return task


def act(service: Service, role: str, action: str, task_id: str, **headers: str) -> httpx.Response:
    with service.client(role) as client:
        return client.post(f"/v1/tasks/{task_id}/{action}", json=ACTIONS[action], headers=headers)


def history_types(service: Service, client_id: str) -> list[str]:
    with service.client("auditor") as auditor:
        return [e["type"] for e in auditor.get(f"/v1/clients/{client_id}/history").json()]


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("role", ROLES)
def test_operations_staff_may_act_on_tasks_and_dashboards_and_auditors_may_not(
    service: Service, role: str, action: str
) -> None:
    task = open_task(service)
    response = act(service, role, action, task["id"])
    if role in MAY_ACT:
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "accepted"
        assert history_types(service, task["for"])[-1] == ACTIONS_RECORDED_AS[action]
    else:
        assert response.status_code == 403, response.text
        assert response.json()["permission"] == "act_on_tasks"
        assert sorted(response.json()["roles_allowed"]) == sorted(MAY_ACT)
        assert len(history_types(service, task["for"])) == 1  # nothing recorded


def test_operations_staff_look_clients_up_but_neither_publish_nor_export(
    service: Service,
) -> None:
    open_task(service)
    with service.client("operations") as ops:
        assert ops.get("/v1/tasks?open=true").status_code == 200
        assert ops.get("/v1/clients/c-q-1/history").status_code == 200
        assert ops.get("/v1/export?format=csv").status_code == 403
        assert ops.post("/v1/events", json=Journey("c-q-x").inquiry()).status_code == 403
        assert ops.get("/v1/me").json()["may_act_on_tasks"] is True
    with service.client("dashboard") as dashboard:
        assert dashboard.get("/v1/me").json() == {
            "name": "dashboard-key",
            "role": "dashboard",
            "may_act_on_tasks": False,
            "may_read_history": False,
            "may_read_rejections": False,
        }


def test_each_action_changes_the_task_as_staff_expect(service: Service) -> None:
    claimed = act(service, "operations", "claim", open_task(service)["id"]).json()["task"]
    assert claimed["status"] == "in-progress"
    cancelled = act(service, "operations", "cancel", open_task(service)["id"]).json()["task"]
    assert (cancelled["status"], cancelled["note"]) == ("cancelled", "cancelled: not_applicable")
    moved = act(service, "operations", "reassign", open_task(service)["id"]).json()["task"]
    assert (moved["status"], moved["owner"]) == ("requested", "clinician")
    done = act(service, "operations", "complete", open_task(service)["id"]).json()
    assert done["task"]["status"] == "completed"
    assert done["event"]["source"] == OPERATIONS_SOURCE


def test_a_retry_with_the_same_idempotency_key_is_a_duplicate_not_a_second_event(
    service: Service,
) -> None:
    task = open_task(service)
    first = act(service, "operations", "complete", task["id"], **{"Idempotency-Key": "r-42"})
    retry = act(service, "operations", "complete", task["id"], **{"Idempotency-Key": "r-42"})
    assert (first.status_code, retry.status_code) == (200, 200)
    assert (first.json()["outcome"], retry.json()["outcome"]) == ("accepted", "duplicate")
    assert first.json()["event"]["id"] == retry.json()["event"]["id"]
    assert history_types(service, task["for"]).count("operations.task_completed") == 1


def test_a_closed_task_is_a_conflict_and_an_unknown_one_is_not_found(service: Service) -> None:
    task = open_task(service)
    assert act(service, "operations", "complete", task["id"]).status_code == 200
    again = act(service, "operations", "claim", task["id"])
    assert again.status_code == 409 and again.json()["error"] == "task_closed"
    assert act(service, "operations", "claim", "no-such-task").status_code == 404


def test_a_cancellation_reason_must_be_a_code_never_prose(service: Service) -> None:
    task = open_task(service)
    with service.client("operations") as ops:
        response = ops.post(
            f"/v1/tasks/{task['id']}/cancel", json={"reason": "client said she is moving away"}
        )
    assert response.status_code == 422
    assert "moving" not in response.text  # the input is never echoed
    assert len(history_types(service, task["for"])) == 1


def test_a_completed_task_appears_on_the_live_stream(service: Service) -> None:
    task = open_task(service)
    assert act(service, "operations", "complete", task["id"]).status_code == 200
    auth = {"Authorization": f"Bearer {service.secrets['dashboard']}"}
    end = time.monotonic() + 10
    closed: dict[str, Any] | None = None
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", params={"after": 0}, headers=auth) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: ") and task["id"] in line:
                message = orjson.loads(line[len("data: ") :])
                if message["change"] == "closed":
                    closed = message
                    break
            if time.monotonic() > end:
                break
    assert closed is not None and closed["task"]["status"] == "completed"


def test_a_clients_rejections_can_be_read_for_that_client_alone(service: Service) -> None:
    mine, other = Journey("c-q-rejected"), Journey("c-q-other")
    bad = [mine.event("clinician.gossip", {}), other.event("clinician.gossip", {})]
    with service.client("admin") as admin:
        assert admin.post("/v1/events", json=bad).status_code == 200
    with service.client("auditor") as auditor:
        rows = auditor.get("/v1/rejections", params={"client": "c-q-rejected"}).json()
    assert [(row["subject"], row["reasons"][0]["code"]) for row in rows] == [
        ("c-q-rejected", "UNKNOWN_TYPE")
    ]

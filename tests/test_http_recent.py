"""A screen opening on a busy store fills its "recent" lists from the outbox backlog at once,
then follows the stream from exactly where the backlog ended."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from builders import Journey
from test_http_api import Service, start_service

from kapflow.service.ingest import IngestService
from kapflow.store import open_store


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-recent') / 'kapflow.db'}"
    server, secrets = start_service(db, poll_interval=0.2)
    yield Service(server.url, db, secrets)
    server.stop()


def test_recent_state_changes_are_found_behind_a_thousand_task_updates(service: Service) -> None:
    journeys = [Journey(f"c-r-{n}") for n in range(3)]
    events = [event for j in journeys for event in j.to_assessed()]
    events.append({"specversion": "1.0", "id": "bad-1", "type": "clinician.gossip"})
    with service.client("admin") as admin:
        assert admin.post("/v1/events", json=events).status_code == 200
        [task] = admin.get("/v1/tasks", params={"open": "true", "client": "c-r-0"}).json()[:1]
    # Then a busy queue: a thousand reassignments, each an outbox row with no state change.
    j = journeys[0]
    store = open_store(service.db)
    roles = ("clinician", "scheduler")
    IngestService(store).ingest_batch(
        [
            j.event(
                "operations.task_reassigned",
                {
                    "task_id": task["id"],
                    "to_role": roles[n % 2],
                    "by_role": "scheduler",
                    "actor": "sam",
                },
                source="urn:kapflow:operations",
            )
            for n in range(1000)
        ]
    )
    store.close()
    with service.client("dashboard") as dashboard:
        body: dict[str, Any] = {}
        for _ in range(50):  # until the server's feed has read the new rows
            body = dashboard.get("/v1/stream/recent", params={"limit": 4}).json()
            if body["position"] > 1000:
                break
            time.sleep(0.1)
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for message in body["messages"]:
            by_topic.setdefault(message["event"], []).append(message)
    changes = by_topic["state-changes"]
    assert [(m["data"]["client_id"], m["data"]["to_state"]) for m in changes] == [
        ("c-r-1", "inquiry"),
        ("c-r-1", "assessed"),
        ("c-r-2", "inquiry"),
        ("c-r-2", "assessed"),
    ]
    assert len(by_topic["tasks"]) == 4 and len(by_topic["rejected"]) == 1
    assert "original" not in by_topic["rejected"][0]["data"]  # a dashboard key: codes only
    positions = [tuple(map(int, m["id"].split("."))) for m in body["messages"]]
    assert positions == sorted(positions) and positions[-1][0] <= body["position"]

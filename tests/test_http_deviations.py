"""Readiness, deviations, the full export, the stream and metrics over HTTP, on the real
server (uvicorn on a loopback port, SQLite underneath): the same objects as the CLI."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import Journey
from test_cli import kapflow, write_events
from test_http_api import Service, start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-deviations') / 'kapflow.db'}"
    server, secrets = start_service(db)
    yield Service(server.url, db, secrets)
    server.stop()


@pytest.fixture(scope="module")
def clinic(service: Service) -> dict[str, Any]:
    """c-dev-ready: ready to dose. c-dev-twice: dosed without a chaperone (R7), then a
    second dosing started before any integration (R8, the state stays `dosed`)."""
    ready = Journey("c-dev-ready")
    twice = Journey("c-dev-twice")
    events: list[Any] = [
        *ready.to_prepared(),
        ready.booking("dosing", "d-1"),
        ready.chaperone("d-1"),
        *twice.to_prepared(),
        twice.booking("dosing", "d-1"),
        twice.dosing_started("s-1", chaperone=False),
        twice.dosing_completed("s-1"),
        twice.dosing_started("s-2"),
        {"specversion": "1.0", "type": "nope.unknown"},
    ]
    with service.client("admin") as admin:
        outcomes = admin.post("/v1/events", json=events).json()
    assert [o["outcome"] for o in outcomes].count("deviation") == 2
    return {"second_dosing": events[-2]}


def test_readiness_over_http_is_the_object_kapflow_check_prints(
    service: Service, clinic: dict[str, Any]
) -> None:
    at = "2026-01-06T10:00:00Z"
    with service.client("dashboard") as dashboard:
        response = dashboard.get(
            "/v1/clients/c-dev-ready/readiness", params={"action": "dose", "at": at}
        )
    assert response.status_code == 200
    printed = kapflow("check", "c-dev-ready", "--dose", "--at", at, "--json", db=service.db)
    assert response.json() == json.loads(printed.stdout)
    assert response.json()["ready"] is True


def test_readiness_of_a_client_dosed_twice_without_integration_fails_r8(
    service: Service, clinic: dict[str, Any]
) -> None:
    with service.client("dashboard") as dashboard:
        body = dashboard.get(
            "/v1/clients/c-dev-twice/readiness", params={"at": "2026-01-08T09:00:00Z"}
        ).json()
    assert body["ready"] is False and body["state"] == "dosed"
    assert {c["rule"] for c in body["checks"] if not c["passed"]} >= {"R8"}


def test_readiness_of_an_unknown_client_or_a_bad_time_is_refused(
    service: Service, clinic: dict[str, Any]
) -> None:
    with service.client("dashboard") as dashboard:
        unknown = dashboard.get("/v1/clients/c-nobody/readiness")
        bad_time = dashboard.get("/v1/clients/c-dev-ready/readiness", params={"at": "soon"})
        bad_action = dashboard.get("/v1/clients/c-dev-ready/readiness", params={"action": "fly"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert bad_time.status_code == 422 and bad_time.json()["field"] == "at"
    assert bad_action.status_code == 422


def test_deviations_over_http_are_the_rows_kapflow_deviations_prints(
    service: Service, clinic: dict[str, Any]
) -> None:
    with service.client("auditor") as auditor:
        rows = auditor.get("/v1/deviations").json()
        still_open = auditor.get("/v1/deviations", params={"open": "true"}).json()
        later = auditor.get("/v1/deviations", params={"from": "2026-01-05T18:00:00Z"}).json()
        bad = auditor.get("/v1/deviations", params={"to": "yesterday"})
        ready_client = auditor.get("/v1/deviations", params={"client": "c-dev-ready"}).json()
    printed = kapflow("deviations", "--json", db=service.db).stdout.splitlines()
    assert rows == [json.loads(line) for line in printed]
    # (Other tests of this module may add clients of their own.)
    assert [
        (row["client_id"], row["rules"]) for row in rows if row["client_id"] == "c-dev-twice"
    ] == [
        ("c-dev-twice", ["R7"]),
        ("c-dev-twice", ["R8"]),
    ]
    assert still_open == rows  # nobody has reviewed them yet
    assert [row["event_id"] for row in later] == [clinic["second_dosing"]["id"]]
    assert bad.status_code == 422 and bad.json()["field"] == "to"
    assert ready_client == []  # the client ready to dose broke no rule


def test_the_export_with_rejections_holds_every_decision(
    service: Service, clinic: dict[str, Any]
) -> None:
    with service.client("auditor") as auditor:
        jsonl = auditor.get("/v1/export", params={"include_rejections": "true"})
        table = auditor.get(
            "/v1/export", params={"format": "csv", "include_rejections": "true"}
        ).text
        plain = auditor.get("/v1/export").text
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    rejections = [line for line in lines if line.get("kind") == "rejection"]
    assert len(rejections) == 1 and "nope.unknown" in rejections[0]["original"]
    assert rejections[0]["reasons"][0]["code"]
    assert all(line.get("kind") != "rejection" for line in map(json.loads, plain.splitlines()))
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [row["kind"] for row in rows].count("rejection") == 1
    assert [row["deviations"] for row in rows if row["outcome"] == "deviation"] == ["R7", "R8"]


def stream_messages(service: Service, topics: str) -> list[dict[str, Any]]:
    """Every message of `topics` from the start of the outbox, until the stream is idle (its
    first keep-alive comment: nothing more was committed)."""
    got: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {service.secrets['dashboard']}"}
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream(
            "GET", "/v1/stream", params={"after": 0, "topics": topics}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == ": keep-alive":
                break
            if not line and "data" in fields:
                got.append({"event": fields["event"], "data": json.loads(fields["data"])})
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return got


def test_the_stream_marks_deviations_on_state_changes_and_as_their_own_event(
    service: Service, clinic: dict[str, Any]
) -> None:
    second = clinic["second_dosing"]["id"]
    deviations = stream_messages(service, "deviations")
    assert [e["event"] for e in deviations] == ["deviations", "deviations"]
    assert [(e["data"]["status"], e["data"]["rules"]) for e in deviations] == [
        ("recorded", ["R7"]),
        ("recorded", ["R8"]),
    ]
    assert deviations[1]["data"]["event_id"] == second
    assert deviations[1]["data"]["session_id"] == "s-2"
    assert deviations[1]["data"]["review_task_id"]
    # The second dosing left the client `dosed`: its state change is sent all the same,
    # marked with the rule it broke, so a dashboard following state changes sees it.
    changes = stream_messages(service, "state-changes")
    marked = [e["data"] for e in changes if "deviations" in e["data"]]
    assert [(m["from_state"], m["to_state"], m["deviations"]) for m in marked] == [
        ("prepared", "dosed", ["R7"]),
        ("dosed", "dosed", ["R8"]),
    ]
    assert marked[1]["event_id"] == second


def metrics_text(service: Service, *wanted: str) -> str:
    """/metrics once every `wanted` line is in it (the feed counts what was committed)."""
    end = time.monotonic() + 10
    with service.client("dashboard") as dashboard:
        while True:
            text = dashboard.get("/metrics").text
            if all(line in text for line in wanted) or time.monotonic() > end:
                return text
            time.sleep(0.1)


def test_metrics_count_deviations_by_rule_and_the_deviation_outcome(
    service: Service, clinic: dict[str, Any], tmp_path: Path
) -> None:
    text = metrics_text(service, 'kapflow_deviations_total{rule="R8"} 1.0')
    assert 'kapflow_deviations_total{rule="R7"} 1.0' in text
    assert 'kapflow_deviations_total{rule="R8"} 1.0' in text
    assert 'kapflow_events_total{outcome="deviation",type="clinician.dosing_started"} 2.0' in text
    # A deviation recorded by another process on the same database counts as well.
    j = Journey("c-dev-elsewhere")
    events = [
        *j.to_prepared(),
        j.booking("dosing", "d-1"),
        j.dosing_started("s-1", chaperone=False),
    ]
    kapflow("ingest", str(write_events(tmp_path / "elsewhere.jsonl", events)), db=service.db)
    text = metrics_text(service, 'kapflow_deviations_total{rule="R7"} 2.0')
    assert 'kapflow_deviations_total{rule="R7"} 2.0' in text


def test_the_openapi_document_describes_readiness_and_deviations(service: Service) -> None:
    spec = httpx.get(f"{service.url}/openapi.json").json()
    readiness = spec["paths"]["/v1/clients/{client_id}/readiness"]["get"]
    deviations = spec["paths"]["/v1/deviations"]["get"]
    assert readiness["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReadinessOut"
    }
    assert {p["name"] for p in readiness["parameters"]} >= {"client_id", "action", "at"}
    assert {p["name"] for p in deviations["parameters"]} == {"from", "to", "open", "client"}
    schema = spec["components"]["schemas"]["DeviationOut"]
    assert set(schema["properties"]["status"]["enum"]) == {"open", "resolved", "reviewed"}
    export = spec["paths"]["/v1/export"]["get"]
    assert "include_rejections" in {p["name"] for p in export["parameters"]}

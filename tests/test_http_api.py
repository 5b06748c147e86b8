"""The HTTP API, against the real server (uvicorn on a loopback port, SQLite underneath)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import JOURNEY, SCHEDULING, Journey
from fhir.resources.bundle import Bundle

from kapflow.entrypoints.http.context import HttpSettings
from kapflow.entrypoints.http.server import ServiceThread
from kapflow.service.access import ROLES, KeyRing, create_key
from kapflow.service.ingest import IngestService
from kapflow.store import open_store

KAPFLOW = shutil.which("kapflow", path=str(Path(sys.executable).parent)) or "kapflow"


@dataclass
class Service:
    url: str
    db: str
    secrets: dict[str, str]

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.secrets[role]}"},
            timeout=30,
        )


def start_service(db: str, **options: Any) -> tuple[ServiceThread, dict[str, str]]:
    made = {
        role: create_key(role, f"{role}-key", ["scheduling"], sources=[SCHEDULING])
        if role == "publisher"
        else create_key(role, f"{role}-key")
        for role in ROLES
    }
    options = {"poll_interval": 0.2, "keepalive": 1.0, **options}
    settings = HttpSettings(db=db, keys=KeyRing(new.key for new in made.values()), **options)
    return ServiceThread(settings).start(), {role: new.secret for role, new in made.items()}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-api') / 'kapflow.db'}"
    server, secrets = start_service(db, max_body_bytes=64 * 1024, max_events=50)
    yield Service(server.url, db, secrets)
    server.stop()


@pytest.fixture(scope="module")
def admin(service: Service) -> Iterator[httpx.Client]:
    with service.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def prepared_client(admin: httpx.Client) -> Journey:
    """c-api-1: through preparation, then dosed; its events sent over HTTP."""
    j = Journey("c-api-1")
    events = [*j.to_prepared(), j.booking("dosing", "d-1"), j.chaperone("d-1"), *j.dosing("s-1")]
    response = admin.post("/v1/events", json=events)
    assert response.status_code == 200
    assert [o["outcome"] for o in response.json()] == ["accepted"] * len(events)
    return j


# --- POST /v1/events ---------------------------------------------------------------------


def test_a_single_event_gets_a_single_outcome_object(admin: httpx.Client) -> None:
    event = Journey("c-api-single").inquiry()
    response = admin.post("/v1/events", json=event)
    assert response.status_code == 200
    assert response.json() == {
        "id": event["id"],
        "subject": "c-api-single",
        "type": "scheduling.inquiry_received",
        "outcome": "accepted",
        "reasons": [],
        "state": "inquiry",
    }
    assert response.headers["X-Kapflow-Outcomes"] == "accepted=1"
    assert "X-Kapflow-Insecure-Dev" not in response.headers


def test_an_array_gets_one_outcome_per_event_in_order_same_as_the_ingest_service(
    admin: httpx.Client, tmp_path: Path
) -> None:
    j = Journey("c-api-batch")
    inquiry = j.inquiry()
    under_age = j.assessment(age=16)
    events: list[Any] = [
        inquiry,
        inquiry,  # duplicate
        j.evaluation("journey_clinical"),  # parked: premature
        {"specversion": "1.0", "type": "nope.unknown"},
        42,
        under_age,
    ]
    response = admin.post("/v1/events", json=events)
    assert response.status_code == 200
    body = response.json()
    assert [o["outcome"] for o in body] == [
        "accepted",
        "duplicate",
        "parked",
        "rejected",
        "rejected",
        "accepted",
    ]
    # Exactly IngestResult.as_dict(), as the same events give through the service directly.
    store = open_store(f"sqlite:///{tmp_path / 'direct.db'}")
    expected = [r.as_dict() for r in IngestService(store).ingest_batch(events)]
    store.close()
    assert body == expected
    assert response.headers["X-Kapflow-Outcomes"] == "accepted=2,duplicate=1,parked=1,rejected=2"


def test_malformed_json_is_a_400_that_does_not_echo_the_body(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/events",
        content=b'{"subject": "SECRET-NAME", broken',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert "SECRET" not in response.text


@pytest.mark.parametrize(
    ("body", "kind"), [(b"3", "number"), (b'"text"', "string"), (b"null", "null")]
)
def test_json_that_is_neither_object_nor_array_is_a_422_naming_it(
    admin: httpx.Client, body: bytes, kind: str
) -> None:
    response = admin.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_body"
    assert kind in response.json()["detail"]


def test_too_large_bodies_and_batches_are_413(admin: httpx.Client) -> None:
    big = admin.post(
        "/v1/events",
        content=b"[" + b" " * (70 * 1024) + b"]",
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    assert big.json()["error"] == "body_too_large"
    many = admin.post("/v1/events", json=[{}] * 51)
    assert many.status_code == 413
    assert many.json() == {
        "error": "too_many_events",
        "detail": "51 events in one request; at most 50",
        "limit": 50,
    }


def test_a_non_json_content_type_is_415(admin: httpx.Client) -> None:
    response = admin.post("/v1/events", content=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_an_empty_array_is_an_empty_answer(admin: httpx.Client) -> None:
    assert admin.post("/v1/events", json=[]).json() == []


# --- clients, history, replay --------------------------------------------------------------


def test_client_view_is_the_cli_object(
    service: Service, admin: httpx.Client, prepared_client: Journey
) -> None:
    view = admin.get("/v1/clients/c-api-1").json()
    assert view["state"] == "dosed"
    cli = subprocess.run(
        [KAPFLOW, "client", "c-api-1", "--json", "--db", service.db],
        capture_output=True,
        text=True,
        check=True,
    )
    assert view == json.loads(cli.stdout)


def test_unknown_client_is_404(admin: httpx.Client) -> None:
    response = admin.get("/v1/clients/c-nobody")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert admin.get("/v1/clients/c-nobody/history").status_code == 404
    assert admin.get("/v1/clients/c-nobody/replay").status_code == 404


def test_history_is_gap_free_and_hash_chained(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    entries = admin.get("/v1/clients/c-api-1/history").json()
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    assert entries[-1]["to_state"] == "dosed"


@pytest.mark.parametrize("which", ["as_of", "known_at", None])
def test_replay_is_the_same_object_as_kapflow_replay_json(
    service: Service, admin: httpx.Client, prepared_client: Journey, which: str | None
) -> None:
    history = admin.get("/v1/clients/c-api-1/history").json()
    moment = history[3]["occurred_at"] if which == "as_of" else history[-1]["recorded_at"]
    params = {which: moment} if which else {}
    response = admin.get("/v1/clients/c-api-1/replay", params=params)
    assert response.status_code == 200
    flags = [f"--{which.replace('_', '-')}", moment] if which else []
    cli = subprocess.run(
        [KAPFLOW, "replay", "c-api-1", *flags, "--json", "--db", service.db],
        capture_output=True,
        text=True,
        check=True,
    )
    assert response.json() == json.loads(cli.stdout)
    if which == "as_of":
        assert response.json()["events_applied"] == 4


def test_replay_refuses_a_time_without_a_zone(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    response = admin.get("/v1/clients/c-api-1/replay", params={"as_of": "2026-01-05T09:00:00"})
    assert response.status_code == 422
    assert response.json()["field"] == "as_of"


def test_clients_by_state(admin: httpx.Client, prepared_client: Journey) -> None:
    dosed = admin.get("/v1/clients", params={"state": "dosed"}).json()
    assert "c-api-1" in [c["client_id"] for c in dosed]
    assert all(c["state"] == "dosed" for c in dosed)
    bad = admin.get("/v1/clients", params={"state": "flying"})
    assert bad.status_code == 422
    assert "state" in bad.json()["detail"]


# --- stats, tasks, FHIR ----------------------------------------------------------------------


def test_stats_counts_states_funnel_and_tasks(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    stats = admin.get("/v1/stats", params={"now": "2030-01-01T00:00:00Z"}).json()
    assert stats["clients_by_state"]["dosed"] >= 1
    funnel = {stage["stage"]: stage for stage in stats["funnel"]}
    assert list(funnel) == ["inquiry", "assessed", "cleared", "prepared", "dosed", "integrating"]
    assert funnel["dosed"]["reached"] >= 1
    assert (
        funnel["inquiry"]["reached"] >= funnel["assessed"]["reached"] >= funnel["dosed"]["reached"]
    )
    # In 2030 every open task is overdue.
    assert stats["overdue_tasks"] == stats["open_tasks"] > 0
    assert stats["overdue_tasks_by_owner"] == stats["open_tasks_by_owner"]


def test_tasks_open_overdue_and_owner_filters(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    all_open = admin.get("/v1/tasks", params={"open": "true", "client": "c-api-1"}).json()
    assert all_open and all(t["status"] in ("requested", "in-progress") for t in all_open)
    assert all(t["for"] == "c-api-1" for t in all_open)
    earliest = min(t["due"] for t in all_open)
    none_due = admin.get(
        "/v1/tasks", params={"overdue": "true", "now": earliest, "client": "c-api-1"}
    )
    assert none_due.json() == []
    assert none_due.headers["X-Kapflow-Now"] == earliest
    later = admin.get(
        "/v1/tasks", params={"overdue": "true", "now": "2030-01-01T00:00:00Z", "client": "c-api-1"}
    ).json()
    assert len(later) == len(all_open)
    billing = admin.get("/v1/tasks", params={"open": "true", "owner": "billing"}).json()
    assert all(t["owner"] == "billing" for t in billing)
    assert admin.get("/v1/tasks", params={"owner": "janitor"}).status_code == 422


def test_fhir_tasks_are_a_valid_r5_bundle_with_filters(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    response = admin.get("/fhir/Task", params={"status": "requested", "patient": "c-api-1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(response.text)
    assert bundle.type == "searchset"
    resources = [entry.resource for entry in bundle.entry or []]
    assert resources and all(r.status == "requested" for r in resources)
    task = resources[0]
    assert task.for_fhir.reference == "Patient/c-api-1"
    assert task.code.coding[0].system == "urn:kapflow:task-code"
    assert task.restriction.period.end is not None
    assert task.focus.identifier.system == "urn:kapflow:event"
    owners = admin.get("/fhir/Task", params={"owner": "scheduler"}).json()
    assert all(
        e["resource"]["owner"]["identifier"]["value"] == "scheduler" for e in owners["entry"]
    )
    assert admin.get("/fhir/Task", params={"status": "dreaming"}).status_code == 422


# --- rejections, parked, export, verify, access log --------------------------------------


def test_rejections_hold_reasons_and_the_original(admin: httpx.Client) -> None:
    admin.post("/v1/events", json=[{"specversion": "1.0", "id": "rj-1", "type": "bad.type"}])
    rows = admin.get("/v1/rejections", params={"limit": 1000}).json()
    mine = [r for r in rows if r["id"] == "rj-1"]
    assert mine and mine[0]["reasons"][0]["code"] in ("UNKNOWN_TYPE", "SCHEMA")
    assert json.loads(mine[0]["original"])["id"] == "rj-1"
    after = admin.get("/v1/rejections", params={"after": mine[0]["position"]}).json()
    assert all(r["position"] > mine[0]["position"] for r in after)


def test_parked_events_are_listed_until_they_apply(admin: httpx.Client) -> None:
    j = Journey("c-api-parked")
    early = j.evaluation("journey_clinical")
    assert admin.post("/v1/events", json=[j.inquiry(), early]).json()[1]["outcome"] == "parked"
    parked = admin.get("/v1/parked", params={"client": "c-api-parked"}).json()
    assert [p["id"] for p in parked] == [early["id"]]
    assert parked[0]["event"]["source"] == JOURNEY


def test_export_streams_jsonl_and_csv(admin: httpx.Client, prepared_client: Journey) -> None:
    with admin.stream("GET", "/v1/export", params={"format": "jsonl"}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert any(line["client_id"] == "c-api-1" for line in lines)
    one = admin.get("/v1/export", params={"format": "csv", "client": "c-api-1"})
    rows = list(csv.DictReader(io.StringIO(one.text)))
    assert {row["client_id"] for row in rows} == {"c-api-1"}
    assert "attachment" in one.headers["content-disposition"]


def test_verify_reports_ok(admin: httpx.Client, prepared_client: Journey) -> None:
    report = admin.get("/v1/verify").json()
    assert report["ok"] is True and report["divergences"] == []
    assert report["entries"] >= 8


def test_sensitive_reads_are_in_the_access_log_with_who_what_and_which_client(
    service: Service, prepared_client: Journey
) -> None:
    with service.client("auditor") as auditor:
        auditor.get("/v1/clients/c-api-1/history")
        auditor.get("/v1/clients/c-api-1/replay", params={"as_of": "2026-02-01T00:00:00Z"})
        auditor.get("/v1/export", params={"client": "c-api-1"})
        log = auditor.get("/v1/access-log", params={"client": "c-api-1", "who": "auditor-key"})
    actions = [(r["action"], r["client_id"], r["detail"]) for r in log.json()]
    assert ("history", "c-api-1", None) in actions
    assert ("replay", "c-api-1", "as_of=2026-02-01T00:00:00Z") in actions
    assert ("export", "c-api-1", "format=jsonl") in actions
    assert all(r["who"] == "auditor-key" and r["role"] == "auditor" for r in log.json())


def test_every_read_of_clinical_data_names_who_read_it(
    service: Service, prepared_client: Journey
) -> None:
    """SPEC §6: every read of clinical data is in the access log, not only the audits."""
    with service.client("auditor") as auditor:
        auditor.get("/v1/clients/c-api-1")
        auditor.get("/v1/clients/c-api-1/readiness", params={"at": "2026-02-01T00:00:00Z"})
        auditor.get("/v1/deviations", params={"client": "c-api-1"})
        auditor.get("/v1/tasks", params={"client": "c-api-1"})
        auditor.get("/v1/clients", params={"state": "prepared"})
        log = auditor.get("/v1/access-log", params={"who": "auditor-key"})
    actions = {(r["action"], r["client_id"]) for r in log.json()}
    assert {
        ("client", "c-api-1"),
        ("readiness", "c-api-1"),
        ("deviations", "c-api-1"),
        ("tasks", "c-api-1"),
        ("clients", None),
    } <= actions


def test_the_access_log_survives_a_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    server, secrets = start_service(db)
    headers = {"Authorization": f"Bearer {secrets['auditor']}"}
    httpx.get(f"{server.url}/v1/verify", headers=headers)
    server.stop()
    server, secrets = start_service(db)
    headers = {"Authorization": f"Bearer {secrets['auditor']}"}
    rows = httpx.get(f"{server.url}/v1/access-log", headers=headers).json()
    server.stop()
    assert [r["action"] for r in rows] == ["verify", "access-log"]


# --- probes, metrics, docs, dashboard ----------------------------------------------------


def test_health_and_readiness(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok", "insecure_dev": False}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "database": "ok",
        "access_log": "ok",
        "writer": "ok",
    }


def test_metrics_expose_outcomes_latency_tasks_and_states(
    admin: httpx.Client, prepared_client: Journey
) -> None:
    text = admin.get("/metrics").text
    assert 'kapflow_events_total{outcome="accepted",type="scheduling.inquiry_received"}' in text
    assert "kapflow_ingest_request_seconds_bucket" in text
    assert 'kapflow_open_tasks{owner="scheduler"}' in text
    assert 'kapflow_clients{state="dosed"}' in text
    assert 'kapflow_http_requests_total{method="POST",route="/v1/events",status="200"}' in text


def test_openapi_docs_and_dashboard_are_served_without_external_assets(service: Service) -> None:
    spec = httpx.get(f"{service.url}/openapi.json").json()
    for path in [
        "/v1/events",
        "/v1/clients/{client_id}",
        "/v1/clients/{client_id}/history",
        "/v1/clients/{client_id}/replay",
        "/v1/clients",
        "/v1/stats",
        "/v1/tasks",
        "/v1/rejections",
        "/v1/parked",
        "/v1/export",
        "/v1/verify",
        "/v1/stream",
        "/v1/access-log",
        "/metrics",
        "/healthz",
        "/readyz",
        "/fhir/Task",
    ]:
        assert path in spec["paths"], path
    assert "at most 50 events" in spec["paths"]["/v1/events"]["post"]["description"]
    docs = httpx.get(f"{service.url}/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert httpx.get(f"{service.url}/docs/static/swagger-ui-bundle.js").status_code == 200
    page = httpx.get(f"{service.url}/dashboard")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http://www.w3.org", "")
    assert httpx.get(f"{service.url}/dashboard/dashboard.js").status_code == 200
    assert httpx.get(f"{service.url}/dashboard/../server.py").status_code == 404

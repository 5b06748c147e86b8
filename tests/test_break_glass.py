"""Break-glass (issue 18): in an emergency a person reads a client their role would not let
them read, for a few minutes only, loudly logged, and a clinician reviews it afterwards.

The person is signed in with OpenID Connect (a real provider, tests/oidc_fixtures.py) and
holds the `dashboard` role (the provider's `clinician` mapped to it with
KAPFLOW_OIDC_ROLE_MAP), which reads no histories. The grant lasts
KAPFLOW_BREAK_GLASS_MINUTES (5 here); "after the window" moves the server's clock on (the
`server_now` the authorisation reads) by less than the token's own lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest
from builders import Journey
from oidc_fixtures import AUDIENCE, Provider, oidc_providers  # noqa: F401
from test_http_api import Service, start_service

from kapflow.entrypoints.http import auth
from kapflow.entrypoints.http.context import server_now
from kapflow.service.audit import verify
from kapflow.settings import load_break_glass_settings
from kapflow.store import open_store
from kapflow.store.access_log import AccessRecord, iter_entries, open_access_log

CLIENT = "c-bg-1"
MINUTES = 5


@pytest.fixture(scope="module")
def providers(oidc_providers: tuple[Provider, Provider]) -> tuple[Provider, Provider]:  # noqa: F811
    return oidc_providers


@pytest.fixture(scope="module")
def env(providers: tuple[Provider, Provider]) -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_OIDC_ISSUER", providers[0].issuer)
        env.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
        env.setenv("KAPFLOW_OIDC_ROLE_MAP", "clinician=dashboard")
        env.setenv("KAPFLOW_BREAK_GLASS_MINUTES", str(MINUTES))
        yield env


@pytest.fixture(scope="module")
def service(env: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('break-glass') / 'kapflow.db'}"
    server, secrets = start_service(db)
    try:
        admin = {"Authorization": f"Bearer {secrets['admin']}"}
        j = Journey(CLIENT)
        response = httpx.post(f"{server.url}/v1/events", json=j.to_assessed(), headers=admin)
        assert response.status_code == 200, response.text
        yield Service(server.url, db, secrets)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ana(providers: tuple[Provider, Provider]) -> dict[str, str]:
    """Front-desk staff on the dashboard role (tokens live 10 minutes: one for the module)."""
    return {"Authorization": f"Bearer {providers[0].sign_in('ana')}"}


@pytest.fixture(scope="module")
def broken(service: Service, ana: dict[str, str]) -> dict[str, object]:
    response = httpx.post(
        f"{service.url}/v1/clients/{CLIENT}/break-glass",
        json={"reason": "emergency_care"},
        headers=ana,
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _history(service: Service, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{service.url}/v1/clients/{CLIENT}/history", headers=headers)


def _access_rows(service: Service) -> list[AccessRecord]:
    log = open_access_log(service.db)
    try:
        return list(iter_entries(log))
    finally:
        log.close()


def test_without_breaking_the_glass_a_dashboard_person_reads_no_history(
    service: Service, ana: dict[str, str]
) -> None:
    response = _history(service, ana)
    assert response.status_code == 403
    assert response.json()["permission"] == "read_history"


def test_breaking_the_glass_lets_the_person_read_the_client_within_its_window(
    service: Service, ana: dict[str, str], broken: dict[str, object]
) -> None:
    assert _history(service, ana).status_code == 200
    replay = httpx.get(f"{service.url}/v1/clients/{CLIENT}/replay", headers=ana)
    assert replay.status_code == 200, replay.text
    assert replay.json()["state"] == "assessed"
    other = Journey("c-bg-other")
    admin = {"Authorization": f"Bearer {service.secrets['admin']}"}
    httpx.post(f"{service.url}/v1/events", json=other.inquiry(), headers=admin)
    # The grant is for that one client.
    response = httpx.get(f"{service.url}/v1/clients/c-bg-other/history", headers=ana)
    assert response.status_code == 403


def test_the_grant_lasts_the_minutes_the_setting_gives_and_names_the_person(
    broken: dict[str, object],
) -> None:
    grant = broken["grant"]
    assert isinstance(grant, dict)
    assert (grant["actor"], grant["reason"], grant["client_id"]) == (
        "ana",
        "emergency_care",
        CLIENT,
    )
    span = datetime.fromisoformat(grant["until"]) - datetime.fromisoformat(grant["granted_at"])
    assert span == timedelta(minutes=MINUTES)


def test_after_the_window_the_person_reads_no_history_again(
    service: Service,
    ana: dict[str, str],
    broken: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    later = server_now() + timedelta(minutes=MINUTES, seconds=1)
    monkeypatch.setattr(auth, "server_now", lambda: later)
    assert _history(service, ana).status_code == 403


def test_the_break_glass_event_opens_an_urgent_review_naming_who_and_why(
    service: Service, broken: dict[str, object]
) -> None:
    admin = {"Authorization": f"Bearer {service.secrets['admin']}"}
    client = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=admin).json()
    event = broken["event"]
    assert isinstance(event, dict)
    [review] = [t for t in client["open_tasks"] if t["focus"] == event["id"]]
    assert review["code"] == "review-break-glass-access"
    assert (review["owner"], review["priority"]) == ("clinician", "urgent")
    due = datetime.fromisoformat(review["due"]) - datetime.fromisoformat(review["authored_on"])
    assert due == timedelta(days=1)
    assert "ana" in review["note"] and "emergency_care" in review["note"]
    history = _history(service, admin).json()
    [entry] = [e for e in history if e["event_id"] == event["id"]]
    assert entry["type"] == "operations.break_glass_invoked"
    assert entry["event"]["data"] == {"actor": "ana", "reason": "emergency_care", "minutes": 5}
    assert entry["from_state"] == entry["to_state"] == "assessed"


def test_every_read_under_the_grant_is_marked_in_the_access_log_and_logged_loudly(
    service: Service,
    ana: dict[str, str],
    broken: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="kapflow.http.auth"):
        assert _history(service, ana).status_code == 200
    [line] = [r.getMessage() for r in caplog.records if "break-glass read" in r.getMessage()]
    assert "actor=ana" in line and f"client={CLIENT}" in line
    event = broken["event"]
    assert isinstance(event, dict)
    row = [r for r in _access_rows(service) if r.who == "ana"][-1]
    assert (row.role, row.action, row.client_id) == ("break_glass", "history", CLIENT)
    assert row.detail is not None
    assert "role=dashboard" in row.detail and f"grant={event['id']}" in row.detail


def test_a_grant_survives_a_restart_because_it_is_read_from_the_history(
    service: Service, ana: dict[str, str], broken: dict[str, object]
) -> None:
    again, _ = start_service(service.db)
    try:
        response = httpx.get(f"{again.url}/v1/clients/{CLIENT}/history", headers=ana)
        assert response.status_code == 200, response.text
    finally:
        again.stop()


def test_a_break_glass_event_posted_under_another_source_grants_nothing(
    service: Service, ana: dict[str, str]
) -> None:
    client_id = "c-bg-forged"
    j = Journey(client_id)
    assessed = j.to_assessed()
    forged = j.event(
        "operations.break_glass_invoked",
        {"actor": "ana", "reason": "emergency_care", "minutes": 30},
        source="urn:qmts:scheduling",
    )
    forged["time"] = server_now().strftime("%Y-%m-%dT%H:%M:%SZ")  # in force now, if honoured
    admin = {"Authorization": f"Bearer {service.secrets['admin']}"}
    response = httpx.post(f"{service.url}/v1/events", json=[*assessed, forged], headers=admin)
    assert [o["outcome"] for o in response.json()][-1] == "accepted"
    history = httpx.get(f"{service.url}/v1/clients/{client_id}/history", headers=ana)
    assert history.status_code == 403


@pytest.mark.parametrize("role", ["publisher", "auditor", "dashboard"])
def test_a_publisher_an_auditor_or_a_dashboards_key_cannot_break_the_glass(
    service: Service, role: str
) -> None:
    response = httpx.post(
        f"{service.url}/v1/clients/{CLIENT}/break-glass",
        json={"reason": "emergency_care"},
        headers={"Authorization": f"Bearer {service.secrets[role]}"},
    )
    assert response.status_code == 403, response.text
    assert "break_glass" in response.json()["permission"]


def test_an_operations_key_may_break_the_glass_and_its_name_is_the_actor(
    service: Service,
) -> None:
    response = httpx.post(
        f"{service.url}/v1/clients/{CLIENT}/break-glass",
        json={"reason": "safety_concern"},
        headers={"Authorization": f"Bearer {service.secrets['operations']}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["grant"]["actor"] == "operations-key"


def test_a_reason_must_be_a_code_and_the_client_must_exist(
    service: Service, ana: dict[str, str]
) -> None:
    url = f"{service.url}/v1/clients/{CLIENT}/break-glass"
    assert httpx.post(url, json={"reason": "She called, crying"}, headers=ana).status_code == 422
    missing = f"{service.url}/v1/clients/c-bg-nobody/break-glass"
    assert httpx.post(missing, json={"reason": "emergency_care"}, headers=ana).status_code == 404


def test_the_recorded_break_glass_verifies(service: Service, broken: dict[str, object]) -> None:
    store = open_store(service.db, access="read")
    try:
        assert verify(store).ok
    finally:
        store.close()


def test_a_grant_lasts_thirty_minutes_unless_the_setting_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAPFLOW_BREAK_GLASS_MINUTES", raising=False)
    assert load_break_glass_settings().minutes == 30

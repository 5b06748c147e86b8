"""People sign in with OpenID Connect (SPEC §6): a real provider's token lets a clinician read
a client and complete their task, and the history and the access log name the person."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from builders import Journey
from oidc_fixtures import AUDIENCE, Provider, oidc_providers  # noqa: F401
from test_http_api import Service, start_service

from kapflow.service.access import person_role
from kapflow.settings import SettingsError, load_oidc_settings
from kapflow.store.access_log import iter_entries, open_access_log

CLIENT = "c-oidc-1"


@pytest.fixture(scope="module")
def providers(oidc_providers: tuple[Provider, Provider]) -> tuple[Provider, Provider]:  # noqa: F811
    return oidc_providers


@pytest.fixture(scope="module")
def service(
    providers: tuple[Provider, Provider], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    ours, _ = providers
    db = f"sqlite:///{tmp_path_factory.mktemp('http-oidc') / 'kapflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_OIDC_ISSUER", ours.issuer)
        env.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
        env.setenv("KAPFLOW_OIDC_LEEWAY_SECONDS", "0")
        server, secrets = start_service(db)
        try:
            j = Journey(CLIENT)
            admin = {"Authorization": f"Bearer {secrets['admin']}"}
            # Assessed, then put on hold: a `review-hold` task waits in the clinician's queue.
            response = httpx.post(
                f"{server.url}/v1/events", json=[*j.to_assessed(), j.hold()], headers=admin
            )
            assert response.status_code == 200, response.text
            yield Service(server.url, db, secrets)
        finally:
            server.stop()


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _clinician_task(service: Service, token: str) -> dict[str, object]:
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=_as(token))
    assert response.status_code == 200, response.text
    [task] = [t for t in response.json()["open_tasks"] if t["owner"] == "clinician"]
    return task


def test_a_signed_in_clinician_completes_their_task_and_the_history_names_them(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ana")
    task = _clinician_task(service, token)
    response = httpx.post(
        f"{service.url}/v1/tasks/{task['id']}/complete", headers=_as(token), json={}
    )
    assert response.status_code == 200, response.text
    assert response.json()["task"]["completed_by"] == "ana"
    history = httpx.get(f"{service.url}/v1/clients/{CLIENT}/history", headers=_as(token))
    assert history.status_code == 200, history.text
    completion = history.json()[-1]
    assert completion["type"] == "operations.task_completed"
    assert completion["event"]["data"]["actor"] == "ana"
    [closed] = [c for c in completion["outcome"]["tasks"] if c["task"]["id"] == task["id"]]
    assert (closed["change"], closed["task"]["completed_by"]) == ("closed", "ana")


def test_the_access_log_names_the_person_who_read_a_history(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ana")
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}/history", headers=_as(token))
    assert response.status_code == 200, response.text
    log = open_access_log(service.db)
    try:
        rows = [row for row in iter_entries(log) if row.action == "history"]
    finally:
        log.close()
    assert (rows[-1].who, rows[-1].role, rows[-1].client_id) == ("ana", "operations", CLIENT)


def test_me_names_the_signed_in_person_and_their_kapflow_role(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    response = httpx.get(f"{service.url}/v1/me", headers=_as(providers[0].sign_in("ana")))
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["role"]) == ("ana", "operations")
    assert response.json()["may_act_on_tasks"] is True


def test_an_auditor_signed_in_reads_but_may_not_act_on_tasks(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ola")
    task = _clinician_task(service, providers[0].sign_in("ana"))
    history = httpx.get(f"{service.url}/v1/clients/{CLIENT}/history", headers=_as(token))
    assert history.status_code == 200
    refused = httpx.post(f"{service.url}/v1/tasks/{task['id']}/claim", headers=_as(token))
    assert refused.status_code == 403


def test_a_token_signed_with_an_elliptic_curve_key_es256_is_accepted(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ana", client_id="es256")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    response = httpx.get(f"{service.url}/v1/me", headers=_as(token))
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "ana"


def test_a_person_with_no_kapflow_role_is_forbidden(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    response = httpx.get(
        f"{service.url}/v1/clients/{CLIENT}", headers=_as(providers[0].sign_in("nobody"))
    )
    assert response.status_code == 403
    assert "no kapflow role" in response.json()["detail"]


def test_a_token_for_another_audience_is_refused(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ana", resource="https://elsewhere.test/api")
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=_as(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "token for another audience"


def test_a_token_from_another_issuer_is_refused_even_when_signed_with_a_known_key(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[1].sign_in("ana")
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=_as(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "token from another issuer"


def test_an_expired_token_is_refused(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    token = providers[0].sign_in("ana", client_id="short-lived")  # valid for 2 s
    time.sleep(3.1)
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=_as(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "expired token"


def test_a_token_with_a_forged_signature_is_refused(
    service: Service, providers: tuple[Provider, Provider]
) -> None:
    header, payload, signature = providers[0].sign_in("ana").split(".")
    forged = f"{header}.{payload}.{signature[:-6]}AAAAAA"
    response = httpx.get(f"{service.url}/v1/clients/{CLIENT}", headers=_as(forged))
    assert response.status_code == 401


def test_openid_connect_settings_refuse_what_would_weaken_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("KAPFLOW_OIDC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAPFLOW_OIDC_ISSUER", "http://idp.example")
    with pytest.raises(SettingsError, match="KAPFLOW_OIDC_ISSUER"):
        load_oidc_settings()
    monkeypatch.setenv("KAPFLOW_OIDC_ISSUER", "https://idp.example/realms/kap")
    with pytest.raises(SettingsError, match="audience is required"):
        load_oidc_settings()
    monkeypatch.setenv("KAPFLOW_OIDC_AUDIENCE", "kapflow")
    monkeypatch.setenv("KAPFLOW_OIDC_ALGORITHMS", "RS256,HS256")
    with pytest.raises(SettingsError, match="KAPFLOW_OIDC_ALGORITHMS"):
        load_oidc_settings()
    monkeypatch.setenv("KAPFLOW_OIDC_ALGORITHMS", "ES256")
    monkeypatch.setenv("KAPFLOW_OIDC_ROLE_MAP", "kap-nurse=publisher")
    with pytest.raises(SettingsError, match="KAPFLOW_OIDC_ROLE_MAP"):
        load_oidc_settings()
    monkeypatch.setenv("KAPFLOW_OIDC_ROLE_MAP", "kap-nurse=operations, kap-audit=auditor")
    settings = load_oidc_settings()
    assert settings.role_names == {"kap-nurse": "operations", "kap-audit": "auditor"}
    assert person_role(["kap-audit", "kap-nurse"], settings.role_names) == "operations"
    assert person_role(["publisher", "unknown"], settings.role_names) is None


def test_an_unreachable_provider_is_a_503_never_a_way_in(
    providers: tuple[Provider, Provider], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = providers[0].sign_in("ana")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("KAPFLOW_OIDC_ISSUER", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
    server, _ = start_service(f"sqlite:///{tmp_path / 'kapflow.db'}")
    try:
        response = httpx.get(f"{server.url}/v1/clients/{CLIENT}", headers=_as(token))
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.json()["error"] == "identity_provider_unavailable"

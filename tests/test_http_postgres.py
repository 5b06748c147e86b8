"""The HTTP service on PostgreSQL: same API, and the access log persisted in that database."""

from __future__ import annotations

import httpx
import pytest
from builders import Journey
from postgres_fixtures import postgres_url  # noqa: F401 - the fixture
from test_http_api import start_service

from kapflow.store.access_log import AccessRecord, open_access_log

pytestmark = pytest.mark.postgres


def test_the_access_log_is_kept_in_postgresql_and_filtered(postgres_url: str) -> None:  # noqa: F811
    log = open_access_log(postgres_url)
    log.record(AccessRecord("2026-11-01T10:00:00Z", "audit-team", "auditor", "history", "c-1"))
    log.record(AccessRecord("2026-11-01T10:01:00Z", "ops", "admin", "export", None, "format=csv"))
    log.close()
    reopened = open_access_log(postgres_url)
    rows = reopened.entries()
    assert [(r.who, r.action, r.client_id) for r in rows] == [
        ("audit-team", "history", "c-1"),
        ("ops", "export", None),
    ]
    assert [r.action for r in reopened.entries(client_id="c-1")] == ["history"]
    assert [r.action for r in reopened.entries(after=rows[0].position or 0)] == ["export"]
    reopened.close()


def test_the_service_runs_on_postgresql(postgres_url: str) -> None:  # noqa: F811
    server, secrets = start_service(postgres_url)
    try:
        admin = {"Authorization": f"Bearer {secrets['admin']}"}
        auditor = {"Authorization": f"Bearer {secrets['auditor']}"}
        events = Journey("c-pg-1").to_assessed()
        outcomes = httpx.post(f"{server.url}/v1/events", json=events, headers=admin).json()
        assert [o["outcome"] for o in outcomes] == ["accepted"] * 3
        view = httpx.get(f"{server.url}/v1/clients/c-pg-1", headers=admin).json()
        assert view["state"] == "assessed"
        history = httpx.get(f"{server.url}/v1/clients/c-pg-1/history", headers=auditor).json()
        assert [e["seq"] for e in history] == [1, 2, 3]
        log = httpx.get(f"{server.url}/v1/access-log", headers=auditor).json()
        assert ("history", "c-pg-1", "auditor-key") in [
            (r["action"], r["client_id"], r["who"]) for r in log
        ]
        stats = httpx.get(f"{server.url}/v1/stats", headers=admin).json()
        assert stats["clients_by_state"]["assessed"] == 1
    finally:
        server.stop()

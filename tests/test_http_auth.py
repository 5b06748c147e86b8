"""Who may do what over HTTP: every role against every endpoint, on the real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builders import JOURNEY, SCHEDULING, Journey
from test_http_api import Service, start_service

from kapflow.entrypoints.http.context import HttpSettings
from kapflow.entrypoints.http.server import ServiceThread
from kapflow.service.access import KeyConfigError, create_key, load_keys

KAPFLOW = shutil.which("kapflow", path=str(Path(sys.executable).parent)) or "kapflow"

# The policy, written out independently of kapflow.service.access.ROLE_PERMISSIONS.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "publish": ("POST", "/v1/events"),
    "client": ("GET", "/v1/clients/c-auth-1"),
    "readiness": ("GET", "/v1/clients/c-auth-1/readiness?action=dose&at=2026-02-01T09:00:00Z"),
    "deviations": ("GET", "/v1/deviations?open=true"),
    "clients": ("GET", "/v1/clients?state=inquiry"),
    "stats": ("GET", "/v1/stats"),
    "pathway": ("GET", "/v1/pathway"),
    "tasks": ("GET", "/v1/tasks?open=true"),
    "stream": ("GET", "/v1/stream"),
    "metrics": ("GET", "/metrics"),
    "fhir": ("GET", "/fhir/Task"),
    "history": ("GET", "/v1/clients/c-auth-1/history"),
    "replay": ("GET", "/v1/clients/c-auth-1/replay?as_of=2027-01-01T00:00:00Z"),
    "export": ("GET", "/v1/export?format=csv"),
    "verify": ("GET", "/v1/verify"),
    "rejections": ("GET", "/v1/rejections"),
    "parked": ("GET", "/v1/parked"),
    "access_log": ("GET", "/v1/access-log"),
}
OPERATIONS = {
    "client",
    "readiness",
    "deviations",
    "clients",
    "stats",
    "pathway",
    "tasks",
    "stream",
    "metrics",
    "fhir",
}
AUDIT = {"history", "replay", "export", "verify", "rejections", "parked", "access_log"}
ALLOWED: dict[str, set[str]] = {
    "publisher": {"publish"},
    "dashboard": OPERATIONS,
    # Staff look clients up (history, replay) and act on tasks (tests/test_http_tasks.py).
    "operations": OPERATIONS | {"history", "replay"},
    "auditor": OPERATIONS | AUDIT,
    "admin": OPERATIONS | AUDIT | {"publish"},
}
PUBLIC = ["/healthz", "/readyz", "/openapi.json", "/docs", "/dashboard"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-auth') / 'kapflow.db'}"
    server, secrets = start_service(db)
    with httpx.Client(base_url=server.url) as client:
        j = Journey("c-auth-1")
        headers = {"Authorization": f"Bearer {secrets['admin']}"}
        assert client.post("/v1/events", json=j.to_assessed(), headers=headers).status_code == 200
    yield Service(server.url, db, secrets)
    server.stop()


def call(service: Service, endpoint: str, headers: dict[str, str]) -> httpx.Response:
    method, path = ENDPOINTS[endpoint]
    with httpx.Client(base_url=service.url, timeout=30) as client:
        if method == "POST":
            event = Journey(f"c-auth-{endpoint}").inquiry()
            return client.post(path, json=event, headers=headers)
        if endpoint != "stream":
            return client.request(method, path, headers=headers)
        # The stream never ends by itself: look at the status, then hang up.
        with client.stream(method, path, headers=headers) as response:
            if response.status_code != 200:
                response.read()
            return response


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_reaches_exactly_its_endpoints(
    service: Service, role: str, endpoint: str
) -> None:
    response = call(service, endpoint, {"Authorization": f"Bearer {service.secrets[role]}"})
    if endpoint in ALLOWED[role]:
        assert response.status_code == 200, (role, endpoint, response.status_code)
    else:
        assert response.status_code == 403, (role, endpoint, response.status_code)
        body = response.json()
        assert body["error"] == "forbidden"
        assert body["role"] == role
        assert role not in body["roles_allowed"] and "admin" in body["roles_allowed"]
        assert body["permission"] in body["detail"]


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer kfk_not-a-real-key"}, {"Authorization": "Basic YTpi"}],
    ids=["no-key", "unknown-key", "not-bearer"],
)
def test_without_a_valid_key_every_data_endpoint_is_401_saying_what_is_missing(
    service: Service, endpoint: str, headers: dict[str, str]
) -> None:
    response = call(service, endpoint, headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "detail" in response.json() and "roles_allowed" in response.json()


@pytest.mark.parametrize("path", PUBLIC)
def test_probes_docs_and_the_dashboard_page_need_no_key(service: Service, path: str) -> None:
    assert httpx.get(service.url + path).status_code == 200


def test_a_publisher_posts_only_types_under_its_prefix_and_a_refusal_records_nothing(
    service: Service,
) -> None:
    j = Journey("c-auth-prefix")
    headers = {"Authorization": f"Bearer {service.secrets['publisher']}"}
    mine = httpx.post(f"{service.url}/v1/events", json=j.inquiry(), headers=headers)
    assert mine.status_code == 200 and mine.json()["outcome"] == "accepted"
    mixed = [j.booking("assessment", "a-1"), j.assessment()]
    refused = httpx.post(f"{service.url}/v1/events", json=mixed, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["refused"] == [{"index": 1, "type": "clinician.assessment_completed"}]
    assert refused.json()["allowed_prefixes"] == ["scheduling"]
    with service.client("admin") as admin:
        view = admin.get("/v1/clients/c-auth-prefix").json()
    assert view["seq"] == 1, "the scheduling event of the refused request was not recorded"


def test_the_query_token_is_accepted_by_the_stream_only(service: Service) -> None:
    token = service.secrets["dashboard"]
    with (
        httpx.Client(base_url=service.url) as client,
        client.stream("GET", f"/v1/stream?access_token={token}") as response,
    ):
        assert response.status_code == 200
    assert httpx.get(f"{service.url}/v1/stats?access_token={token}").status_code == 401


def test_insecure_dev_says_so_on_every_response_and_names_itself_in_the_access_log(
    tmp_path: Path,
) -> None:
    settings = HttpSettings(db=f"sqlite:///{tmp_path / 'k.db'}", keys=None)
    with ServiceThread(settings) as server, httpx.Client(base_url=server.url) as client:
        for path in ["/healthz", "/v1/stats", "/v1/clients/nobody", "/dashboard", "/nowhere"]:
            assert client.get(path).headers["X-Kapflow-Insecure-Dev"] == "true", path
        assert client.get("/healthz").json()["insecure_dev"] is True
        client.get("/v1/verify")
        log = client.get("/v1/access-log").json()
    # Every read of clinical data is logged: the client looked up, then the verify.
    assert [(row["who"], row["action"]) for row in log[:2]] == [
        ("insecure-dev", "client"),
        ("insecure-dev", "verify"),
    ]


# --- key configuration ---------------------------------------------------------------------


def test_keys_load_from_json_toml_and_the_environment(tmp_path: Path) -> None:
    publisher = create_key("publisher", "sched", ["scheduling"], sources=[SCHEDULING])
    auditor = create_key("auditor", "audit-team")
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps({"keys": [publisher.key.as_entry(), auditor.key.as_entry()]}))
    toml_file = tmp_path / "keys.toml"
    toml_file.write_text(publisher.toml_block() + "\n\n" + auditor.toml_block() + "\n")
    for ring in (
        load_keys(str(json_file)),
        load_keys(str(toml_file)),
        load_keys(None, json.dumps([publisher.key.as_entry(), auditor.key.as_entry()])),
    ):
        assert ring.authenticate(publisher.secret) == publisher.key
        assert ring.authenticate(auditor.secret) == auditor.key
        assert ring.authenticate(publisher.secret + "x") is None
    assert publisher.secret not in json_file.read_text() + toml_file.read_text()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "p", "role": "publisher", "sha256": "a" * 64}, "needs at least one prefix"),
        ({"name": "d", "role": "dashboard", "sha256": "secret"}, "64 lowercase hex"),
        ({"name": "d", "role": "root", "sha256": "a" * 64}, "`role` must be one of"),
        ({"name": "d", "role": "admin", "sha256": "a" * 64, "secret": "x"}, "unknown fields"),
        (
            {"name": "d", "role": "dashboard", "sha256": "a" * 64, "prefixes": ["x"]},
            "only publisher",
        ),
    ],
)
def test_a_bad_keys_file_is_refused_with_a_clear_message(entry: dict, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message):
        load_keys(None, json.dumps({"keys": [entry]}))


def test_keys_create_prints_the_secret_once_and_the_hash_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            KAPFLOW,
            "keys",
            "create",
            "--role",
            "publisher",
            "--name",
            "jc",
            "--prefix",
            "prescriber",
            "--source",
            JOURNEY,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line.strip() for line in result.stdout.splitlines()]
    secret = next(line for line in lines if line.startswith("kfk_"))
    entry = json.loads(next(line for line in lines if line.startswith("{")))
    assert entry["role"] == "publisher" and entry["prefixes"] == ["prescriber"]
    assert entry["sources"] == [JOURNEY]
    assert secret not in json.dumps(entry)
    ring = load_keys(None, json.dumps([entry]))
    key = ring.authenticate(secret)
    assert key is not None and key.may_publish_type("prescriber.evaluation_completed")
    assert not key.may_publish_type("prescribers.other")
    assert key.may_publish_source(JOURNEY) and not key.may_publish_source(SCHEDULING)


def test_serve_refuses_to_start_without_keys_or_with_insecure_dev_off_loopback(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAPFLOW_API_KEYS"}
    db = f"sqlite:///{tmp_path / 'k.db'}"
    no_keys = subprocess.run(
        [KAPFLOW, "serve", "--db", db, "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert no_keys.returncode == 2
    assert "no API keys configured" in no_keys.stderr
    exposed = subprocess.run(
        [KAPFLOW, "serve", "--db", db, "--insecure-dev", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert exposed.returncode == 2
    assert "loopback" in exposed.stderr

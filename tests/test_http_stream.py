"""The live stream (SSE) read from the outbox: resume without gaps or duplicates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from builders import Journey
from test_http_api import Service, start_service

from kapflow.service.ingest import IngestService
from kapflow.store import open_store


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-stream') / 'kapflow.db'}"
    # A slow poll: anything delivered within a fraction of it came through the writer's wake-up.
    server, secrets = start_service(db, poll_interval=2.0)
    yield Service(server.url, db, secrets)
    server.stop()


def sse(response: httpx.Response, *, comments: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events from a streaming response."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                fields["data"] = orjson.loads(fields["data"])
                yield fields
            fields = {}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            name, _, value = line.partition(": ")
            fields[name] = value


def read_events(
    service: Service,
    count: int,
    *,
    role: str = "dashboard",
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    deadline: float = 15.0,
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {service.secrets[role]}", **(headers or {})}
    end = time.monotonic() + deadline
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", params=params, headers=auth) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse(response):
            got.append(event)
            if len(got) >= count or time.monotonic() > end:
                break
    return got


def publish(service: Service, events: list[Any]) -> list[dict[str, Any]]:
    with service.client("admin") as admin:
        response = admin.post("/v1/events", json=events)
    assert response.status_code == 200
    return response.json()


def read_until_quiet(
    service: Service, params: dict[str, Any], headers: dict[str, str], role: str = "auditor"
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {service.secrets[role]}", **headers}
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", params=params, headers=auth) as response,
    ):
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(": keep-alive"):
                break  # caught up: the server had nothing more to send for a second
            if not line:
                if "data" in fields:
                    got.append({**fields, "data": orjson.loads(fields["data"])})
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return got


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def test_resuming_with_last_event_id_misses_nothing_and_repeats_nothing(service: Service) -> None:
    clients = [Journey(f"c-sse-{i}") for i in range(4)]
    publish(service, [e for j in clients for e in j.to_prepared()])
    reference = read_until_quiet(service, {"after": 0}, {})
    assert len(reference) > 20
    # Cut inside a row that carries several messages, so the index part of the id matters.
    cut = next(
        i
        for i, (a, b) in enumerate(zip(reference, reference[1:], strict=False))
        if i > 5 and a["id"].split(".")[0] == b["id"].split(".")[0]
    )
    first = read_events(service, cut + 1, role="auditor", params={"after": 0})
    assert ids(first) == ids(reference[: cut + 1])
    last_id = first[-1]["id"]
    # More happens while the consumer is away.
    publish(service, [e for j in clients for e in j.dosing("s-1")])
    full = read_until_quiet(service, {"after": 0}, {})
    resumed = read_until_quiet(service, {}, {"Last-Event-ID": last_id})
    assert ids(first) + ids(resumed) == ids(full)
    assert len(set(ids(full))) == len(full), "no duplicates"
    assert ids(full)[: len(reference)] == ids(reference), "ids are stable across reads"


def test_ids_are_outbox_position_and_index_and_events_are_topics(service: Service) -> None:
    publish(service, [Journey("c-sse-shape").inquiry()])
    events = read_until_quiet(service, {"after": 0}, {})
    for event in events:
        position, index = event["id"].split(".")
        assert position.isdigit() and index.isdigit()
        assert event["event"] in ("state-changes", "tasks", "rejected")
    change = next(e for e in events if e["data"].get("client_id") == "c-sse-shape")
    assert change["event"] == "state-changes"
    assert change["data"]["to_state"] == "inquiry" and change["data"]["from_state"] is None
    positions = [tuple(int(p) for p in e["id"].split(".")) for e in events]
    assert positions == sorted(positions)


def test_a_local_write_reaches_an_open_stream_at_once(service: Service) -> None:
    auth = {"Authorization": f"Bearer {service.secrets['dashboard']}"}
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", headers=auth) as response,
    ):
        events = sse(response)
        started = time.monotonic()
        publish(service, [Journey("c-sse-wake").inquiry()])
        event = next(events)
        elapsed = time.monotonic() - started
    assert event["data"]["client_id"] == "c-sse-wake"
    assert elapsed < 1.0, f"took {elapsed:.2f}s: the writer should wake the feed (poll is 2 s)"


def test_writes_by_another_process_arrive_by_polling(service: Service) -> None:
    auth = {"Authorization": f"Bearer {service.secrets['dashboard']}"}
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", headers=auth) as response,
    ):
        events = sse(response)
        store = open_store(service.db)  # like `kapflow ingest` on the same database
        IngestService(store).ingest_batch([Journey("c-sse-other").inquiry()])
        store.close()
        event = next(events)
    assert event["data"]["client_id"] == "c-sse-other"


def test_keep_alive_comments_flow_while_idle(service: Service) -> None:
    comments: list[str] = []
    auth = {"Authorization": f"Bearer {service.secrets['dashboard']}"}
    started = time.monotonic()
    with (
        httpx.Client(base_url=service.url, timeout=5) as client,
        client.stream("GET", "/v1/stream", headers=auth) as response,
    ):
        for line in response.iter_lines():
            if line.startswith(": keep-alive"):
                comments.append(line)
                break
    assert comments and time.monotonic() - started < 3


def test_dashboards_see_rejection_codes_but_not_the_original_message(service: Service) -> None:
    publish(service, [{"specversion": "1.0", "id": "sse-bad", "type": "x.y", "subject": "c-q"}])
    for role, has_original in (("dashboard", False), ("auditor", True)):
        events = read_until_quiet(service, {"after": 0}, {}, role=role)
        rejected = [e for e in events if e["event"] == "rejected" and e["data"]["id"] == "sse-bad"]
        assert rejected, role
        assert ("original" in rejected[0]["data"]) is has_original
        assert rejected[0]["data"]["reasons"]


def test_a_malformed_last_event_id_or_topic_is_refused(service: Service) -> None:
    with service.client("dashboard") as client:
        bad_id = client.get("/v1/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad_id.status_code == 400
        assert bad_id.json()["error"] == "bad_last_event_id"
        assert client.get("/v1/stream", params={"topics": "gossip"}).status_code == 422


def test_topics_filter_keeps_ids_stable(service: Service) -> None:
    everything = read_until_quiet(service, {"after": 0}, {})
    changes = read_until_quiet(service, {"after": 0, "topics": "state-changes"}, {})
    assert changes == [e for e in everything if e["event"] == "state-changes"]

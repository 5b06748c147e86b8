"""The single writer: concurrent publishers share transactions; a client's events never
interleave."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from builders import Journey
from test_http_api import Service, start_service

from kapflow.service.ingest import IngestResult, IngestService, RawInput
from kapflow.service.writer import SingleWriter, WriterClosed
from kapflow.store import open_store


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-writer') / 'kapflow.db'}"
    server, secrets = start_service(db)
    yield Service(server.url, db, secrets)
    server.stop()


def counter(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_for_one_client_share_transactions_and_never_interleave(
    service: Service,
) -> None:
    j = Journey("c-group")
    with service.client("admin") as admin:
        assert admin.post("/v1/events", json=j.inquiry()).json()["outcome"] == "accepted"
        before = admin.get("/metrics").text
    # 120 requests of three events each, all for the same client, sent by 24 threads at once.
    requests = [
        [
            j.booking("assessment", f"a-{n}"),
            j.cancellation("assessment", f"a-{n}"),
            j.booking("assessment", f"b-{n}"),
        ]
        for n in range(120)
    ]
    local = threading.local()

    def send(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not hasattr(local, "client"):
            local.client = service.client("publisher")
        response = local.client.post("/v1/events", json=events)
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, requests))
    assert all(o["outcome"] == "accepted" for answer in answers for o in answer)

    with service.client("admin") as admin:
        history = admin.get("/v1/clients/c-group/history").json()
        after = admin.get("/metrics").text
        assert admin.get("/v1/verify").json()["ok"] is True
    # Gap-free, and each request's three events are adjacent and in their order.
    assert [e["seq"] for e in history] == list(range(1, 1 + 1 + 3 * 120))
    position = {e["event_id"]: e["seq"] for e in history}
    for events in requests:
        seqs = [position[e["id"]] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + 3)), "a request's events interleaved"
    # Group commit: fewer transactions than requests.
    transactions = counter(after, "kapflow_ingest_transactions_total") - counter(
        before, "kapflow_ingest_transactions_total"
    )
    committed = counter(after, "kapflow_ingest_requests_total") - counter(
        before, "kapflow_ingest_requests_total"
    )
    assert committed == 120
    assert 1 <= transactions < committed, f"{transactions} transactions for {committed} requests"


def test_outcomes_are_returned_to_the_request_that_sent_them(service: Service) -> None:
    clients = [Journey(f"c-own-{n}") for n in range(30)]

    def send(j: Journey) -> tuple[str, list[dict[str, Any]]]:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {service.secrets['admin']}"}
            return j.client_id, client.post(
                "/v1/events", json=j.to_assessed(), headers=headers
            ).json()

    with ThreadPoolExecutor(15) as pool:
        for client_id, outcomes in pool.map(send, clients):
            assert {o["subject"] for o in outcomes} == {client_id}
            assert [o["state"] for o in outcomes] == ["inquiry", "inquiry", "assessed"]


# --- the writer on its own ----------------------------------------------------------------


class PoisonAware(IngestService):
    """An ingest service whose database fails on one particular input."""

    def ingest_batch(self, items: Any) -> list[IngestResult]:
        items = list(items)
        if any(b"poison" in item for item in items if isinstance(item, bytes)):
            raise RuntimeError("database says no")
        return super().ingest_batch(items)


def test_a_request_the_database_fails_on_is_dead_lettered_alone_and_its_group_commits(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    writer = SingleWriter(PoisonAware(store))
    busy, gate = threading.Event(), threading.Event()

    def hold(commit: object) -> None:  # keep the writer busy so the next two form a group
        busy.set()
        gate.wait(5)

    writer.add_listener(hold)
    writer.start()
    first = writer.submit([Journey("c-w0").inquiry()])
    assert busy.wait(5)
    good: Sequence[RawInput] = [orjson.dumps(Journey("c-w1").inquiry())]
    futures = [writer.submit([b'{"poison": 1}']), writer.submit(good)]
    gate.set()
    assert first.result(10)[0].outcome == "accepted"
    # Not a store outage (that would be a StoreError): the input is at fault, so it becomes
    # one rejection instead of an error its publisher would retry for ever.
    (poison,) = futures[0].result(10)
    assert (poison.outcome, [r.code for r in poison.reasons]) == ("rejected", ["UNPROCESSABLE"])
    assert futures[1].result(10)[0].outcome == "accepted"
    # The shared transaction failed, then each request went alone: only the poison failed.
    assert writer.stats.failed_transactions == 2
    assert writer.stats.transactions == 3
    assert [r.original for _, r in store.rejections(limit=10)] == ['{"poison": 1}']
    writer.close()
    with pytest.raises(WriterClosed):
        writer.submit(good)
    store.close()


def test_a_request_abandoned_before_its_turn_is_never_recorded(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    writer = SingleWriter(IngestService(store))
    busy, gate = threading.Event(), threading.Event()

    def hold(commit: object) -> None:
        busy.set()
        gate.wait(5)

    writer.add_listener(hold)
    writer.start()
    writer.submit([Journey("c-a0").inquiry()])
    assert busy.wait(5)
    abandoned = writer.submit([Journey("c-a1").inquiry()])
    assert abandoned.cancel()
    gate.set()
    writer.close()
    assert store.get_client("c-a0") is not None
    assert store.get_client("c-a1") is None
    store.close()

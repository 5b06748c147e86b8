"""Issue 18, finding 1: one publisher key could silence another system's events.

The scheduling key posted an event under the clinical record's source, with the id the
clinical record would use next; when the real event came (a severe adverse event) kapflow
answered `duplicate` and no prescriber was told. SPEC §3: a publisher posts only under the
sources its credentials name, and the same (`source`, `id`) with other content is
`ID_REUSED`, never a silent duplicate.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from builders import JOURNEY, RECORD, SCHEDULING, Journey
from conftest import FIXED_NOW, Clinic

from events import CloudEvent, parse_event
from events.kafka_binding import from_kafka_record
from kapflow.entrypoints.cli import main as kapflow
from kapflow.entrypoints.http.context import HttpSettings
from kapflow.entrypoints.http.server import ServiceThread
from kapflow.entrypoints.worker import ingest_until_recorded
from kapflow.service.access import KeyConfigError, KeyRing, create_key, load_keys
from kapflow.service.digest import content_digest
from kapflow.service.ingest import IngestService
from kapflow.service.work_queue import TaskAction, act_on_task
from kapflow.settings import SettingsError, load_kafka_settings
from kapflow.store import open_store
from kapflow.store.base import EventStore, Receipt
from kapflow.store.sql import SCHEMA_VERSION
from workflow.timers import CLOCK_SOURCE

NOTIFY_PRESCRIBER = "notify-prescriber-adverse-event"
FIXTURES = Path(__file__).parent / "fixtures"


def receipt(store: EventStore, source: str, event_id: str) -> Receipt | None:
    with store.transaction() as tx:
        return tx.receipts([(source, event_id)]).get((source, event_id))


def rejection_codes(store: EventStore) -> list[tuple[str | None, str | None, list[str]]]:
    return [
        (record.source, record.event_id, [r["code"] for r in json.loads(record.reasons)])
        for _, record in store.rejections(limit=1000)
    ]


# Over HTTP: keys bound to their sources ------------------------------------------------------


@dataclass
class Clinics:
    url: str
    db: str
    secrets: dict[str, str]

    def post(self, who: str, body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secrets[who]}"}
        return httpx.post(f"{self.url}/v1/events", json=body, headers=headers, timeout=30)

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secrets['admin']}"}
        return httpx.get(self.url + path, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def clinics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinics]:
    made = {
        "scheduling": create_key(
            "publisher", "scheduling-svc", ["scheduling"], sources=[SCHEDULING]
        ),
        "record": create_key("publisher", "clinical-record", ["clinician"], sources=[RECORD]),
        "legacy": create_key("publisher", "old-scheduling-svc", ["scheduling"]),  # no sources
        "admin": create_key("admin", "ops-admin"),
    }
    db = f"sqlite:///{tmp_path_factory.mktemp('identity') / 'kapflow.db'}"
    settings = HttpSettings(db=db, keys=KeyRing(new.key for new in made.values()))
    server = ServiceThread(settings).start()
    yield Clinics(server.url, db, {who: new.secret for who, new in made.items()})
    server.stop()


def identity_refusals(clinics: Clinics, reason: str) -> float:
    for line in clinics.get("/metrics").text.splitlines():
        if line.startswith(f'kapflow_event_identity_refusals_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_publisher_cannot_post_under_another_systems_source(clinics: Clinics) -> None:
    j = Journey("c-attacked")
    assert clinics.post("scheduling", j.inquiry()).json()["outcome"] == "accepted"
    before = identity_refusals(clinics, "SOURCE_NOT_ALLOWED")
    # The scheduling key takes the id the clinical record will use next.
    squatter = j.event(
        "scheduling.appointment_no_show",
        {"appointment_id": "a-1", "kind": "assessment"},
        source=RECORD,
        event_id="rec-attacked-0007",
    )
    refused = clinics.post("scheduling", [j.booking("assessment", "a-1"), squatter])
    assert refused.status_code == 403
    body = refused.json()
    assert body["error"] == "source_not_allowed"
    assert body["refused"] == [{"index": 1, "source": RECORD}]
    assert body["allowed_sources"] == [SCHEDULING]
    assert "nothing in this request was recorded" in body["detail"]
    assert identity_refusals(clinics, "SOURCE_NOT_ALLOWED") == before + 1
    store = open_store(clinics.db)
    try:
        assert receipt(store, RECORD, "rec-attacked-0007") is None
        assert len(store.history("c-attacked")) == 1  # not even the booking beside it
    finally:
        store.close()

    # The real event under that id: recorded, and the prescriber is to be told at once.
    severe = {**j.adverse_event("severe"), "id": "rec-attacked-0007"}
    outcome = clinics.post("record", severe).json()
    assert (outcome["outcome"], outcome["reasons"]) == ("accepted", [])
    tasks = clinics.get("/v1/tasks?open=true&client=c-attacked").json()
    notify = [task for task in tasks if task["code"] == NOTIFY_PRESCRIBER]
    assert len(notify) == 1 and notify[0]["priority"] == "urgent"
    assert notify[0]["focus"] == "rec-attacked-0007"


def test_a_publisher_key_from_before_sources_were_named_publishes_nothing(
    clinics: Clinics,
) -> None:
    refused = clinics.post("legacy", Journey("c-legacy").inquiry())
    assert refused.status_code == 403
    assert refused.json()["error"] == "source_not_allowed"
    assert "names no sources" in refused.json()["detail"]
    assert clinics.get("/v1/clients/c-legacy").status_code == 404


def test_an_admin_key_may_post_under_any_source(clinics: Clinics) -> None:
    j = Journey("c-admin-any")
    events = [j.inquiry(), j.booking("assessment", "a-1"), j.assessment()]
    events[1]["source"] = JOURNEY  # whatever source it names
    response = clinics.post("admin", events)
    assert response.status_code == 200
    assert [outcome["outcome"] for outcome in response.json()] == ["accepted"] * 3


def test_an_id_reused_over_http_is_rejected_and_counted_not_answered_duplicate(
    clinics: Clinics,
) -> None:
    j = Journey("c-http-reuse")
    clinics.post("scheduling", j.inquiry())
    first = j.adverse_event("severe")
    assert clinics.post("record", first).json()["outcome"] == "accepted"
    before = identity_refusals(clinics, "ID_REUSED")
    other = {**first, "data": {**first["data"], "severity": "mild"}}
    answer = clinics.post("record", other).json()
    assert answer["outcome"] == "rejected"
    assert [reason["code"] for reason in answer["reasons"]] == ["ID_REUSED"]
    assert identity_refusals(clinics, "ID_REUSED") == before + 1
    assert clinics.post("record", first).json()["outcome"] == "duplicate"


# In the store: the same id with other content, on both adapters ----------------------------


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def clinic_on(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Clinic]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    yield Clinic(store)
    store.close()


def test_the_same_id_with_other_content_is_rejected_as_id_reused_and_changes_nothing(
    clinic_on: Clinic,
) -> None:
    clinic, store = clinic_on, clinic_on.store
    j = Journey("c-1")
    clinic.send(j.to_assessed())
    severe = j.adverse_event("severe")
    assert clinic.last(severe).outcome == "accepted"
    original = receipt(store, RECORD, severe["id"])
    assert original is not None and original.outcome == "accepted"
    history = store.history("c-1")
    state, tasks = clinic.client().state, clinic.open_codes()
    assert NOTIFY_PRESCRIBER in tasks

    mild = {**severe, "data": {**severe["data"], "severity": "mild"}}
    answer = clinic.last(mild)
    assert (answer.outcome, [r.code for r in answer.reasons]) == ("rejected", ["ID_REUSED"])
    assert answer.state == state
    assert rejection_codes(store) == [(RECORD, severe["id"], ["ID_REUSED"])]
    [(_, dead_letter)] = store.rejections(limit=10)
    assert json.loads(dead_letter.original)["data"]["severity"] == "mild"
    assert dead_letter.client_id == "c-1"
    # On the `rejected` topic like any other rejection.
    rows = [row for row in store.unpublished(1000) if row[1].kind == "rejection"]
    assert [record.event_id for _, _, record in rows] == [severe["id"]]
    # The first event's receipt, history, state and tasks are as they were.
    assert receipt(store, RECORD, severe["id"]) == original
    assert store.history("c-1") == history
    assert (clinic.client().state, clinic.open_codes()) == (state, tasks)

    # An identical retry of the first is a duplicate, as ever; the reuse again is refused
    # again but dead-lettered once (keyed by its content).
    assert clinic.last(severe).outcome == "duplicate"
    assert clinic.last(mild).outcome == "rejected"
    assert len(store.rejections(limit=10)) == 1


def test_a_reuse_inside_one_batch_is_refused_too(clinic_on: Clinic) -> None:
    j = Journey("c-batch")
    first = j.inquiry()
    other = {**first, "data": {"channel": "phone"}}
    outcomes = [result.outcome for result in clinic_on.send(first, other, first)]
    assert outcomes == ["accepted", "rejected", "duplicate"]
    assert rejection_codes(clinic_on.store) == [(SCHEDULING, first["id"], ["ID_REUSED"])]


def test_the_digest_compared_is_that_of_the_event_as_the_history_recorded_it(
    clinic: Clinic,
) -> None:
    j = Journey("c-1")
    inquiry = j.inquiry()
    clinic.send(inquiry)
    [entry] = clinic.store.history("c-1")
    recorded = parse_event(entry.event)
    assert isinstance(recorded, CloudEvent)
    stored = receipt(clinic.store, SCHEDULING, inquiry["id"])
    assert stored is not None and stored.digest == content_digest(recorded)
    # A redelivery by the worker after a crash: the same bytes, spaced and ordered anew.
    redelivered = json.dumps(dict(reversed(list(inquiry.items()))), indent=2).encode()
    assert clinic.last(redelivered).outcome == "duplicate"
    assert clinic.last(entry.event).outcome == "duplicate"


def test_a_retry_through_a_new_trace_is_still_a_duplicate(clinic: Clinic) -> None:
    j = Journey("c-1")
    traced = {
        **j.inquiry(),
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    assert clinic.last(traced).outcome == "accepted"
    retried = {**traced, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert clinic.last(retried).outcome == "duplicate"


def test_a_parked_event_keeps_its_digest_once_applied(clinic: Clinic) -> None:
    j = Journey("c-1")
    clinic.send(j.to_prepared())
    started, completed = j.dosing("s-1")
    assert clinic.last(completed).outcome == "parked"
    parked = receipt(clinic.store, RECORD, completed["id"])
    assert clinic.last(started).outcome == "accepted"
    applied = receipt(clinic.store, RECORD, completed["id"])
    assert parked is not None and applied is not None and applied.outcome == "accepted"
    assert applied.digest == parked.digest
    assert clinic.last(completed).outcome == "duplicate"
    other = {**completed, "data": {**completed["data"], "released_to_chaperone": False}}
    assert clinic.last(other).outcome == "rejected"


def test_an_id_recorded_before_digests_were_kept_still_answers_duplicate(
    clinic_on: Clinic,
) -> None:
    store = clinic_on.store
    j = Journey("c-1")
    inquiry = j.inquiry()
    clinic_on.send(inquiry)
    statement = "UPDATE receipts SET digest = NULL"
    if store.url.startswith("sqlite"):
        store._query(statement)  # type: ignore[attr-defined]
    else:
        store._query(statement, rows=False)  # type: ignore[attr-defined]
    other = {**inquiry, "data": {"channel": "phone"}}
    assert clinic_on.last(other).outcome == "duplicate"


# Migration -------------------------------------------------------------------------------


def test_a_store_of_the_previous_release_gains_receipt_digests_in_place(tmp_path: Path) -> None:
    copy = tmp_path / "previous.sqlite"
    shutil.copyfile(FIXTURES / "store_2026.11.4.sqlite", copy)
    with sqlite3.connect(copy) as conn:
        source, event_id, client_id = conn.execute(
            "SELECT source, event_id, client_id FROM receipts WHERE outcome = 'accepted'"
            " AND client_id IS NOT NULL ORDER BY source, event_id LIMIT 1"
        ).fetchone()
    store = open_store(f"sqlite:///{copy}")
    try:
        assert store.migrated_from == "4"
        old = receipt(store, source, event_id)
        assert old is not None and old.digest is None
        [entry] = [e for e in store.history(client_id) if e.event_id == event_id]
        event = json.loads(entry.event)
        service = IngestService(store)
        # Recorded before digests: the same id cannot be judged, and stays a duplicate.
        changed = {**event, "time": "2026-01-01T00:00:00Z"}
        assert service.ingest_batch([changed])[0].outcome == "duplicate"
        new = Journey("c-after-migration").inquiry()
        assert service.ingest_batch([new])[0].outcome == "accepted"
        after = receipt(store, new["source"], new["id"])
        assert after is not None and after.digest is not None
    finally:
        store.close()
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            SCHEMA_VERSION,
        )


@pytest.mark.postgres
def test_a_postgres_store_of_the_previous_release_gains_receipt_digests_in_place(
    postgres_url: str,
) -> None:
    store = open_store(postgres_url)
    clinic = Clinic(store)
    inquiry = Journey("c-1").inquiry()
    clinic.send(inquiry)
    store._query("ALTER TABLE receipts DROP COLUMN digest", rows=False)  # type: ignore[attr-defined]
    store._query("UPDATE meta SET value = '4' WHERE key = 'schema_version'", rows=False)  # type: ignore[attr-defined]
    store.close()
    reopened = open_store(postgres_url)
    try:
        assert reopened.migrated_from == "4"  # type: ignore[attr-defined]
        old = receipt(reopened, SCHEDULING, inquiry["id"])
        assert old is not None and old.outcome == "accepted" and old.digest is None
        assert Clinic(reopened).last({**inquiry, "data": {"channel": "web"}}).outcome == "duplicate"
    finally:
        reopened.close()


# On Kafka: the sources the input topic accepts -------------------------------------------


def kafka_inputs(*events: dict[str, Any]) -> list[Any]:
    return [
        from_kafka_record(event["subject"].encode(), orjson.dumps(event), []).raw
        for event in events
    ]


def test_a_kafka_record_under_a_source_the_topic_does_not_accept_is_dead_lettered(
    clinic: Clinic,
) -> None:
    settings = load_kafka_settings(kafka="127.0.0.1:9092", kafka_sources=SCHEDULING)
    j = Journey("c-kafka")
    squatter = j.event(
        "scheduling.appointment_no_show",
        {"appointment_id": "a-1", "kind": "assessment"},
        source=RECORD,
        event_id="rec-kafka-0001",
    )
    # A binary-mode record reaches the service as the attributes decoded from its headers.
    binary = j.event("clinician.hold_placed", {"clinician_id": "clin-7", "reason": "review"})
    inquiry = j.inquiry()
    batch = [*kafka_inputs(inquiry, squatter), binary]
    asyncio.run(ingest_until_recorded(clinic.service, batch, settings))
    assert [e.event_id for e in clinic.store.history("c-kafka")] == [inquiry["id"]]
    assert receipt(clinic.store, RECORD, "rec-kafka-0001") is None
    codes = rejection_codes(clinic.store)
    assert codes == [
        (RECORD, "rec-kafka-0001", ["SOURCE_NOT_ALLOWED"]),
        (RECORD, binary["id"], ["SOURCE_NOT_ALLOWED"]),
    ]
    # Redelivered, the refused records are not dead-lettered twice; the stream goes on.
    asyncio.run(ingest_until_recorded(clinic.service, batch, settings))
    assert len(clinic.store.rejections(limit=10)) == 2

    # The clinical record is allowed on a topic that names it: its real event is recorded.
    both = load_kafka_settings(kafka="127.0.0.1:9092", kafka_sources=f"{SCHEDULING},{RECORD}")
    severe = {**j.adverse_event("severe"), "id": "rec-kafka-0001"}
    asyncio.run(ingest_until_recorded(clinic.service, kafka_inputs(severe), both))
    assert clinic.open_tasks(NOTIFY_PRESCRIBER, "c-kafka")


def test_kafka_sources_are_a_comma_separated_list_and_empty_means_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_kafka_settings(kafka="127.0.0.1:9092").allowed_sources == frozenset()
    monkeypatch.setenv("KAPFLOW_KAFKA_SOURCES", f" {SCHEDULING}, {RECORD} ")
    allowed = load_kafka_settings(kafka="127.0.0.1:9092").allowed_sources
    assert allowed == {SCHEDULING, RECORD, CLOCK_SOURCE}  # the workers' clock publishes too
    monkeypatch.setenv("KAPFLOW_KAFKA_SOURCES", "urn:qmts:scheduling urn:qmts:clinical-record")
    with pytest.raises(SettingsError, match="kafka_sources"):
        load_kafka_settings(kafka="127.0.0.1:9092")


# The keys file and `kapflow keys create --source` --------------------------------------------


def test_keys_create_binds_a_publisher_to_the_sources_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.toml"
    created = [
        "keys", "create", "--role", "publisher", "--name", "scheduling-svc",
        "--prefix", "scheduling", "--source", SCHEDULING, "--source", "urn:qmts:web-booking",
        "--keys-file", str(keys_file), "--json",
    ]  # fmt: skip
    assert kapflow(created) == 0
    secret = json.loads(capsys.readouterr().out)["secret"]
    key = load_keys(str(keys_file)).authenticate(secret)
    assert key is not None and key.sources == (SCHEDULING, "urn:qmts:web-booking")
    assert key.may_publish_source(SCHEDULING) and not key.may_publish_source(RECORD)
    listing = ["keys", "list", "--keys-file", str(keys_file)]
    assert kapflow([*listing, "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 0
    assert f"sources {SCHEDULING},urn:qmts:web-booking" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "a publisher key needs at least one --source"),
        (("--source", "urn:kapflow:clock"), "kapflow's own source"),
        (("--source", "urn:qmts:a b"), "CloudEvents source URIs"),
    ],
)
def test_keys_create_refuses_a_publisher_without_a_source_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    keys_file = tmp_path / "keys.json"
    command = ["keys", "create", "--role", "publisher", "--name", "p", "--prefix", "scheduling"]
    assert kapflow([*command, *extra, "--keys-file", str(keys_file)]) == 2
    assert message in capsys.readouterr().err
    assert not keys_file.exists()


def test_a_keys_file_with_sources_loads_and_one_without_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bound = create_key("publisher", "sched", ["scheduling"], sources=[SCHEDULING])
    legacy = {"name": "old", "role": "publisher", "prefixes": ["clinician"], "sha256": "a" * 64}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [bound.key.as_entry(), legacy]}))
    with caplog.at_level("WARNING", logger="kapflow.keys"):
        ring = load_keys(str(keys_file))
    assert bound.key.as_entry()["sources"] == [SCHEDULING]
    assert ring.authenticate(bound.secret) == bound.key
    [old] = [key for key in ring.keys if key.name == "old"]
    assert not old.may_publish_source(RECORD)
    assert "publisher key old names no sources" in caplog.text
    with pytest.raises(KeyConfigError, match="only publisher keys take sources"):
        auditor = {"name": "audit", "role": "auditor", "sha256": "b" * 64, "sources": [RECORD]}
        load_keys(None, json.dumps([auditor]))


# Retries of a person's act ------------------------------------------------------------------


def test_a_claim_retried_with_the_same_idempotency_key_is_a_duplicate(clinic: Clinic) -> None:
    clinic.send(Journey("c-1").inquiry())
    [task] = clinic.client().open_tasks.values()
    outcomes = [
        act_on_task(
            clinic.store,
            clinic.service.ingest_batch,
            TaskAction("claim", task.id),
            actor="front-desk",
            at=FIXED_NOW + timedelta(seconds=seconds),
            idempotency_key="req-1",
        ).outcome
        for seconds in (0, 5)
    ]
    assert outcomes == ["accepted", "duplicate"]

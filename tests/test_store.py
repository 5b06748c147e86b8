"""Event store guarantees: idempotency, gap-free chained histories, atomic batches, outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from builders import Journey
from conftest import Clinic

from kapflow.service.audit import verify
from kapflow.service.outbox import Message, render
from kapflow.store import open_store
from kapflow.store.base import entry_hash
from workflow.client import GENESIS_HASH


@pytest.fixture(params=["sqlite", "postgres"])
def store_clinic(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Clinic]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    yield Clinic(store)
    store.close()


def test_same_event_twice_is_recorded_once(store_clinic: Clinic) -> None:
    j = Journey()
    inquiry = j.inquiry()
    first, second = store_clinic.send(inquiry, inquiry)
    assert (first.outcome, second.outcome) == ("accepted", "duplicate")
    assert len(store_clinic.store.history("c-1")) == 1
    # Across batches too.
    assert store_clinic.last(inquiry).outcome == "duplicate"
    assert len(store_clinic.store.history("c-1")) == 1


def test_a_rejected_event_sent_again_is_a_duplicate_not_a_second_rejection(
    store_clinic: Clinic,
) -> None:
    j = Journey()
    store_clinic.send(*j.to_assessed())
    contradiction = j.evaluation("joyous", pathway="high_dose")  # Joyous offers low dose only
    assert store_clinic.last(contradiction).outcome == "rejected"
    assert store_clinic.last(contradiction).outcome == "duplicate"
    assert len(store_clinic.store.rejections()) == 1


def test_same_id_from_another_source_is_another_event(store_clinic: Clinic) -> None:
    j = Journey()
    first = j.inquiry()
    second = dict(j.booking("assessment", "a-1"), id=first["id"], source="urn:other:scheduler")
    assert [r.outcome for r in store_clinic.send(first, second)] == ["accepted", "accepted"]


def test_history_sequences_have_no_gaps_and_every_hash_links(store_clinic: Clinic) -> None:
    j = Journey()
    store_clinic.send(*j.to_prepared(), j.dosing_started("s-1", chaperone=False))
    store_clinic.send(*j.dosing("s-1"), j.integration("s-1"))
    entries = store_clinic.store.history("c-1")
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    previous = GENESIS_HASH
    for entry in entries:
        assert entry.prev_hash == previous
        assert entry.hash == entry_hash(entry)
        previous = entry.hash
    assert store_clinic.client().last_hash == previous


def test_a_failing_batch_records_nothing(
    store_clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journey()
    store_clinic.send(j.inquiry())
    before = store_clinic.store.stats()

    original = store_clinic.store.transaction

    class Boom(RuntimeError):
        pass

    def failing_transaction():  # type: ignore[no-untyped-def]
        context = original()

        class Wrapper:
            def __enter__(self):  # type: ignore[no-untyped-def]
                tx = context.__enter__()

                class FailingWrite:
                    def __getattr__(self, name):  # type: ignore[no-untyped-def]
                        return getattr(tx, name)

                    def write(self, batch):  # type: ignore[no-untyped-def]
                        tx.write(batch)
                        raise Boom("disk gone after the writes, before commit")

                return FailingWrite()

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                return context.__exit__(*exc)

        return Wrapper()

    monkeypatch.setattr(store_clinic.store, "transaction", failing_transaction)
    with pytest.raises(Boom):
        store_clinic.send(j.booking("assessment", "a-1"), j.assessment())
    monkeypatch.undo()
    assert store_clinic.store.stats() == before
    assert store_clinic.client().state == "inquiry"
    # The retried batch applies cleanly: nothing half-applied was left behind.
    results = store_clinic.send(j.booking("assessment", "a-2"), j.assessment())
    assert [r.outcome for r in results] == ["accepted", "accepted"]


def published(clinic: Clinic) -> list[Message]:
    return [
        m
        for _, ref, record in clinic.store.outbox_after(0, limit=1000)
        for m in render(ref, record)
    ]


def test_state_changes_and_task_changes_go_to_the_outbox_in_order(store_clinic: Clinic) -> None:
    j = Journey()
    store_clinic.send(*j.to_cleared())
    rows = store_clinic.store.outbox_after(0, limit=100)
    positions = [position for position, _, _ in rows]
    assert positions == sorted(positions) and len(rows) == 4
    messages = published(store_clinic)
    states = [m.payload for m in messages if m.topic == "state-changes"]
    assert [(s["from_state"], s["to_state"]) for s in states] == [
        (None, "inquiry"),
        ("inquiry", "assessed"),
        ("assessed", "cleared"),
    ]
    assert all(s["pathway_version"] and s["recorded_at"] for s in states)
    tasks = [m.payload for m in messages if m.topic == "tasks"]
    assert (tasks[0]["change"], tasks[0]["task"]["code"]) == ("opened", "schedule-assessment")
    assert len({m.id for m in messages}) == len(messages)
    assert all(m.key == "c-1" for m in messages)
    assert len(store_clinic.store.unpublished(limit=1000)) == len(rows)
    store_clinic.store.mark_published([p for p, _, _ in rows[:2]], "2026-06-01T12:00:00Z")
    assert [p for p, _, _ in store_clinic.store.unpublished()] == positions[2:]


def test_rejections_are_dead_lettered_with_the_original_and_reasons(store_clinic: Clinic) -> None:
    bad = '{"specversion":"1.0","id":"x","source":"/s","type":"clinician.unknown","subject":"c-9"}'
    store_clinic.send(bad)
    [(_, record)] = store_clinic.store.rejections()
    assert record.original == bad
    assert json.loads(record.reasons)[0]["code"] == "UNKNOWN_TYPE"
    [message] = published(store_clinic)
    assert (message.topic, message.payload["original"]) == ("rejected", bad)
    assert message.payload["reasons"][0]["code"] == "UNKNOWN_TYPE"


def test_early_evaluation_is_parked_then_applied_after_the_assessment(store_clinic: Clinic) -> None:
    j = Journey()
    inquiry, booking, assessment = j.to_assessed()
    evaluation = j.evaluation()
    evaluation["time"] = assessment["time"]  # the prescriber's message overtook the clinician's
    results = store_clinic.send(inquiry, booking, evaluation)
    assert results[-1].outcome == "parked"
    assert [p.event_id for p in store_clinic.store.parked_events("c-1")] == [evaluation["id"]]
    assert store_clinic.last(assessment).state == "cleared"
    assert store_clinic.store.parked_events("c-1") == []
    assert [e.type for e in store_clinic.store.history("c-1")][-2:] == [
        "clinician.assessment_completed",
        "prescriber.evaluation_completed",
    ]
    assert verify(store_clinic.store).ok


def test_a_parked_event_still_premature_after_the_window_is_recorded_as_a_deviation(
    store_clinic: Clinic,
) -> None:
    from datetime import timedelta

    j = Journey()
    store_clinic.send(j.inquiry())
    early = j.integration("s-1")
    assert store_clinic.last(early).outcome == "parked"
    j.now += timedelta(hours=80)
    store_clinic.send(j.booking("assessment", "a-1"))
    assert store_clinic.store.parked_events("c-1") == []
    assert store_clinic.store.rejections() == []
    recorded = [e for e in store_clinic.store.history("c-1") if e.event_id == early["id"]]
    assert len(recorded) == 1 and "PREMATURE_EXPIRED" in recorded[0].outcome


def test_a_rule_breaking_event_is_rejected_at_once_never_parked(store_clinic: Clinic) -> None:
    j = Journey()
    store_clinic.send(j.inquiry())
    result = store_clinic.last(j.evaluation("joyous", pathway="high_dose"))
    assert [r.code for r in result.reasons] == ["R5"]
    assert result.outcome == "rejected"


def test_one_bad_event_never_stops_a_batch(store_clinic: Clinic) -> None:
    j = Journey()
    results = store_clinic.send(j.inquiry(), "not json", {"type": 5}, j.booking("assessment", "a"))
    assert [r.outcome for r in results] == ["accepted", "rejected", "rejected", "accepted"]


def test_several_clients_are_read_together_each_history_in_order_with_its_snapshot(
    store_clinic: Clinic,
) -> None:
    first, second = Journey("c-1"), Journey("c-2")
    store_clinic.send(first.inquiry(), second.inquiry())  # their entries interleave
    store_clinic.send(*second.to_prepared()[1:], first.booking("assessment", "a-1"))
    store = store_clinic.store
    asked = ["c-2", "nobody", "c-1", "c-2"]
    read = store.client_histories(asked)
    assert [client.client_id for client in read] == asked
    for client in read:
        assert client.entries == store.history(client.client_id)
        assert client.snapshot == store.get_client(client.client_id)
    assert [e.seq for e in read[0].entries] == list(range(1, len(read[0].entries) + 1))
    assert len(read[0].entries) > len(read[2].entries) == 2
    assert (read[1].entries, read[1].snapshot) == ([], None)
    # More ids than one statement's list holds on SQLite: read in chunks, order kept.
    many = store.client_histories([f"absent-{n:04d}" for n in range(1200)] + ["c-1"])
    assert len(many) == 1201 and many[-1].entries == read[2].entries
    assert store.client_histories([]) == []

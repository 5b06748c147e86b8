"""The findings of the order-independence review, each as the clinical sentence it broke.

Three publishers cannot order their messages against one another: each test delivers the
same facts in an order a clinic really sees and checks the client is what the facts say.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from builders import Journey
from conftest import Clinic

from events.upcasting import UPCASTERS, read_recorded, recorded_version
from kapflow.service.audit import verify
from kapflow.service.ingest import IngestService
from kapflow.store import open_store
from kapflow.store.base import EventStore
from workflow.readiness import dosing_readiness
from workflow.releases import CURRENT_RELEASE

FIXTURES = Path(__file__).parent / "fixtures"


def _ready(readiness: dict[str, Any], rule: str) -> bool:
    return next(check["passed"] for check in readiness["checks"] if check["rule"] == rule)


def test_an_assessment_arriving_after_the_dosing_it_preceded_is_recorded(clinic: Clinic) -> None:
    j = Journey()
    inquiry, assessment, evaluation, preparation = (
        j.inquiry(),
        j.assessment(),
        j.evaluation(),
        j.preparation(1),
    )
    dosing = j.dosing_started("s-1")
    results = clinic.send(inquiry, evaluation, preparation, dosing, assessment)
    assert results[-1].outcome == "accepted"  # never ILLEGAL_TRANSITION for arriving late
    client = clinic.client()
    assert client.state == "dosed"
    assert "verify-insurance-benefits" in clinic.open_codes()
    assert "schedule-assessment" not in clinic.open_codes()
    assert client.open_deviations == []  # the late facts cured what the dosing lacked
    assert verify(clinic.store).ok


def test_an_inquiry_arriving_last_still_starts_the_journey(clinic: Clinic) -> None:
    j = Journey()
    inquiry, assessment = j.inquiry(), j.assessment()
    clinic.send(assessment, inquiry)
    assert clinic.client().state == "assessed"
    assert "refer-medical-evaluation" in clinic.open_codes()


def test_two_dosings_arriving_out_of_order_end_as_in_order(tmp_path: Path) -> None:
    j = Journey()
    facts = [
        *j.to_prepared(),
        *j.dosing("s-1"),
        j.integration("s-1"),
        *j.dosing("s-2"),
    ]
    finals = []
    for name, order in (
        ("in-order", facts),
        ("swapped", [*facts[:-4], *facts[-2:], *facts[-4:-2]]),
    ):
        store = open_store(f"sqlite:///{tmp_path / name}.db")
        IngestService(store).ingest_batch(order)
        client = store.get_client("c-1")
        assert client is not None
        finals.append((client.state, sorted(client.open_tasks)))
        store.close()
    assert finals[0] == finals[1]
    assert finals[0][0] == "dosed"


def test_a_hold_release_delivered_before_its_hold_leaves_the_client_released(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    hold, release = j.hold(), j.release()
    clinic.send(release, hold)
    assert clinic.client().state == "prepared"


def test_a_hold_placed_before_a_dosing_but_delivered_after_it_reveals_a_stat_deviation(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    hold = j.hold()
    dosing = j.dosing_started("s-1")
    assert clinic.last(dosing).outcome == "accepted"
    late = clinic.last(hold)
    assert late.outcome == "accepted"
    [deviation] = clinic.client().open_deviations
    assert "ON_HOLD" in deviation["rules"]
    reviews = clinic.open_tasks("review-protocol-deviation")
    assert [review["priority"] for review in reviews] == ["stat"]
    entry = clinic.store.history("c-1")[-1]
    record = json.loads(entry.outcome)
    assert record["rederived"] >= 1
    assert record["rejudged"] == [
        {"event_id": dosing["id"], "session_id": "s-1", "was": [], "now": ["ON_HOLD"]}
    ]
    assert verify(clinic.store).ok


def test_a_session_end_that_happened_before_the_withdrawal_leaves_no_integration_to_book(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"))
    completed = j.dosing_completed("s-1")
    withdrawal = j.withdrawal()
    clinic.send(withdrawal, completed)
    assert clinic.client().state == "withdrawn"
    assert "schedule-integration" not in clinic.open_codes()
    # Duties raised before the withdrawal stay (SPEC §4): the R12 bill of the session.
    assert "bill-private-time" in clinic.open_codes()


def test_a_booking_after_withdrawal_is_recorded_and_someone_sees_why(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry(), j.withdrawal())
    result = clinic.last(j.booking("assessment", "a-9"))
    assert (result.outcome, result.state) == ("accepted", "withdrawn")
    [review] = clinic.open_tasks("clinical-review")
    assert "withdrawn" in review["note"]
    assert "schedule-assessment" not in clinic.open_codes()


def test_a_second_dosing_needs_its_own_confirmed_chaperone(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(),
        j.booking("dosing", "d-1"),
        j.chaperone("d-1"),
    )
    at = datetime.fromisoformat(clinic.client().last_event_time or "") + timedelta(hours=1)
    assert _ready(dosing_readiness(clinic.client(), at), "R7")
    clinic.send(*j.dosing("s-1"), j.integration("s-1"), j.booking("dosing", "d-2"))
    at = datetime.fromisoformat(clinic.client().last_event_time or "") + timedelta(hours=1)
    readiness = dosing_readiness(clinic.client(), at)
    assert not _ready(readiness, "R7")
    assert readiness["appointment_id"] == "d-2"
    assert [t["about"] for t in clinic.open_tasks("confirm-chaperone")] == ["d-2"]
    clinic.send(j.chaperone("d-2"))
    at = datetime.fromisoformat(clinic.client().last_event_time or "") + timedelta(hours=1)
    assert _ready(dosing_readiness(clinic.client(), at), "R7")


def test_a_client_held_for_a_lapsed_subscription_is_in_a_staff_queue(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous", pathway="low_dose"), j.lapse())
    client = clinic.client()
    assert client.state == "on_hold"
    staff = [task for task in client.open_tasks.values() if task.owner != "client"]
    assert any(task.code == "renew-low-dose-subscription" for task in staff)


def test_every_client_on_hold_in_the_demo_has_a_staff_task(tmp_path: Path) -> None:
    from kapflow.demo.cohort import generate_cohort

    store = open_store(f"sqlite:///{tmp_path / 'demo.db'}")
    IngestService(store).ingest_batch(list(generate_cohort(150, seed=7)))
    held = [c for c in store.clients(state="on_hold", limit=10_000)]
    assert held
    for client in held:
        assert any(task.owner != "client" for task in client.open_tasks.values()), client.client_id
    store.close()


def test_a_recorded_dosing_of_an_earlier_release_is_read_through_its_upcaster() -> None:
    event = Journey().dosing_started("s-1")
    assert "appointment_id" not in event["data"]
    assert recorded_version(event["type"], "2026.11.5") == 1
    assert recorded_version(event["type"], CURRENT_RELEASE.version) == 2
    calls: list[dict[str, Any]] = []
    upcaster = UPCASTERS[("clinician.dosing_started", 1)]
    UPCASTERS[("clinician.dosing_started", 1)] = lambda data: calls.append(data) or upcaster(data)
    try:
        read = read_recorded(json.dumps(event), "2026.11.5")
    finally:
        UPCASTERS[("clinician.dosing_started", 1)] = upcaster
    assert calls == [event["data"]]
    assert read.data.appointment_id is None  # type: ignore[attr-defined]
    # Today's own records need no upcasting.
    assert read_recorded(json.dumps(event), CURRENT_RELEASE.version) == read


def _continue_one(store: EventStore) -> str:
    client_id = next(
        cid
        for cid in store.client_ids()
        if (snap := store.get_client(cid)) is not None and snap.state in ("dosed", "integrating")
    )
    snapshot = store.get_client(client_id)
    assert snapshot is not None and snapshot.last_event_time is not None
    j = Journey(client_id, start=datetime.fromisoformat(snapshot.last_event_time))
    service = IngestService(store)
    service.ingest_batch([j.adverse_event("mild")])
    # A fact dated before the new one, and before facts the old release recorded.
    start = datetime.fromisoformat(snapshot.last_event_time) - timedelta(days=2)
    [result] = service.ingest_batch([Journey(client_id, start=start).adverse_event("mild")])
    assert result.outcome in ("accepted", "deviation")
    return client_id


def test_stores_of_every_earlier_release_verify_and_their_clients_continue(tmp_path: Path) -> None:
    for release in ("2026.11.3", "2026.11.4", "2026.11.5"):
        copy = tmp_path / f"{release}.db"
        shutil.copy(FIXTURES / f"store_{release}.sqlite", copy)
        store = open_store(f"sqlite:///{copy}")
        try:
            assert verify(store).ok, release
            client_id = _continue_one(store)
            versions = [entry.pathway_version for entry in store.history(client_id)]
            assert versions[-1] == CURRENT_RELEASE.version and release in versions
            assert verify(store).ok, release
        finally:
            store.close()


def test_an_event_dated_in_the_future_is_not_a_fact_yet(tmp_path: Path) -> None:
    from datetime import UTC

    now = datetime(2026, 3, 1, 9, tzinfo=UTC)
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    service = IngestService(store, clock=lambda: now)
    j = Journey(start=now + timedelta(minutes=30))
    early = j.inquiry()
    [result] = service.ingest_batch([early])
    assert (result.outcome, [r.code for r in result.reasons]) == ("rejected", ["TIME_IN_FUTURE"])
    assert store.get_client("c-1") is None
    # Once its time has come, the same event is recorded: it was never receipted.
    later = IngestService(store, clock=lambda: now + timedelta(hours=2))
    [again] = later.ingest_batch([early])
    assert again.outcome == "accepted", again.reasons
    # Within the skew (5 min): a publisher's clock a little ahead is fine.
    [skewed] = service.ingest_batch(
        [
            Journey("c-2", start=now).event(
                "scheduling.inquiry_received", {"channel": "email"}, after=timedelta(minutes=4)
            )
        ]
    )
    assert skewed.outcome == "accepted"
    store.close()

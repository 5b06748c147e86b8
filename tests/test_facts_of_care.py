"""Facts of care are never lost (SPEC §3): what the clinic found, as scenarios.

A fact that breaks the protocol is recorded (state follows what happened, duties open) and
flagged for review; rules are judged on the facts as they stood at the event's own time;
no safety duty (R10, R11) or bill is dropped by a withdrawal, a completion or a hold.
"""

from __future__ import annotations

import itertools
import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import Journey
from conftest import Clinic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kapflow.service.audit import verify
from kapflow.service.clock import tick
from kapflow.service.ingest import IngestService
from kapflow.store import open_store
from workflow.releases import CURRENT_RELEASE

FIXTURE = Path(__file__).parent / "fixtures" / "store_2026.11.3.sqlite"
# Written by release 2026.11.4 (UUIDv5 task ids): 24 clients, 641 entries, 6 deviations.
FIXTURE_2026_11_4 = Path(__file__).parent / "fixtures" / "store_2026.11.4.sqlite"


def codes(result: Any) -> list[str]:
    return [reason.code for reason in result.reasons]


# Finding 1: R10 whatever the state --------------------------------------------------------


@pytest.mark.parametrize("ending", ["course_completed", "withdrawal"])
def test_a_severe_reaction_after_the_course_ended_still_notifies_the_prescriber(
    clinic: Clinic, ending: str
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"))
    clinic.send(getattr(j, ending)())
    result = clinic.last(j.adverse_event("severe"))
    assert result.outcome == "accepted"
    assert result.state in ("completed", "withdrawn")  # not in care: no hold to place
    [notify] = clinic.open_tasks("notify-prescriber-adverse-event")
    assert notify["priority"] == "urgent"


def test_an_adverse_event_of_an_ineligible_client_is_recorded(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry())
    assert clinic.last(j.assessment(age=17)).state == "ineligible"
    assert clinic.last(j.adverse_event("moderate")).outcome == "accepted"
    assert clinic.open_tasks("notify-prescriber-adverse-event")


# Finding 2: a session that ends during the hold it caused -----------------------------------


def test_a_dosing_completed_during_the_hold_opens_safety_billing_and_integration(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), j.dosing_started("s-1"))
    assert clinic.last(j.adverse_event("severe")).state == "on_hold"
    result = clinic.last(j.dosing_completed("s-1", released=False, duration=150))
    assert (result.outcome, result.state) == ("accepted", "on_hold")  # the hold stays
    open_codes = clinic.open_codes()
    for duty in ("safety-follow-up-release", "bill-private-time", "schedule-integration"):
        assert duty in open_codes
    # Nothing is left waiting to expire: a later tick changes none of it.
    tick(clinic.service, j.now + timedelta(days=4))
    assert "safety-follow-up-release" in clinic.open_codes()


# Finding 3: leaving keeps the duties that are still owed ------------------------------------


@pytest.mark.parametrize("ending", ["withdrawal", "course_completed"])
def test_leaving_care_never_cancels_safety_duties_reviews_or_bills(
    clinic: Clinic, ending: str
) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(),
        j.dosing_started("s-1", chaperone=False),
        j.dosing_completed("s-1", released=False, duration=150),
        j.adverse_event("moderate"),
        j.integration("s-1"),
    )
    clinic.send(getattr(j, ending)())
    kept = set(clinic.open_codes())
    assert {
        "notify-prescriber-adverse-event",
        "safety-follow-up-release",
        "bill-private-time",
        "review-protocol-deviation",
        "abstinence-reminder-after-dosing",
    } <= kept
    assert "schedule-dosing" not in kept and "renew-high-dose-package" not in kept


def test_a_withdrawal_cancels_what_can_no_longer_happen(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_cleared())
    assert "schedule-preparation" in clinic.open_codes()
    clinic.send(j.withdrawal())
    assert "schedule-preparation" not in clinic.open_codes()


# Finding 4: judged at the event's time, not in arrival order ---------------------------------


def _clearance_and_dosing(j: Journey, clearance_first_in_time: bool) -> list[dict[str, Any]]:
    events = [*j.to_assessed()]
    if clearance_first_in_time:
        clearance = j.evaluation("journey_clinical")
        prep = j.preparation(1)
        dosing = j.dosing_started("s-1")
    else:
        prep = j.preparation(1)
        dosing = j.dosing_started("s-1")
        clearance = j.evaluation("journey_clinical")
    return [*events, clearance, prep, dosing]


def test_a_dosing_before_its_clearance_arrived_is_resolved_by_the_late_clearance(
    clinic: Clinic,
) -> None:
    j = Journey()
    *before, clearance, prep, dosing = _clearance_and_dosing(j, clearance_first_in_time=True)
    clinic.send(*before)
    # Delivered out of order: the dosing first, then the preparation, then the clearance.
    first = clinic.last(dosing)
    assert (first.outcome, first.state) == ("deviation", "dosed")
    assert set(codes(first)) == {"R5", "R6"}
    assert clinic.open_tasks("review-protocol-deviation")[0]["priority"] == "stat"
    clinic.send(prep, clearance)
    assert clinic.open_tasks("review-protocol-deviation") == []
    assert clinic.client().open_deviations == []
    closed_reviews = [
        change
        for entry in clinic.store.history("c-1")
        for change in json.loads(entry.outcome)["tasks"]
        if change["task"]["code"] == "review-protocol-deviation" and change["change"] == "closed"
    ]
    assert len(closed_reviews) == 1 and "resolved" in closed_reviews[0]["task"]["note"]
    assert verify(clinic.store).ok


def test_a_clearance_issued_after_the_dosing_does_not_cover_it(clinic: Clinic) -> None:
    j = Journey()
    *before, clearance, prep, dosing = _clearance_and_dosing(j, clearance_first_in_time=False)
    clinic.send(*before)
    clinic.send(prep)  # recorded while the clearance is awaited
    result = clinic.last(dosing)
    assert "R5" in codes(result)
    clinic.send(clearance)
    [open_deviation] = clinic.client().open_deviations
    assert open_deviation["rules"] == ["R5"]  # prepared in time; the clearance came too late
    [review] = clinic.open_tasks("review-protocol-deviation")
    assert review["priority"] == "stat"


def _deviation_rules(clinic: Clinic, client_id: str) -> list[list[str]]:
    return [d["rules"] for d in clinic.client(client_id).open_deviations]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(range(5)),
    clearance_first=st.booleans(),
    chaperone=st.booleans(),
)
def test_arrival_order_of_clearance_preparation_and_a_session_never_changes_the_outcome(
    tmp_path_factory: pytest.TempPathFactory,
    order: list[int],
    clearance_first: bool,
    chaperone: bool,
) -> None:
    """The final state, the doses left and the open deviations depend on event times only,
    whatever order the clearance, the preparation and a session's start, completion and
    integration arrive in (SPEC §2; completions and integrations park until their start)."""
    finals = []
    for arrival in (list(range(5)), order):
        store = open_store(f"sqlite:///{tmp_path_factory.mktemp('perm') / 'k.db'}")
        clinic = Clinic(store)
        j = Journey()
        clinic.send(*j.to_assessed())
        if clearance_first:
            facts = [j.evaluation("journey_clinical"), j.preparation(1)]
        else:
            facts = [j.preparation(1), j.evaluation("journey_clinical")]
        facts += [
            j.dosing_started("s-1", chaperone=chaperone),
            j.dosing_completed("s-1"),
            j.integration("s-1"),
        ]
        for index in arrival:
            clinic.send(facts[index])
        client = clinic.client()
        finals.append(
            (client.state, client.doses_remaining, _deviation_rules(clinic, "c-1"), client.parked)
        )
        assert verify(store).ok
        store.close()
    assert finals[0] == finals[1]
    assert finals[0][2] == ([] if chaperone else [["R7"]])


# Finding 5: a rule-breaking dosing moves the client as it happened ---------------------------


def test_a_rule_breaking_dosing_opens_the_usual_duties_and_the_next_events_follow(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    result = clinic.last(j.dosing_started("s-2"))  # no integration since s-1: R8
    assert (result.outcome, result.state) == ("deviation", "dosed")
    after = [r.outcome for r in clinic.send(j.dosing_completed("s-2"), j.integration("s-2"))]
    assert after == ["accepted", "accepted"]
    assert "schedule-integration" in clinic.open_codes()  # s-1 is still owed its integration


def test_an_expired_parked_fact_is_recorded_as_a_deviation_never_dropped(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared())
    # The completion of a dosing whose start never arrives.
    parked = clinic.last(j.dosing_completed("s-9", released=False, duration=150))
    assert parked.outcome == "parked"
    [expired] = tick(clinic.service, j.now + timedelta(hours=73)).expired_parked
    assert expired.outcome == "deviation" and "PREMATURE_EXPIRED" in codes(expired)
    assert clinic.client().state == "dosed"
    for duty in ("safety-follow-up-release", "bill-private-time", "review-protocol-deviation"):
        assert duty in clinic.open_codes()
    assert verify(clinic.store).ok


# Versioned pathways ----------------------------------------------------------------------


def test_a_store_written_by_the_previous_release_verifies_and_keeps_working(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "previous.db"
    shutil.copy(FIXTURE, copy)
    store = open_store(f"sqlite:///{copy}")
    try:
        before = verify(store)
        assert before.ok, before.divergences[:3]
        versions = {entry.pathway_version for entry in store.iter_history()}
        assert versions == {"2026.11.3"}
        # A client in flight continues under the new release from its next event.
        in_flight = next(
            cid
            for cid in store.client_ids()
            if (snap := store.get_client(cid)) is not None and snap.state == "integrating"
        )
        snapshot = store.get_client(in_flight)
        assert snapshot is not None and snapshot.last_event_time is not None
        j = Journey(in_flight, start=datetime.fromisoformat(snapshot.last_event_time))
        [result] = IngestService(store).ingest_batch([j.course_completed()])
        assert result.outcome in ("accepted", "deviation")
        [last] = store.history(in_flight)[-1:]
        assert last.pathway_version == CURRENT_RELEASE.version
        assert verify(store).ok
    finally:
        store.close()


def test_a_store_with_unordered_task_ids_verifies_and_its_open_tasks_still_close(
    tmp_path: Path,
) -> None:
    """2026.11.4 wrote UUIDv5 task ids; its clients go on under time-ordered ids, and the
    tasks it opened are still found and closed by the new release's events."""
    from kapflow.service.work_queue import TaskAction, act_on_task

    copy = tmp_path / "previous.db"
    shutil.copy(FIXTURE_2026_11_4, copy)
    store = open_store(f"sqlite:///{copy}")
    try:
        assert verify(store).ok
        assert {entry.pathway_version for entry in store.iter_history()} == {"2026.11.4"}
        snapshot = next(
            snap
            for cid in store.client_ids()
            if (snap := store.get_client(cid)) is not None and snap.state == "integrating"
        )
        old = sorted(snapshot.open_tasks.values(), key=lambda task: task.id)
        assert old and all(uuid.UUID(task.id).version == 5 for task in old)
        assert snapshot.last_event_time is not None
        acted_at = datetime.fromisoformat(snapshot.last_event_time) + timedelta(hours=1)
        service = IngestService(store)
        done = act_on_task(
            store, service.ingest_batch, TaskAction("complete", old[0].id), actor="ops", at=acted_at
        )
        assert done.outcome == "accepted"
        assert done.task is not None and done.task.status == "completed"
        j = Journey(snapshot.client_id, start=acted_at)
        reaction = j.adverse_event("severe")  # always opens the prescriber's notification
        [result, reported] = service.ingest_batch([j.course_completed(), reaction])
        assert result.outcome in ("accepted", "deviation") and reported.outcome == "accepted"
        after = store.get_client(snapshot.client_id)
        assert after is not None and after.state == "completed"
        assert old[0].id not in after.open_tasks
        new_tasks = set(after.open_tasks) - set(snapshot.open_tasks)
        assert new_tasks and all(uuid.UUID(task_id).version == 8 for task_id in new_tasks)
        for task in old:  # each old-id task is still open, or closed in the store
            stored = store.task(task.id)
            assert task.id in after.open_tasks or (stored is not None and not stored.is_open)
        new_entries = store.history(snapshot.client_id)[-3:]
        assert {entry.pathway_version for entry in new_entries} == {CURRENT_RELEASE.version}
        assert verify(store).ok
    finally:
        store.close()


def test_task_ids_sort_in_the_order_care_happened(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"))
    history = clinic.store.history("c-1")
    happened = {entry.event_id: entry.occurred_at for entry in history}
    tasks = [
        change["task"]
        for entry in history
        for change in json.loads(entry.outcome)["tasks"]
        if change["change"] == "opened"
    ]
    assert len(tasks) > 5
    for task in tasks:
        task_id = uuid.UUID(task["id"])
        assert task_id.version == 8 and task_id.variant == uuid.RFC_4122
        raised = datetime.fromisoformat(happened[task["focus"]])  # the raising event's time
        assert int.from_bytes(task_id.bytes[:6], "big") == int(raised.timestamp() * 1000)
    by_time = sorted(tasks, key=lambda task: (happened[task["focus"]], task["id"]))
    assert by_time == sorted(tasks, key=lambda task: task["id"])


def test_a_task_id_is_a_pure_function_of_the_facts_under_every_release() -> None:
    from workflow.tasks import task_id_for

    v5 = task_id_for("c-1", "urn:s", "e-1", "bill-private-time")
    assert v5 == task_id_for("c-1", "urn:s", "e-1", "bill-private-time")
    assert uuid.UUID(v5).version == 5
    early = task_id_for("c-1", "urn:s", "e-1", "bill", raised_at="2026-01-05T09:00:00Z")
    late = task_id_for("c-1", "urn:s", "e-0", "bill", raised_at="2026-01-05T09:00:01Z")
    assert early < late and uuid.UUID(early).version == 8
    assert early[:13] == "019b8d62-7a80"  # 2026-01-05T09:00:00Z is 1,767,603,600,000 ms
    # The same name hashes to the same 74 bits whatever the time.
    again = task_id_for("c-1", "urn:s", "e-1", "bill", raised_at="2030-01-01T00:00:00Z")
    assert again[15:] == early[15:] and again[:13] != early[:13]  # all but time and version


def test_every_release_in_history_is_known_and_old_ones_are_frozen() -> None:
    from workflow.releases import RELEASES

    assert RELEASES["2026.11.3"].records_deviations is False
    assert RELEASES["2026.11.4"].records_deviations is True
    assert RELEASES["2026.11.4"].time_ordered_task_ids is False
    assert RELEASES["2026.11.5"].time_ordered_task_ids is True
    assert RELEASES["2026.11.5"].derives_from_facts is False
    assert RELEASES["2026.12.1"].derives_from_facts is True
    assert list(RELEASES)[-1] == CURRENT_RELEASE.version == "2026.12.1"
    assert list(itertools.islice(RELEASES, 1)) == ["2026.11.3"]


def test_old_histories_need_their_own_release_to_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture is not trivially compatible: judged by the new rules it would diverge
    (withdrawals there cancelled safety tasks), so verify really uses each entry's release."""
    import kapflow.service.audit as audit
    from workflow.releases import CURRENT_RELEASE

    copy = tmp_path / "previous.db"
    shutil.copy(FIXTURE, copy)
    store = open_store(f"sqlite:///{copy}")
    try:
        monkeypatch.setattr(audit, "release_of", lambda version: CURRENT_RELEASE)
        report = audit.verify(store)
        assert not report.ok
        assert {d.kind for d in report.divergences} >= {"outcome"}
    finally:
        store.close()


def test_replay_tells_what_kapflow_knew_from_what_had_happened(clinic: Clinic) -> None:
    """Auditors need both (SPEC §6): known at T — the R5 deviation as it stood before the
    late clearance arrived; as of the dosing's time — the clearance already in force."""
    from kapflow.service.audit import replay

    j = Journey()
    record_times = iter(datetime(2026, 2, day, 12, tzinfo=UTC) for day in (1, 2, 3, 4))
    clinic.service.clock = lambda: next(record_times)
    clinic.send(*j.to_assessed())  # recorded 1 Feb
    clearance, prep = j.evaluation("journey_clinical"), j.preparation(1)
    dosing = j.dosing_started("s-1")
    clinic.send(prep)  # recorded 2 Feb
    clinic.send(dosing)  # recorded 3 Feb: R5, no clearance yet
    clinic.send(clearance)  # recorded 4 Feb, issued before the dosing
    history = clinic.store.history("c-1")
    known = replay(history, "c-1", known_at=datetime(2026, 2, 3, 18, tzinfo=UTC))
    assert [d["rules"] for d in known.client.open_deviations] == [["R5"]]
    happened = replay(history, "c-1", as_of=dosing_time(dosing))
    assert happened.client.open_deviations == [] and happened.client.state == "dosed"


def dosing_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))

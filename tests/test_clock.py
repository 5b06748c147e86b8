"""Clock-driven workflow: what did not happen in time is noticed, exactly once, replayably.

Time is simulated: `tick(service, now)` is what `kapflow tick --now` and the runtimes' clocks
call; the engine only ever sees `system.deadline_reached` events.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from builders import Journey, stamp
from conftest import Clinic

from events import parse_event_object
from kapflow.service.audit import replay, verify
from kapflow.service.clock import deadlines, tick
from kapflow.store import open_store
from workflow.policy import DEFAULT_POLICY
from workflow.tasks import Task


def open_task(clinic: Clinic, code: str, client: str = "c-1") -> Task:
    [task] = [t for t in clinic.client(client).open_tasks.values() if t.code == code]
    return task


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_assessment_not_booked_two_days_after_the_inquiry_is_escalated(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry())
    due = at(open_task(clinic, "schedule-assessment").due)
    assert tick(clinic.service, due - timedelta(minutes=1)).fired == []
    report = tick(clinic.service, due)
    assert [r.outcome for r in report.fired][:1] == ["accepted"]
    task = open_task(clinic, "schedule-assessment")
    assert task.priority == "urgent"
    supervisor = open_task(clinic, "supervise-overdue-task")
    assert (supervisor.about, supervisor.owner, supervisor.priority) == (
        task.id,
        "scheduler",
        "urgent",
    )


def test_booking_in_time_means_no_escalation(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry(), j.booking("assessment", "a-1"))
    assert tick(clinic.service, j.now + timedelta(days=30)).fired == []
    assert "supervise-overdue-task" not in clinic.open_codes()


def test_integration_not_booked_seven_days_after_a_dosing_is_escalated(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"))
    due = at(open_task(clinic, "schedule-integration").due)
    assert due - j.now == timedelta(days=7)
    tick(clinic.service, due)
    assert open_task(clinic, "schedule-integration").priority == "urgent"


def test_a_chaperone_not_confirmed_a_day_before_the_dosing_is_escalated(clinic: Clinic) -> None:
    j = Journey()
    booking = j.booking("dosing", "d-1", starts_in=timedelta(days=5))
    clinic.send(*j.to_prepared(), booking)
    confirm = open_task(clinic, "confirm-chaperone")
    assert at(confirm.due) == at(booking["data"]["starts_at"]) - timedelta(hours=24)
    tick(clinic.service, at(confirm.due) + timedelta(minutes=5))
    assert open_task(clinic, "confirm-chaperone").priority == "urgent"


def test_an_unacknowledged_adverse_event_notification_escalates_after_an_hour(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.adverse_event("moderate"))
    notify = open_task(clinic, "notify-prescriber-adverse-event")
    assert at(notify.due) - j.now == timedelta(hours=1)
    tick(clinic.service, at(notify.due))
    assert open_task(clinic, "notify-prescriber-adverse-event").priority == "asap"


def test_an_acknowledged_notification_does_not_escalate(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.adverse_event("mild"))
    notify = open_task(clinic, "notify-prescriber-adverse-event")
    clinic.send(
        j.event(
            "operations.task_completed",
            {"task_id": notify.id, "by_role": "prescriber_liaison", "actor": "pat"},
        )
    )
    assert "notify-prescriber-adverse-event" not in clinic.open_codes()
    before = {t.id: t.priority for t in clinic.client().open_tasks.values()}
    tick(clinic.service, at(notify.due) + timedelta(minutes=1))
    assert "supervise-overdue-task" not in clinic.open_codes()
    assert {t.id: t.priority for t in clinic.client().open_tasks.values()} == before


def test_each_deadline_fires_once_across_ticks_and_restarts(sqlite_url: str) -> None:
    j = Journey()
    events = [j.inquiry()]
    first = open_store(sqlite_url)
    clinic = Clinic(first)
    clinic.send(*events)
    later = j.now + timedelta(days=5)
    fired = tick(clinic.service, later)
    accepted = [r for r in fired.fired if r.outcome == "accepted"]
    assert len(accepted) == 2  # the task's deadline, then its supervisor task's
    # A recorded deadline is not offered again; sent again anyway (two clocks racing),
    # its fixed event id makes it a duplicate.
    assert tick(clinic.service, later).fired == []
    recorded = [e.as_dict()["event"] for e in first.history("c-1") if e.type == accepted[0].type]
    assert [r.outcome for r in clinic.send(*recorded)] == ["duplicate"] * 2
    first.close()
    restarted = Clinic(open_store(sqlite_url))  # a new process on the same store
    assert tick(restarted.service, later).fired == []
    history = restarted.store.history("c-1")
    assert [e.type for e in history].count("system.deadline_reached") == 2
    assert verify(restarted.store).ok
    # Replay reproduces the escalations exactly: the deadline events are in the history.
    rebuilt = replay(history, "c-1").client
    assert rebuilt.open_tasks == restarted.client().open_tasks


def test_the_supervisor_task_escalates_only_in_priority(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry())
    tick(clinic.service, j.now + timedelta(days=60))
    supervisors = [
        t for t in clinic.client().open_tasks.values() if t.code == "supervise-overdue-task"
    ]
    assert len(supervisors) == 1 and supervisors[0].priority == "asap"


def test_a_clearance_opens_a_renewal_task_fourteen_days_before_it_expires(
    clinic: Clinic,
) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(valid_until="2026-03-01"))
    tick(clinic.service, at("2026-02-14T23:59:00Z"))
    assert "renew-medical-clearance" not in clinic.open_codes()
    tick(clinic.service, at("2026-02-15T00:00:00Z"))
    renewal = open_task(clinic, "renew-medical-clearance")
    assert (renewal.owner, renewal.due) == ("prescriber_liaison", "2026-03-01T00:00:00Z")
    j.now = at("2026-03-02T10:00:00Z")
    result = clinic.last(j.dosing_started("s-1"))
    assert [r.code for r in result.reasons] == ["R5"]  # expired clearance blocks dosing


def test_a_renewed_clearance_silences_the_old_reminder(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(valid_until="2026-03-01"), j.renewal(valid_until="2026-09-01"))
    tick(clinic.service, at("2026-02-20T00:00:00Z"))
    assert "renew-medical-clearance" not in clinic.open_codes()


def test_a_low_dose_month_without_renewal_is_treated_as_a_lapse(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous"))
    paid_until = clinic.client().subscription_paid_until
    assert paid_until is not None
    tick(clinic.service, at(f"{paid_until}T12:00:00Z"))
    assert clinic.client().state == "prepared"  # paid through the whole last day
    tick(clinic.service, at(f"{paid_until}T00:00:00Z") + timedelta(days=1))
    client = clinic.client()
    assert (client.state, client.reasons, client.subscription_active) == ("on_hold", ["R9"], False)
    assert "renew-low-dose-subscription" in clinic.open_codes()


def test_a_monthly_renewal_keeps_the_low_dose_client_going(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous"))
    j.now += timedelta(days=25)
    clinic.send(j.renewal("joyous"))
    tick(clinic.service, j.now + timedelta(days=10))
    assert clinic.client().state == "prepared"
    assert clinic.last(j.dosing_started("s-1", pathway="low_dose")).state == "dosed"


def test_ninety_days_without_activity_opens_a_follow_up(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_assessed())
    tick(clinic.service, j.now + timedelta(days=89))
    assert "follow-up-inactive-client" not in clinic.open_codes()
    tick(clinic.service, j.now + timedelta(days=90))
    assert "follow-up-inactive-client" in clinic.open_codes()


def test_a_parked_event_expires_on_a_tick_without_further_events(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(j.inquiry())
    early = j.integration("s-1")
    assert clinic.last(early).outcome == "parked"
    assert tick(clinic.service, j.now + timedelta(hours=71)).expired_parked == []
    report = tick(clinic.service, j.now + timedelta(hours=73))
    [expired] = report.expired_parked
    # Recorded as it happened, flagged for review: never dropped.
    assert expired.id == early["id"] and expired.outcome == "deviation"
    assert [r.code for r in expired.reasons][0] == "PREMATURE_EXPIRED"
    assert clinic.store.parked_events() == []
    assert "review-protocol-deviation" in clinic.open_codes()


def test_billing_tasks_close_by_an_operations_event_even_after_the_course(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), j.integration("s-1"), j.course_completed())
    bill = open_task(clinic, "bill-private-time")
    result = clinic.last(
        j.event(
            "operations.task_completed", {"task_id": bill.id, "by_role": "billing", "actor": "bo"}
        )
    )
    assert (result.outcome, result.state) == ("accepted", "completed")
    assert "bill-private-time" not in clinic.open_codes()


def test_upcoming_deadlines_list_tasks_and_timers(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared("joyous"))
    found = deadlines(clinic.store, DEFAULT_POLICY, j.now + timedelta(days=60))
    kinds = {(d.kind, d.code) for d in found}
    assert ("task", "schedule-dosing") in kinds
    assert ("timer", "subscription-end") in kinds


# Out-of-order delivery -----------------------------------------------------------------


def publisher_streams() -> list[list[dict]]:  # type: ignore[type-arg]
    j = Journey("c-9")
    scheduling = [j.inquiry(), j.booking("assessment", "a-1"), j.booking("dosing", "d-1")]
    clinician = [j.assessment(), j.preparation(1, ready=True), j.dosing_started("s-1")]
    prescriber = [j.evaluation("journey_clinical")]
    return [scheduling, clinician, prescriber]


def interleavings(streams: list[list[dict]]) -> list[list[dict]]:  # type: ignore[type-arg]
    """Every order that keeps each publisher's own order."""
    sizes = [len(s) for s in streams]
    slots = [i for i, size in enumerate(sizes) for _ in range(size)]
    orders = set(itertools.permutations(slots))
    out = []
    for order in sorted(orders):
        cursors = [0] * len(streams)
        sequence = []
        for publisher in order:
            sequence.append(streams[publisher][cursors[publisher]])
            cursors[publisher] += 1
        out.append(sequence)
    return out


@pytest.mark.slow
def test_every_order_permitted_by_per_publisher_ordering_ends_in_the_same_state(
    tmp_path: object,
) -> None:
    from pathlib import Path

    streams = publisher_streams()
    orders = interleavings(streams)
    assert len(orders) == 140  # 7! / (3! · 3! · 1!)
    finals = set()
    for n, order in enumerate(orders):
        store = open_store(f"sqlite:///{Path(str(tmp_path)) / f'o{n}.db'}")
        Clinic(store).send(*order)
        client = store.get_client("c-9")
        assert client is not None
        finals.add((client.state, client.pathway, client.dosing_sessions, client.parked))
        assert store.parked_events() == []
        assert verify(store).ok
        store.close()
    assert finals == {("dosed", "high_dose", 1, 0)}


def test_deadline_events_are_valid_cloudevents() -> None:
    from kapflow.service.clock import Deadline

    event = Deadline(
        "c-1", "t-1", "task", "schedule-assessment", stamp(datetime(2026, 1, 1, tzinfo=UTC))
    ).event()
    parsed = parse_event_object(event)
    assert getattr(parsed, "type", None) == "system.deadline_reached"
    assert event["id"] == "deadline:t-1:2026-01-01T00:00:00Z"

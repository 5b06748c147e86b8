"""Timers: things that must happen when time passes although no task is open for them.

A timer's id is derived from the fact it watches (the clearance's end date, the paid-until
date, the time of the last activity), so a timer that fires after that fact changed no
longer matches anything and does nothing: a renewed clearance silences the old reminder
without any cancellation event. kapflow's clock fires a timer by recording a
`system.deadline_reached` event whose `task_id` is the timer id (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from workflow.client import ClientSnapshot
from workflow.policy import CarePolicy
from workflow.tasks import iso, task_id_for

CLOCK_SOURCE = "urn:kapflow:clock"
CLEARED_STATES = frozenset({"cleared", "prepared", "dosed", "integrating", "on_hold"})
ACTIVE_STATES = frozenset(
    {"inquiry", "assessed", "cleared", "prepared", "dosed", "integrating", "on_hold"}
)

CLEARANCE_RENEWAL = "clearance-renewal"
SUBSCRIPTION_END = "subscription-end"
INACTIVITY = "inactivity"


@dataclass(slots=True)  # a value: never mutated after construction
class Timer:
    id: str
    kind: str
    due: str  # RFC 3339, UTC
    client_id: str
    basis: str  # the watched fact (a date or a time)


def timer_id(client_id: str, kind: str, basis: str) -> str:
    return task_id_for(client_id, CLOCK_SOURCE, f"{kind}@{basis}", kind)


def _start_of(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(0, 0), tzinfo=UTC)


def timers(client: ClientSnapshot, policy: CarePolicy) -> list[Timer]:
    found: list[Timer] = []
    cid = client.client_id
    valid_until = client.clearance_valid_until
    if client.state in CLEARED_STATES and valid_until and not client.clearance_revoked:
        due = _start_of(valid_until) - policy.clearance_renewal_notice
        found.append(
            Timer(
                timer_id(cid, CLEARANCE_RENEWAL, valid_until),
                CLEARANCE_RENEWAL,
                iso(due),
                cid,
                valid_until,
            )
        )
    paid_until = client.subscription_paid_until
    if (
        client.state in CLEARED_STATES
        and client.pathway == "low_dose"
        and client.subscription_active
        and paid_until
    ):
        due = _start_of(paid_until) + timedelta(days=1)  # paid through the whole last day
        found.append(
            Timer(
                timer_id(cid, SUBSCRIPTION_END, paid_until),
                SUBSCRIPTION_END,
                iso(due),
                cid,
                paid_until,
            )
        )
    last = client.last_activity_time
    if client.state in ACTIVE_STATES and last:
        due = datetime.fromisoformat(last) + policy.inactivity_follow_up_after
        found.append(Timer(timer_id(cid, INACTIVITY, last), INACTIVITY, iso(due), cid, last))
    return found


def timer_named(client: ClientSnapshot, policy: CarePolicy, timer: str) -> Timer | None:
    return next((t for t in timers(client, policy) if t.id == timer), None)

"""Readiness before the fact: would a dosing at time T be within the protocol?

Publishers ask before a session (`kapflow check ID --dose`, `GET /v1/clients/{id}/readiness`)
and the dashboard shows the checklist. Each item is judged by the very check the engine
applies to a recorded dosing (workflow/states/rules.py), on a prospective dosing at T: one
definition of every rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from events.envelope import CloudEvent
from workflow.client import ClientSnapshot
from workflow.deviations import to_timeline
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.releases import CURRENT_RELEASE
from workflow.states.rules import DOSING_RULES, RuleContext
from workflow.tasks import iso


@dataclass(frozen=True, slots=True)
class ReadinessItem:
    rule: str
    passed: bool
    checks: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "checks": self.checks, "why": self.why}


def chaperone_for_dosing_at(client: ClientSnapshot, at: str) -> tuple[str | None, str | None]:
    """R7 per dosing: the booked dosing appointment a dosing at `at` would take up, and why
    its chaperone is not confirmed by then (None when it is). The engine marks the same
    appointment used when the dosing is recorded (workflow/handlers/clinician.py)."""
    if not CURRENT_RELEASE.chaperone_per_dosing:
        return None, None if client.chaperones_confirmed else "dosing requires chaperone"
    taken = client.dosing_appointment(at)
    if taken is None:
        return None, "no dosing appointment is booked, so no chaperone is confirmed for it"
    appointment_id, appointment = taken
    confirmed_at = appointment.get("chaperone_at")
    if confirmed_at is None or confirmed_at > at:
        return appointment_id, f"no chaperone confirmed for dosing appointment {appointment_id}"
    return appointment_id, None


def dosing_readiness(
    client: ClientSnapshot, at: datetime, policy: CarePolicy = DEFAULT_POLICY
) -> dict[str, Any]:
    """Each of R5–R9, the hold and being in care, passed or failed with why, for a dosing
    at `at`. The abstinence attestation is the client's, given at the session itself, so
    R7 here asks only for the chaperone of a booked dosing."""
    if CURRENT_RELEASE.judges_at_event_time and not client.timeline:
        client = to_timeline(client)
    when = iso(at)
    appointment, chaperone_why = chaperone_for_dosing_at(client, when)
    prospective = CloudEvent.model_construct(
        type="clinician.dosing_started",
        time=at,
        data=SimpleNamespace(
            session_id="prospective",
            pathway=client.pathway,
            chaperone_confirmed=chaperone_why is None,
            abstinence_attested=True,
            appointment_id=appointment,
        ),
    )
    ctx = RuleContext(client, prospective, policy, CURRENT_RELEASE)
    items = []
    for rule, check, asks in DOSING_RULES:
        reason = check(ctx)
        why = "ok" if reason is None else reason.message
        if rule == "R7" and chaperone_why is not None:
            why = chaperone_why
        items.append(ReadinessItem(rule, reason is None, asks, why))
    return {
        "client_id": client.client_id,
        "action": "dose",
        "at": when,
        "appointment_id": appointment,
        "state": None if client.state == "new" else client.state,
        "ready": all(item.passed for item in items),
        "checks": [item.as_dict() for item in items],
    }

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


def dosing_readiness(
    client: ClientSnapshot, at: datetime, policy: CarePolicy = DEFAULT_POLICY
) -> dict[str, Any]:
    """Each of R5–R9, the hold and being in care, passed or failed with why, for a dosing
    at `at`. The abstinence attestation is the client's, given at the session itself, so
    R7 here asks only for the chaperone of a booked dosing."""
    if CURRENT_RELEASE.judges_at_event_time and not client.timeline:
        client = to_timeline(client)
    prospective = CloudEvent.model_construct(
        type="clinician.dosing_started",
        time=at,
        data=SimpleNamespace(
            session_id="prospective",
            pathway=client.pathway,
            chaperone_confirmed=bool(client.chaperones_confirmed),
            abstinence_attested=True,
        ),
    )
    ctx = RuleContext(client, prospective, policy, CURRENT_RELEASE)
    items = []
    for rule, check, asks in DOSING_RULES:
        reason = check(ctx)
        items.append(
            ReadinessItem(rule, reason is None, asks, "ok" if reason is None else reason.message)
        )
    return {
        "client_id": client.client_id,
        "action": "dose",
        "at": iso(at),
        "state": None if client.state == "new" else client.state,
        "ready": all(item.passed for item in items),
        "checks": [item.as_dict() for item in items],
    }

"""Protocol deviations: facts of care that broke a rule, and how later facts settle them.

SPEC §3: a fact of care that breaks the protocol is recorded all the same and flagged for
a person to review (`review-protocol-deviation`: stat for R3–R5 and a dosing on hold,
urgent otherwise). Rules are judged on the facts as they stood at the event's own time, so
a fact that arrives late — a clearance issued before a dosing but delivered after it — is
applied to the dosings it concerns: a deviation it cures is resolved (its review task
closes with a note), one it reveals opens a review. Both steps are in the history.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from events.envelope import CloudEvent
from events.registry import Reason
from workflow.client import ClientSnapshot
from workflow.handlers.effects import Effects
from workflow.states.rules import (
    NOT_IN_CARE,
    RuleContext,
    r5_valid_clearance,
    r6_preparation_done,
    r8_integration_followed_last_dosing,
    r9_medication_available,
)
from workflow.tasks import Owner, Task, TaskCode

# Seed-derived rules whose outcome depends on facts that may arrive late (clearance,
# renewal, revocation, lapse, preparation, integration); the others (R7 from the dosing's
# own attestation, a hold, leaving care) are settled by the dosing event itself.
TIME_JUDGED_RULES = (
    r5_valid_clearance,
    r6_preparation_done,
    r8_integration_followed_last_dosing,
    r9_medication_available,
)
TIME_JUDGED_CODES = frozenset({"R5", "R6", "R8", "R9"})
# Facts that change what was in force at an earlier time.
LATE_FACTS = frozenset(
    {
        "prescriber.evaluation_completed",
        "prescriber.prescription_renewed",
        "prescriber.clearance_revoked",
        "prescriber.subscription_lapsed",
        "clinician.preparation_completed",
        "clinician.integration_completed",
    }
)
STAT_RULES = frozenset({"R3", "R4", "R5", "ON_HOLD"})


def is_stat(reasons: tuple[Reason, ...] | list[str], client: ClientSnapshot) -> bool:
    codes = {r if isinstance(r, str) else r.code for r in reasons}
    if codes & STAT_RULES:
        return True
    screened_out = {"R3", "R4", "R5"} & set(client.ineligible_reasons)
    return "NOT_IN_CARE" in codes and client.state == "ineligible" and bool(screened_out)


def _note(codes: list[str]) -> str:
    return "protocol deviation: " + ",".join(codes)


def open_deviation_review(fx: Effects, broken: tuple[Reason, ...]) -> None:
    codes = _codes(broken)
    session = (
        getattr(fx.data, "session_id", None)
        if fx.event.type.startswith("clinician.dosing")
        else None
    )
    task = _open_review(fx, codes, is_stat(broken, fx.before), session, _note(codes))
    if fx.event.type == "clinician.dosing_started" and fx.after.timeline:
        _replace_dosing(fx.after, fx.data.session_id, rules=codes, review=task.id)


def _open_review(
    fx: Effects,
    codes: list[str],
    stat: bool,
    about: str | None,
    note: str,
    raised_by: tuple[str, str, str] | None = None,
) -> Task:
    """The review a person owes a deviation: stat for R3–R5 and a dosing on hold."""
    within = fx.policy.stat_deviation_review_within if stat else fx.policy.deviation_review_within
    return fx.open_task(
        TaskCode.REVIEW_PROTOCOL_DEVIATION,
        Owner.CLINICIAN,
        fx.due_in(within),
        priority="stat" if stat else "urgent",
        about=about,
        note=note,
        raised_by=raised_by,
    )


def _codes(reasons: tuple[Reason, ...] | list[Reason]) -> list[str]:
    seen: list[str] = []
    for reason in reasons:
        if reason.code not in seen:
            seen.append(reason.code)
    return seen


def _replace_dosing(client: ClientSnapshot, session: str, **changes: Any) -> None:
    client.dosings = [
        {**dosing, **changes} if dosing["session"] == session else dosing
        for dosing in client.dosings
    ]


def _judge_dosing_at_its_time(fx: Effects, dosing: dict[str, Any]) -> list[str]:
    """The time-judged rules the dosing breaks, given every fact now known."""
    data = SimpleNamespace(session_id=dosing["session"], pathway=dosing["pathway"])
    probe = CloudEvent.model_construct(
        type="clinician.dosing_started",
        time=datetime.fromisoformat(dosing["at"]),
        data=data,
    )
    ctx = RuleContext(fx.after, probe, fx.policy, fx.release)
    return [reason.code for check in TIME_JUDGED_RULES if (reason := check(ctx)) is not None]


def rejudge_dosings(fx: Effects) -> tuple[dict[str, object], ...]:
    """A late fact re-judges the recorded dosings that happened after it."""
    if fx.event.type not in LATE_FACTS:
        return ()
    at = fx.at
    own_session = getattr(fx.data, "session_id", None)
    changes: list[dict[str, object]] = []
    for dosing in list(fx.after.dosings):
        if dosing["at"] <= at or (
            fx.event.type == "clinician.integration_completed" and dosing["session"] == own_session
        ):
            continue
        if not dosing["at"]:
            continue  # recorded before event times were kept: nothing to re-judge against
        settled = [code for code in dosing["rules"] if code not in TIME_JUDGED_CODES]
        judged = _judge_dosing_at_its_time(fx, dosing)
        rules = settled + [code for code in judged if code not in settled]
        if rules == dosing["rules"]:
            continue
        _settle_review(fx, dosing, rules)
        changes.append(
            {
                "event_id": dosing["event_id"],
                "session_id": dosing["session"],
                "was": list(dosing["rules"]),
                "now": rules,
            }
        )
    return tuple(changes)


def _settle_review(fx: Effects, dosing: dict[str, Any], rules: list[str]) -> None:
    task = fx.after.open_tasks.get(dosing.get("review") or "")
    why = f"{fx.event.type} {fx.event.id} at {fx.at}"
    if not rules:
        if task is not None:
            fx.close_task(
                task,
                "completed",
                note=f"resolved: {','.join(dosing['rules'])} no longer broken at the dosing's "
                f"time, by the late {why}",
            )
        _replace_dosing(fx.after, dosing["session"], rules=[], review=None)
        return
    stat = is_stat(rules, fx.after)
    if task is not None:
        revised = task.revised(
            priority="stat" if stat else task.priority, note=_note(rules), at=fx.at
        )
        fx.update_task(revised)
    else:
        task = _open_review(
            fx,
            rules,
            stat,
            dosing["session"],
            _note(rules) + f" (revealed by the late {why})",
            raised_by=(dosing["source"], dosing["event_id"], dosing["at"]),
        )
    _replace_dosing(fx.after, dosing["session"], rules=rules, review=task.id)


def to_timeline(client: ClientSnapshot) -> ClientSnapshot:
    """A client recorded by a release that kept no event times (2026.11.3), carried over:
    its facts so far are taken as in force since before any new event ("" sorts first)."""
    upgraded = client.copy()
    upgraded.timeline = True
    if client.prescriber is not None and client.clearance_valid_until is not None:
        upgraded.authorisations = [
            {
                "at": "",
                "until": client.clearance_valid_until,
                "doses": client.doses_authorized or None,
                "paid_until": client.subscription_paid_until or "9999-12-31",
            }
        ]
        if client.clearance_revoked:
            upgraded.revocations = [""]
        if client.pathway == "low_dose" and not client.subscription_active:
            upgraded.lapses = [""]
    if client.ready_for_dosing:
        upgraded.preparations = [["", True]]
    dosings = []
    for index in range(client.doses_used if client.pathway == "high_dose" else 0):
        dosings.append(_carried_dosing(f"before-upgrade-{index}", integrated=True))
    if client.current_dosing_session is not None:
        current = _carried_dosing(
            client.current_dosing_session, integrated=not client.awaiting_integration
        )
        current["completed"] = client.dosing_completed
        if dosings:
            dosings[-1] = current
        else:
            dosings.append(current)
    upgraded.dosings = dosings
    if client.state == "on_hold":
        upgraded.hold_since = ""
    if client.state in NOT_IN_CARE:
        upgraded.exited_at = ""
    return upgraded


def _carried_dosing(session: str, *, integrated: bool) -> dict[str, Any]:
    return {
        "session": session,
        "at": "",
        "source": "",
        "event_id": "",
        "pathway": None,
        "completed": True,
        "integrated_at": "" if integrated else None,
        "rules": [],
        "review": None,
    }

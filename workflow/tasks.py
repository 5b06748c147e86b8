"""Follow-up tasks, shaped like the HL7 FHIR R5 `Task` resource (SPEC §4).

A task id is derived from the client, the event that raised it and the task code, so a
replay or a retried delivery can never open the same task twice. From release 2026.11.5 it
also begins with the raising event's time, so that ids sort in the order care happened.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from events.operations import TaskOwner

_TASK_NAMESPACE = uuid.UUID("6f1c9a3e-2b7d-5c41-9e0a-4b8d2f7e1a55")
_NAMESPACE_BYTES = _TASK_NAMESPACE.bytes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

OPEN_STATUSES = frozenset({"requested", "in-progress"})
PRIORITY_ORDER = ("routine", "urgent", "asap", "stat")


class Owner:
    """Names for the roles that own tasks (`events.operations.TaskOwner`, the one list;
    plain constants: read on every task, so no enum lookups)."""

    SCHEDULER: Final[TaskOwner] = "scheduler"
    CLINICIAN: Final[TaskOwner] = "clinician"
    BILLING: Final[TaskOwner] = "billing"
    PRESCRIBER_LIAISON: Final[TaskOwner] = "prescriber_liaison"
    CLIENT: Final[TaskOwner] = "client"


class TaskCode:
    """The task catalogue. Values are stable public codes."""

    SCHEDULE_ASSESSMENT = "schedule-assessment"
    VERIFY_INSURANCE_BENEFITS = "verify-insurance-benefits"
    REFER_MEDICAL_EVALUATION = "refer-medical-evaluation"
    SCHEDULE_PREPARATION = "schedule-preparation"
    SCHEDULE_DOSING = "schedule-dosing"
    CONFIRM_CHAPERONE = "confirm-chaperone"
    ABSTINENCE_REMINDER_BEFORE = "abstinence-reminder-before-dosing"
    ABSTINENCE_REMINDER_AFTER = "abstinence-reminder-after-dosing"
    SCHEDULE_INTEGRATION = "schedule-integration"
    BILL_PRIVATE_TIME = "bill-private-time"
    RENEW_HIGH_DOSE_PACKAGE = "renew-high-dose-package"
    RENEW_LOW_DOSE_SUBSCRIPTION = "renew-low-dose-subscription"
    NOTIFY_PRESCRIBER_ADVERSE_EVENT = "notify-prescriber-adverse-event"
    SAFETY_FOLLOW_UP = "safety-follow-up-release"
    CLINICAL_REVIEW = "clinical-review"
    RESCHEDULE_APPOINTMENT = "reschedule-appointment"
    REVIEW_HOLD = "review-hold"
    SUPERVISE_OVERDUE_TASK = "supervise-overdue-task"
    RENEW_MEDICAL_CLEARANCE = "renew-medical-clearance"
    FOLLOW_UP_INACTIVE_CLIENT = "follow-up-inactive-client"
    REVIEW_PROTOCOL_DEVIATION = "review-protocol-deviation"
    REVIEW_BREAK_GLASS_ACCESS = "review-break-glass-access"


# What each code means to the person who owns it (FHIR Task.description).
DESCRIPTIONS: dict[str, str] = {
    TaskCode.SCHEDULE_ASSESSMENT: "Book the initial KAP assessment",
    TaskCode.VERIFY_INSURANCE_BENEFITS: "Verify insurance benefits for covered sessions",
    TaskCode.REFER_MEDICAL_EVALUATION: "Refer for independent medical evaluation "
    "(Journey Clinical or Joyous)",
    TaskCode.SCHEDULE_PREPARATION: "Book a preparatory session",
    TaskCode.SCHEDULE_DOSING: "Book the ketamine-assisted dosing session",
    TaskCode.CONFIRM_CHAPERONE: "Confirm the trusted person who will drive the client home",
    TaskCode.ABSTINENCE_REMINDER_BEFORE: "Remind: no alcohol or non-prescribed substances "
    "for 24 h before dosing",
    TaskCode.ABSTINENCE_REMINDER_AFTER: "Remind: no alcohol or non-prescribed substances "
    "for 24 h after dosing",
    TaskCode.SCHEDULE_INTEGRATION: "Book the integration session for the latest dosing",
    TaskCode.BILL_PRIVATE_TIME: "Bill dosing time beyond the first hour privately",
    TaskCode.RENEW_HIGH_DOSE_PACKAGE: "Renew the high-dose package with Journey Clinical",
    TaskCode.RENEW_LOW_DOSE_SUBSCRIPTION: "Renew the Joyous low-dose subscription",
    TaskCode.NOTIFY_PRESCRIBER_ADVERSE_EVENT: "Notify the prescriber of an adverse event",
    TaskCode.SAFETY_FOLLOW_UP: "Safety follow-up: client was not released to a chaperone",
    TaskCode.CLINICAL_REVIEW: "Clinical review",
    TaskCode.RESCHEDULE_APPOINTMENT: "Reschedule a cancelled or missed appointment",
    TaskCode.REVIEW_HOLD: "Review the hold and decide whether to release it",
    TaskCode.SUPERVISE_OVERDUE_TASK: "Supervisor: a task is overdue; see that it is done",
    TaskCode.RENEW_MEDICAL_CLEARANCE: "Renew the medical clearance before it expires",
    TaskCode.FOLLOW_UP_INACTIVE_CLIENT: "Follow up: no activity for 90 days",
    TaskCode.REVIEW_PROTOCOL_DEVIATION: "Review a protocol deviation: a fact of care that "
    "broke a rule of the programme",
    TaskCode.REVIEW_BREAK_GLASS_ACCESS: "Review an emergency (break-glass) read of the "
    "client's record: was it justified?",
}


def task_id_for(
    client_id: str,
    source: str,
    event_id: str,
    code: str,
    qualifier: str = "",
    *,
    raised_at: str | None = None,
) -> str:
    """The task's id: a name-based UUID (RFC 9562) of the client, the raising event and the code.

    `raised_at` None: a UUIDv5 (releases up to 2026.11.4). A time (the raising event's, as
    `iso` writes it; release 2026.11.5 on): a UUIDv8 laid out like a UUIDv7, whose first 48
    bits are that time in Unix milliseconds and whose other 74 are the same SHA-1 of the
    name. The id stays a pure function of the facts, and tasks raised later sort later: the
    store's unique index on task ids then grows at its end, instead of touching a random
    page of an index as large as the whole history for every task opened. A time before
    1970, or none known (""), takes the prefix 0: still unique by its name, only unordered.
    """
    name = f"{client_id}\x1f{source}\x1f{event_id}\x1f{code}\x1f{qualifier}"
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    if raised_at is None:
        digest[6] = (digest[6] & 0x0F) | 0x50
    else:
        millis = (datetime.fromisoformat(raised_at) - _EPOCH) // _MILLISECOND if raised_at else 0
        digest[0:6] = max(millis, 0).to_bytes(6, "big")  # datetime ends in 9999: < 2**48 ms
        digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)  # a value: never mutated after construction
class Task:
    id: str
    status: str
    priority: str
    code: str
    for_: str
    owner: str
    focus: str
    authored_on: str
    due: str
    last_modified: str
    intent: str = "order"
    amount_usd: str | None = None
    note: str | None = None
    # Extra keys for the task a later event closes (an appointment id, a dosing session).
    about: str | None = None
    # Who claimed, completed or cancelled it through the work queue (the operations event's
    # `actor`, SPEC §6): FHIR Task has no claimant, and `owner` stays the role.
    claimed_by: str | None = None
    completed_by: str | None = None
    cancelled_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def with_status(self, status: str, at: str) -> Task:
        return Task(
            self.id,
            status,
            self.priority,
            self.code,
            self.for_,
            self.owner,
            self.focus,
            self.authored_on,
            self.due,
            at,
            self.intent,
            self.amount_usd,
            self.note,
            self.about,
            self.claimed_by,
            self.completed_by,
            self.cancelled_by,
        )

    def with_priority(self, priority: str, at: str) -> Task:
        return replace(self, priority=priority, last_modified=at)

    def revised(self, *, at: str, priority: str | None = None, note: str | None = None) -> Task:
        return replace(
            self,
            priority=priority or self.priority,
            note=self.note if note is None else note,
            last_modified=at,
        )

    def as_dict(self) -> dict[str, Any]:
        """The FHIR-Task-shaped object (SPEC §4); optional fields only when set."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "intent": self.intent,
            "priority": self.priority,
            "code": self.code,
            "description": DESCRIPTIONS.get(self.code, self.code),
            "for": self.for_,
            "owner": self.owner,
            "focus": self.focus,
            "authored_on": self.authored_on,
            "due": self.due,
            "last_modified": self.last_modified,
        }
        if self.amount_usd is not None:
            out["amount_usd"] = self.amount_usd
        if self.note is not None:
            out["note"] = self.note
        if self.about is not None:
            out["about"] = self.about
        if self.claimed_by is not None:
            out["claimed_by"] = self.claimed_by
        if self.completed_by is not None:
            out["completed_by"] = self.completed_by
        if self.cancelled_by is not None:
            out["cancelled_by"] = self.cancelled_by
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        fields = {k: v for k, v in data.items() if k not in {"for", "description"}}
        return cls(for_=data["for"], **fields)


def raise_priority(priority: str) -> str:
    index = PRIORITY_ORDER.index(priority)
    return PRIORITY_ORDER[min(index + 1, len(PRIORITY_ORDER) - 1)]


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC, whole seconds, with a `Z`: the one timestamp format kapflow writes.

    A fixed width keeps these strings ordered as the instants they name.
    """
    if moment.utcoffset() != _ZERO:
        moment = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031 - the fastest formatter here
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )


_ZERO = timedelta(0)

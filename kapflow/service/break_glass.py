"""Break-glass (issue 18): an emergency read of one client, time-limited and loudly logged.

Someone whose role would not let them read a client's record (a front-desk person on the
dashboard role, say) may need it now: a crisis call, a client on the phone. They break the
glass: kapflow records `operations.break_glass_invoked` (who, a reason code, how many
minutes) in that client's history through the normal write path, so the engine opens a
`review-break-glass-access` task for a clinician, and the grant is a fact every process can
read. The grant is derived from the recorded event, never from process memory: every
`serve` process and every restart agree on it, and an auditor can see it in the history.

Why here: the HTTP service decides who reaches which read; the grant itself (what was
recorded, until when) is a question about the store that any runtime would ask alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from events import CloudEvent, Reason, parse_event_object
from kapflow.service.ingest import IngestResult, RawInput
from kapflow.service.work_queue import OPERATIONS_SOURCE
from kapflow.store.base import EventStore, HistoryEntry
from workflow.tasks import iso

BREAK_GLASS_TYPE = "operations.break_glass_invoked"

Record = Callable[[list[RawInput]], list[IngestResult]]


class ClientNotFound(LookupError):
    """kapflow has recorded nothing about this client: there is no record to read."""


class InvalidBreakGlass(ValueError):
    """The request breaks the event contract (a reason that is not a code, say)."""

    def __init__(self, reasons: tuple[Reason, ...]) -> None:
        super().__init__("; ".join(reason.message for reason in reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Grant:
    """`actor` may read `client_id` from `granted_at` until (not including) `until`."""

    client_id: str
    actor: str
    reason: str
    event_id: str
    granted_at: datetime
    until: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "actor": self.actor,
            "reason": self.reason,
            "event_id": self.event_id,
            "granted_at": iso(self.granted_at),
            "until": iso(self.until),
        }


@dataclass(slots=True)
class BreakGlassResult:
    outcome: str  # accepted (anything else: the client's history refused the event)
    grant: Grant
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "event": {"id": self.grant.event_id, "source": OPERATIONS_SOURCE},
            "grant": self.grant.as_dict(),
            "reasons": [reason.as_dict() for reason in self.reasons],
        }


def invoke_break_glass(
    store: EventStore,
    record: Record,
    client_id: str,
    *,
    actor: str,
    reason: str,
    minutes: int,
    at: datetime,
) -> BreakGlassResult:
    """Record that `actor` broke the glass on `client_id` at `at` (the caller's clock) for
    `minutes`, through `record` (the single writer), and return the grant it gives."""
    client = store.get_client(client_id)
    if client is None or client.state == "new":
        raise ClientNotFound(client_id)
    # A new id every time: each emergency is its own act and its own review.
    event_id = f"bg-{uuid.uuid4().hex}"
    parsed = parse_event_object(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": OPERATIONS_SOURCE,
            "type": BREAK_GLASS_TYPE,
            "subject": client_id,
            "time": iso(at),
            "datacontenttype": "application/json",
            "data": {"actor": actor, "reason": reason, "minutes": minutes},
        }
    )
    if not isinstance(parsed, CloudEvent):
        raise InvalidBreakGlass(parsed.reasons)
    [result] = record([parsed])
    grant = Grant(client_id, actor, reason, event_id, parsed.time, parsed.time + _span(minutes))
    return BreakGlassResult(result.outcome, grant, result.reasons)


def _span(minutes: int) -> timedelta:
    return timedelta(minutes=minutes)


def grant_of(entry: HistoryEntry) -> Grant | None:
    """The grant a recorded break-glass event gives; None for any other entry. Only kapflow's
    own operations source counts: no publisher key may post under it (access.py), so a
    publisher allowed `operations.*` still cannot forge a grant for someone."""
    if entry.type != BREAK_GLASS_TYPE or entry.source != OPERATIONS_SOURCE:
        return None
    data = json.loads(entry.event)["data"]
    granted_at = datetime.fromisoformat(entry.occurred_at)
    return Grant(
        entry.client_id,
        data["actor"],
        data["reason"],
        entry.event_id,
        granted_at,
        granted_at + _span(data["minutes"]),
    )


def active_grant(store: EventStore, client_id: str, actor: str, now: datetime) -> Grant | None:
    """The grant (the latest-ending one) `actor` holds on `client_id` at `now`, from the
    client's recorded history; None when none is in force."""
    grants = (grant_of(entry) for entry in store.history(client_id))
    live = [
        grant
        for grant in grants
        if grant is not None and grant.actor == actor and grant.granted_at <= now < grant.until
    ]
    return max(live, key=lambda grant: grant.until, default=None)

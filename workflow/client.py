"""What kapflow knows about one client: the engine's state between events.

Plain data, no framework imports. The engine never mutates a snapshot it was given;
it works on a `copy()` and returns the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from workflow.tasks import Task

NEW = "new"  # the machine's initial pseudo-state: kapflow has not heard of the client yet
# The hash the first history entry of every client chains to.
GENESIS_HASH = "0" * 64


@dataclass(slots=True)
class ClientSnapshot:
    client_id: str
    state: str = NEW
    seq: int = 0
    last_hash: str = GENESIS_HASH
    last_event_time: str | None = None
    # Time of the last event from a person (kapflow's own clock events excluded).
    last_activity_time: str | None = None
    # The state a hold will return to (SPEC §1: releasing a hold returns the client).
    held_from: str | None = None
    hold_reasons: list[str] = field(default_factory=list)
    ineligible_reasons: list[str] = field(default_factory=list)
    prescriber: str | None = None
    pathway: str | None = None
    clearance_valid_until: str | None = None  # ISO date
    clearance_revoked: bool = False
    doses_authorized: int = 0
    doses_used: int = 0  # since the latest authorisation (R9)
    subscription_active: bool = False
    subscription_paid_until: str | None = None  # ISO date, low-dose only
    insurance_used: bool = False
    preparation_sessions: int = 0
    ready_for_dosing: bool = False
    dosing_sessions: int = 0
    current_dosing_session: str | None = None
    dosing_completed: bool = False
    awaiting_integration: bool = False
    no_shows: int = 0
    chaperones_confirmed: list[str] = field(default_factory=list)
    parked: int = 0
    open_tasks: dict[str, Task] = field(default_factory=dict)
    # Facts with their own event times (release 2026.11.4 on), so that rules are judged
    # on the facts as they stood at an event's time, whatever order the messages came in.
    timeline: bool = False
    # Each medical clearance or renewal: {"at": time, "until": date, "doses": int | None}.
    authorisations: list[dict[str, Any]] = field(default_factory=list)
    revocations: list[str] = field(default_factory=list)  # times clearance was revoked
    lapses: list[str] = field(default_factory=list)  # times a subscription lapsed
    preparations: list[list[Any]] = field(default_factory=list)  # [time, ready_for_dosing]
    # Each dosing: {"session", "at", "source", "event_id", "integrated_at", "rules"} where
    # "rules" are the rule ids it broke that are still unresolved.
    dosings: list[dict[str, Any]] = field(default_factory=list)
    hold_since: str | None = None  # time the current hold began
    exited_at: str | None = None  # time of withdrawal, completion or ineligibility
    # Booked appointments (release 2026.12.1 on), by appointment id: {"kind", "starts_at",
    # "booked_at", "status" (booked, cancelled, no_show, used), "chaperone_at" (time the
    # chaperone was confirmed for it, or None)}. Replaced whole, never changed in place.
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The latest recorded fact's place in event-time order (workflow/derivation.fact_key:
    # time, type rank, source, id), from release 2026.12.1: a fact before it is late.
    latest_fact: list[Any] | None = None

    @property
    def doses_remaining(self) -> int | None:
        if self.pathway != "high_dose":
            return None
        return max(self.doses_authorized - self.doses_used, 0)

    @property
    def reasons(self) -> list[str]:
        """Rule ids that made the client `ineligible` or put it `on_hold` (SPEC §7)."""
        if self.state == "ineligible":
            return list(self.ineligible_reasons)
        if self.state == "on_hold":
            return list(self.hold_reasons)
        return []

    def copy(self) -> ClientSnapshot:
        # Runs once per event on the hot path: every field positionally (the fastest way to
        # build a dataclass here), then fresh copies of the containers handlers change in
        # place. Timeline lists are never changed in place (handlers assign new ones).
        snapshot = ClientSnapshot(*_ALL_FIELDS(self))
        snapshot.hold_reasons = list(self.hold_reasons)
        snapshot.ineligible_reasons = list(self.ineligible_reasons)
        snapshot.chaperones_confirmed = list(self.chaperones_confirmed)
        snapshot.open_tasks = dict(self.open_tasks)
        return snapshot

    def dosing_appointment(self, at: str) -> tuple[str, dict[str, Any]] | None:
        """The booked dosing appointment a dosing at `at` takes up: booked by then, not
        cancelled, missed or used, the earliest to start (R7 is judged for that one)."""
        booked = [
            (appointment["starts_at"], appointment_id, appointment)
            for appointment_id, appointment in self.appointments.items()
            if appointment["kind"] == "dosing"
            and appointment["status"] == "booked"
            and appointment["booked_at"] <= at
        ]
        if not booked:
            return None
        _, appointment_id, appointment = min(booked, key=lambda item: (item[0], item[1]))
        return appointment_id, appointment

    def next_appointment(self, at: str) -> dict[str, Any] | None:
        """The next booked appointment starting at or after `at`, with its id."""
        upcoming = sorted(
            (appointment["starts_at"], appointment_id)
            for appointment_id, appointment in self.appointments.items()
            if appointment["status"] == "booked" and appointment["starts_at"] >= at
        )
        if not upcoming:
            return None
        appointment_id = upcoming[0][1]
        return {"appointment_id": appointment_id, **self.appointments[appointment_id]}

    def dosing(self, session: str) -> dict[str, Any] | None:
        return next((d for d in self.dosings if d["session"] == session), None)

    @property
    def open_deviations(self) -> list[dict[str, Any]]:
        """Recorded dosings whose protocol deviation is not yet resolved."""
        return [d for d in self.dosings if d["rules"]]

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in _FIELDS if f.name != "open_tasks"}
        record["open_tasks"] = [task.as_dict() for task in self.open_tasks.values()]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ClientSnapshot:
        values = dict(record)
        tasks = values.pop("open_tasks", [])
        snapshot = cls(**values)
        snapshot.open_tasks = {t["id"]: Task.from_dict(t) for t in tasks}
        return snapshot

    def view(self) -> dict[str, Any]:
        """The public client object (SPEC §7 `kapflow client ID --json`)."""
        return {
            "client_id": self.client_id,
            "state": self.state,
            "seq": self.seq,
            "pathway": self.pathway,
            "prescriber": self.prescriber,
            "clearance_valid_until": self.clearance_valid_until,
            "doses_remaining": self.doses_remaining,
            "dosing_sessions": self.dosing_sessions,
            "subscription_active": self.subscription_active if self.pathway == "low_dose" else None,
            "subscription_paid_until": self.subscription_paid_until,
            "preparation_sessions": self.preparation_sessions,
            "awaiting_integration": self.awaiting_integration,
            "held_from": self.held_from if self.state == "on_hold" else None,
            "reasons": self.reasons,
            "parked_events": self.parked,
            "last_event_time": self.last_event_time,
            "open_deviations": [
                {"session_id": d["session"], "occurred_at": d["at"], "rules": list(d["rules"])}
                for d in self.open_deviations
            ],
            "open_tasks": sorted(
                (task.as_dict() for task in self.open_tasks.values()),
                key=lambda t: (t["due"], t["id"]),
            ),
        }


_FIELDS = fields(ClientSnapshot)
_ALL_FIELDS = attrgetter(*(f.name for f in _FIELDS))

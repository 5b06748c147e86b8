"""What the service layer answers for each input (SPEC §7), and the input it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from events import CloudEvent, Reason
from workflow.client import NEW

# Key of an input that is not a valid CloudEvent: its content fingerprint.
UNPARSEABLE_SOURCE = "urn:kapflow:unparseable"

RawInput = str | bytes | dict[str, Any] | CloudEvent


@dataclass(slots=True)  # a value: never mutated after construction
class IngestResult:
    """The per-event report (SPEC §7): `{"id","subject","type","outcome","reasons","state"}`."""

    id: str | None
    subject: str | None
    type: str | None
    outcome: str
    reasons: tuple[Reason, ...]
    state: str | None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "type": self.type,
            "outcome": self.outcome,
            "reasons": [reason.as_dict() for reason in self.reasons],
            "state": self.state,
        }


def compact_json(value: Any) -> str:
    """Compact JSON, deterministic for the same value (history and verify depend on it)."""
    return orjson.dumps(value).decode()


def public_state(state: str | None) -> str | None:
    """A client kapflow has not recorded anything for has no state to report."""
    return None if state in (None, NEW) else state

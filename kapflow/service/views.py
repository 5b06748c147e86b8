"""Read models every runtime shows the same way: the CLI's `--json` and the HTTP API build
these views here, once, with the same keys."""

from __future__ import annotations

import json
from typing import Any

from kapflow.service.clock import Deadline
from kapflow.store.base import ParkedEvent


def parked_view(parked: ParkedEvent) -> dict[str, Any]:
    """A parked event: what it is, when it happened and arrived, why it waits, the event."""
    return {
        "source": parked.source,
        "id": parked.event_id,
        "subject": parked.client_id,
        "type": parked.type,
        "occurred_at": parked.occurred_at,
        "recorded_at": parked.recorded_at,
        "reasons": json.loads(parked.reasons),
        "event": json.loads(parked.event),
    }


def deadline_view(deadline: Deadline, now: str) -> dict[str, Any]:
    """A deadline, `overdue` when it fell due at or before `now` (RFC 3339, UTC)."""
    return deadline.as_dict() | {"overdue": deadline.due <= now}

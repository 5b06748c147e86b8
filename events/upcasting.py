"""Recorded events are read through explicit upcasters, never re-parsed with today's models.

A history keeps each event as kapflow recorded it (SPEC §6: auditors get back exactly what
was recorded). When a type's `data` changes shape, its version goes up here and an upcaster
turns the recorded older shape into the current one, so a model can change without breaking
a store written by an earlier release (pyeventsourcing's upcasting, per event type).

Which version a recorded event is follows from the pathway release that recorded it (each
history entry names it): `DATA_VERSIONS` lists, per type, the release from which each
version was written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from events.envelope import RECORDED, CloudEvent
from events.registry import EVENT_MODELS

Document = dict[str, Any]
Upcaster = Callable[[Document], Document]

# Per event type: (first release that wrote it, data version), oldest first. A type not
# listed has only ever had version 1.
DATA_VERSIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "clinician.dosing_started": (("0", 1), ("2026.12.1", 2)),
    "operations.task_completed": (("0", 1), ("2026.12.1", 2)),
    "operations.task_claimed": (("0", 1), ("2026.12.1", 2)),
    "operations.task_cancelled": (("0", 1), ("2026.12.1", 2)),
    "operations.task_reassigned": (("0", 1), ("2026.12.1", 2)),
}


def _dosing_started_1_to_2(data: Document) -> Document:
    """Version 1 named no appointment: the dosing is matched to the booked dosing appointment
    it took up (workflow), as before."""
    return {**data, "appointment_id": None}


def _operations_1_to_2(data: Document) -> Document:
    """Version 1 named no one who acted (SPEC §6 accountability came later): `actor` None,
    which only a recorded event may carry."""
    return {**data, "actor": None}


# (type, version) → the function that turns that version's `data` into the next version's.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("clinician.dosing_started", 1): _dosing_started_1_to_2,
    ("operations.task_completed", 1): _operations_1_to_2,
    ("operations.task_claimed", 1): _operations_1_to_2,
    ("operations.task_cancelled", 1): _operations_1_to_2,
    ("operations.task_reassigned", 1): _operations_1_to_2,
}


def _release_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def current_version(event_type: str) -> int:
    versions = DATA_VERSIONS.get(event_type)
    return versions[-1][1] if versions else 1


def recorded_version(event_type: str, pathway_version: str) -> int:
    """The data version the release `pathway_version` wrote for `event_type`."""
    written = 1
    release = _release_key(pathway_version)
    for since, version in DATA_VERSIONS.get(event_type, ()):
        if _release_key(since) <= release:
            written = version
    return written


def upcast(document: Document, version: int) -> Document:
    """`document` (a recorded event, data of `version`) in the current version's shape."""
    event_type = document["type"]
    target = current_version(event_type)
    data = document.get("data", {})
    while version < target:
        data = UPCASTERS[(event_type, version)](data)
        version += 1
    return {**document, "data": data}


def read_recorded(text: str, pathway_version: str) -> CloudEvent:
    """A recorded event (as history or the parked log keeps it) in today's model. It was
    valid when recorded, so only the schema is checked, not the raw-input rules."""
    document = json.loads(text)
    event_type = document["type"]
    version = recorded_version(event_type, pathway_version)
    if version != current_version(event_type):
        # The models are strict in Python mode; JSON mode reads times as they were recorded.
        text = json.dumps(upcast(document, version))
    # It was accepted when recorded: read it back as it was (no check added since applies).
    return EVENT_MODELS[event_type].model_validate_json(text, context=RECORDED)

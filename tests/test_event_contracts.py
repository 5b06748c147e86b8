"""Event contracts: strict CloudEvents, closed data, machine-readable reasons without payloads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from builders import Journey

from events import EVENT_TYPES, CloudEvent, Rejection, event_json_schemas, parse_event


def _codes(result: CloudEvent | Rejection) -> list[tuple[str, str | None]]:
    assert isinstance(result, Rejection)
    return [(r.code, r.field) for r in result.reasons]


def valid() -> dict[str, Any]:
    return Journey().dosing_completed("s-1")


def test_every_spec_event_type_has_a_contract() -> None:
    # The 21 types of SPEC §3, plus the work queue's operations events: a task completed
    # (billing done, prescriber notified, reminder sent), claimed, cancelled or reassigned,
    # and a break-glass read (issue 18).
    assert len(EVENT_TYPES) == 26
    assert "clinician.hold_placed" in EVENT_TYPES and "system.deadline_reached" in EVENT_TYPES


def test_a_valid_event_parses() -> None:
    event = parse_event(json.dumps(valid()))
    assert isinstance(event, CloudEvent)
    assert event.subject == "c-1" and event.data.duration_minutes == 150  # type: ignore[attr-defined]


def test_unknown_data_fields_are_rejected_so_free_text_cannot_slip_in() -> None:
    event = valid()
    event["data"]["note"] = "Client Jane Doe, born 1980-02-03, said ..."
    result = parse_event(json.dumps(event))
    assert _codes(result) == [("SCHEMA", "data.note")]
    assert "Jane" not in repr(result)  # reasons never echo the payload


def test_codes_cannot_carry_prose() -> None:
    j = Journey()
    event = j.hold()
    event["data"]["reason"] = "client told me about her divorce"
    assert _codes(parse_event(json.dumps(event))) == [("SCHEMA", "data.reason")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_minutes", 0),
        ("duration_minutes", "150"),
        ("released_to_chaperone", "yes"),
        ("side_effects", ["hallucination"]),
        ("active_minutes", 999),
    ],
)
def test_data_values_are_validated_strictly(field: str, value: Any) -> None:
    event = valid()
    event["data"][field] = value
    assert _codes(parse_event(json.dumps(event)))[0][0] == "SCHEMA"


def test_age_is_bounded() -> None:
    j = Journey()
    event = j.assessment(age=131)
    assert _codes(parse_event(json.dumps(event))) == [("SCHEMA", "data.age_years")]


def test_unknown_type_is_named_as_such() -> None:
    event = valid()
    event["type"] = "clinician.teleported"
    assert _codes(parse_event(json.dumps(event))) == [("UNKNOWN_TYPE", "type")]


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "subject", "time", "data"])
def test_envelope_attributes_are_required(missing: str) -> None:
    event = valid()
    del event[missing]
    assert ("SCHEMA", missing) in _codes(parse_event(json.dumps(event)))


def test_time_needs_a_timezone() -> None:
    event = valid()
    event["time"] = "2026-01-05T10:00:00"
    assert _codes(parse_event(json.dumps(event))) == [("SCHEMA", "time")]


def test_malformed_json_is_rejected_cleanly() -> None:
    assert _codes(parse_event("{nope")) == [("MALFORMED_JSON", None)]


def test_unknown_envelope_attributes_are_rejected() -> None:
    event = valid()
    event["patientname"] = "x"
    assert _codes(parse_event(json.dumps(event))) == [("SCHEMA", "patientname")]


def test_json_schemas_are_exported_for_every_type() -> None:
    schemas = event_json_schemas()
    assert set(schemas) == set(EVENT_TYPES)
    dosing = schemas["clinician.dosing_started"]
    assert dosing["additionalProperties"] is False
    data_ref = dosing["properties"]["data"]["$ref"].split("/")[-1]
    assert dosing["$defs"][data_ref]["additionalProperties"] is False


def test_a_kafka_record_is_checked_and_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The binding reads the subject from the checked JSON; validation reuses that check."""
    import events.registry as registry
    from events.kafka_binding import from_kafka_record

    calls = []
    real = registry.decode_json
    monkeypatch.setattr(registry, "decode_json", lambda text: calls.append(1) or real(text))
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "urn:qmts:scheduling",
        "type": "scheduling.inquiry_received",
        "subject": "c-1",
        "time": "2026-01-05T09:00:00Z",
        "datacontenttype": "application/json",
        "data": {"channel": "email"},
    }
    record = from_kafka_record(b"c-1", json.dumps(event).encode(), [])
    parsed = registry.parse_event(record.raw)
    assert record.subject == "c-1" and getattr(parsed, "id", None) == "e-1"
    assert len(calls) == 1
    duplicate = from_kafka_record(b"c-1", b'{"id": 1, "id": 2}', [])
    assert [r.code for r in registry.parse_event(duplicate.raw).reasons] == ["DUPLICATE_KEY"]

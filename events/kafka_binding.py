"""The CloudEvents Kafka protocol binding: a Kafka record → one input for the service.

Structured mode: the record value is the whole CloudEvent as JSON. Binary mode: the
attributes travel as `ce_`-prefixed headers and the value is the `data`. The record key
should be the client id (`subject`) so one client's events share a partition.

A record is never dropped and never raises here, whatever its bytes: text that is not
UTF-8 is kept with its undecodable bytes escaped (`surrogateescape`), so validation
rejects it with a reason and the dead letter still shows every byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from events.registry import CheckedJson, Reason, decode_json, storable_text_problem

Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None


@dataclass(slots=True)
class KafkaInput:
    raw: bytes | dict[str, Any]  # what the service layer validates
    subject: str | None  # the client id, when it could be read
    keyed_by_subject: bool  # False → re-key before processing (per-client order)


def _header_map(headers: Headers) -> dict[str, bytes]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(name).lower(): value for name, value in items if value is not None}


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="surrogateescape")


def _client_id(value: Any) -> str | None:
    """A subject usable as a record key: a string every store and the producer can hold."""
    if isinstance(value, str) and value and storable_text_problem(value) is None:
        return value
    return None


def from_kafka_record(key: bytes | None, value: bytes | None, headers: Headers) -> KafkaInput:
    header = _header_map(headers)
    key_text = _text(key) if key else None
    if "ce_specversion" in header:
        event: dict[str, Any] = {
            name[3:]: _text(raw) for name, raw in header.items() if name.startswith("ce_")
        }
        if "content-type" in header:
            event["datacontenttype"] = _text(header["content-type"]).split(";")[0].strip()
        data = decode_json(value) if value else None
        # Data kapflow will not read stays as text: validation rejects it (data must be an
        # object) and the dead letter keeps its bytes.
        event["data"] = _text(value or b"") if isinstance(data, Reason) else data
        subject = _client_id(event.get("subject"))
        return KafkaInput(event, subject, key_text == subject)
    body, decoded = CheckedJson.of(value or b"")
    subject = _client_id(decoded.get("subject")) if isinstance(decoded, dict) else None
    return KafkaInput(body, subject, subject is None or key_text == subject)

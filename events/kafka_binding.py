"""The CloudEvents Kafka protocol binding: a Kafka record → one input for the service.

Structured mode: the record value is the whole CloudEvent as JSON. Binary mode: the
attributes travel as `ce_`-prefixed headers and the value is the `data`. The record key
should be the client id (`subject`) so one client's events share a partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
    return value.decode("utf-8", errors="replace")


def from_kafka_record(key: bytes | None, value: bytes | None, headers: Headers) -> KafkaInput:
    header = _header_map(headers)
    key_text = _text(key) if key else None
    if "ce_specversion" in header:
        event: dict[str, Any] = {
            name[3:]: _text(raw) for name, raw in header.items() if name.startswith("ce_")
        }
        if "content-type" in header:
            event["datacontenttype"] = _text(header["content-type"]).split(";")[0].strip()
        try:
            event["data"] = json.loads(value) if value else None
        except ValueError:
            # Keep the undecodable bytes visible to the dead letter, never drop them.
            event["data"] = _text(value or b"")
        subject = event.get("subject")
        return KafkaInput(event, subject, key_text == subject)
    body = value or b""
    subject = None
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict) and isinstance(decoded.get("subject"), str):
            subject = decoded["subject"]
    except ValueError:
        pass
    return KafkaInput(body, subject, subject is None or key_text == subject)

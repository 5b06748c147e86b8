"""`POST /v1/events`: the HTTP door to the one write path (IngestService via the writer).

Status codes, decided once:
- 200 whenever every event got an outcome. A rejected, duplicate or parked event is an
  outcome, not a failed request (same as `kapflow ingest`, which exits 0): the body is
  one outcome object for a single CloudEvent, or an array of them, in order, for an array.
  `X-Kapflow-Outcomes` sums them up (e.g. `accepted=3,rejected=1`). No 207: there is no
  per-item HTTP status to report, only domain outcomes.
- 400 the body is not JSON; 413 too big (bytes or events); 415 a non-JSON content type;
  422 JSON that is neither an object nor an array. Nothing is recorded for these.
- 401/403 before anything is read into the engine; a publisher posting any event type
  outside its prefixes fails the whole request (nothing recorded), and so does one posting
  any event under a source its key does not name (`source_not_allowed`): (`source`, `id`)
  is an event's identity (SPEC §3), and an id taken under another system's source would
  make that system's real event a duplicate. Refusing the whole array, not the element,
  keeps one rule for both refusals: a 403 means nothing of the request was recorded.
- 503 the database or the writer is unavailable: nothing recorded, safe to retry
  (every event is idempotent on source + id).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from events import EVENT_TYPES
from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import services
from kapflow.entrypoints.http.errors import ApiError, errors_for, recording_refusals
from kapflow.entrypoints.http.schemas import OutcomeOut
from kapflow.service.access import ApiKey, Permission
from kapflow.service.identity import SOURCE_NOT_ALLOWED

log = logging.getLogger("kapflow.http.events")
router = APIRouter(tags=["events"])

_EXAMPLE = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "urn:qmts:scheduling",
    "type": "scheduling.inquiry_received",
    "subject": "c-000001",
    "time": "2026-01-05T09:00:00Z",
    "datacontenttype": "application/json",
    "data": {"channel": "email"},
}

# Deliberately loose: any JSON object is a valid request element. What makes an event valid
# (envelope, type, data) is checked per event and answered as an outcome, not as a 4xx.
_CLOUD_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "CloudEvent",
    "description": "A CloudEvents 1.0 envelope, structured JSON mode. It is validated per "
    "event, by type (`kapflow schema` writes one JSON Schema per type): an invalid event "
    "is a `rejected` outcome with machine-readable reasons, not a failed request.",
    "properties": {
        "specversion": {"description": "`1.0`"},
        "id": {"description": "unique per source"},
        "source": {"description": "URI-reference of the publisher"},
        "type": {"description": "one of: " + ", ".join(EVENT_TYPES)},
        "subject": {"description": "the client id"},
        "time": {"description": "RFC 3339: when it happened"},
        "datacontenttype": {"description": "`application/json`"},
        "data": {"description": "the event's fields (flags and codes only)"},
    },
    "additionalProperties": True,
}


def _request_body() -> dict[str, Any]:
    # The size limits (bytes, events) are configurable per server, so they are described,
    # not encoded as maxItems: a 413 is their answer, not a schema violation.
    schema = {
        "oneOf": [
            _CLOUD_EVENT_SCHEMA,
            {
                "type": "array",
                "description": "CloudEvents, applied in order; at most the server's "
                "--max-events (default 1000) and --max-body-bytes (default 1 MiB), else 413",
                "items": {"description": "each element is validated as a CloudEvent"},
            },
        ]
    }
    return {
        "required": True,
        "content": {
            media: {"schema": schema, "example": _EXAMPLE}
            for media in ("application/json", "application/cloudevents+json")
        },
    }


def _outcome_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "One outcome per event: an object for a single CloudEvent, an "
            "array (same order) for an array",
            "model": OutcomeOut | list[OutcomeOut],
            "headers": {
                "X-Kapflow-Outcomes": {
                    "description": "counts by outcome, e.g. accepted=3,rejected=1",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors_for(400, 401, 403, 413, 415, 422, 503),
    }


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # no claim made: try it as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


_ELEMENTS = json.JSONDecoder()


def _element_texts(body: bytes, document: list[Any]) -> list[bytes]:
    """Each element of a JSON array body exactly as sent.

    Validation then sees what the publisher sent, not what a lenient decoder made of it: an
    object with the same key twice is rejected (re-encoding would keep one silently), and
    the dead letter keeps the element's own text. Only an array too deep for Python's
    decoder to delimit falls back to re-encoding its elements.
    """
    text = body.decode("utf-8")  # orjson has already accepted it, so it is UTF-8
    elements: list[bytes] = []
    position = text.index("[") + 1
    try:
        for _ in document:
            while text[position] in " \t\r\n,":
                position += 1
            _, end = _ELEMENTS.raw_decode(text, position)
            elements.append(text[position:end].encode("utf-8"))
            position = end
    except (RecursionError, ValueError, IndexError):
        return [orjson.dumps(item) for item in document]
    return elements


def decode_events(body: bytes, max_events: int) -> tuple[list[bytes], list[Any], bool]:
    """The body as raw events for the ingest service, the decoded elements, and whether it
    was a single object.

    Each element is handed over as compact JSON text, so validation (strict, per type) and
    the dead letter's `original` are the same as for a line of `kapflow ingest`.
    """
    if not body.strip():
        raise ApiError(400, "malformed_json", "the body is empty; send a CloudEvent or an array")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        try:
            # JSON orjson declines but the standard allows (a lone surrogate escape, a
            # number beyond 64 bits): decoded here, then rejected per event with a reason.
            document = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise ApiError(
                400,
                "malformed_json",
                f"the body is not valid JSON (line {error.lineno}, column {error.colno})",
                line=error.lineno,
                column=error.colno,
            ) from None
    if isinstance(document, dict):
        return [body], [document], True
    if isinstance(document, list):
        if len(document) > max_events:
            raise ApiError(
                413,
                "too_many_events",
                f"{len(document)} events in one request; at most {max_events}",
                limit=max_events,
            )
        return _element_texts(body, document), document, False
    raise ApiError(
        422,
        "invalid_body",
        f"the body must be a CloudEvent object or a JSON array of them, not a JSON "
        f"{_json_kind(document)}",
    )


def _shown(text: str) -> str:
    # Echoed back as JSON: escape what is not valid Unicode (a lone surrogate).
    return text[:128].encode("utf-8", "backslashreplace").decode("utf-8")


def _refused_sources(items: list[Any], key: ApiKey) -> list[dict[str, Any]]:
    if key.role != "publisher":
        return []
    refused = []
    for index, item in enumerate(items):
        # As for types: an element that claims no source is left to the schema check (a
        # rejected outcome keyed by its content, never by an identity it does not have).
        source = item.get("source") if isinstance(item, dict) else None
        if isinstance(source, str) and not key.may_publish_source(source):
            refused.append({"index": index, "source": _shown(source)})
    return refused


def _source_refusal(key: ApiKey, refused: list[dict[str, Any]]) -> ApiError:
    if key.sources:
        detail = f"key `{key.name}` may publish only under the sources: {', '.join(key.sources)}"
    else:  # an entry from before keys named sources (service/access.py)
        detail = (
            f"key `{key.name}` names no sources, so it may publish nothing: add a `sources`"
            " list to its entry in the keys file"
        )
    return ApiError(
        403,
        "source_not_allowed",
        detail + "; nothing in this request was recorded",
        permission=Permission.PUBLISH,
        role=key.role,
        allowed_sources=list(key.sources),
        refused=refused[:20],
    )


def _refused_types(items: list[Any], key: ApiKey) -> list[dict[str, Any]]:
    if key.role != "publisher":
        return []
    refused = []
    for index, item in enumerate(items):
        # Only the `type` is looked at here; an element without one is left to the schema
        # check (a rejected outcome), since it claims no type it could be refused for.
        type_ = item.get("type") if isinstance(item, dict) else None
        if isinstance(type_, str) and not key.may_publish_type(type_):
            refused.append({"index": index, "type": _shown(type_)})
    return refused


@router.post(
    "/v1/events",
    summary="Publish one CloudEvent or an array of them",
    response_model=None,
    responses=_outcome_responses(),
    openapi_extra={"requestBody": _request_body()},
)
async def publish_events(
    request: Request, key: Annotated[ApiKey, Depends(require(Permission.PUBLISH))]
) -> Response:
    ctx = services(request)
    if not _is_json(request.headers.get("content-type")):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the events as JSON (Content-Type: application/json)",
        )
    body = await _read_body(request, ctx.settings.max_body_bytes)
    raw, items, single = decode_events(body, ctx.settings.max_events)
    refused = _refused_types(items, key)
    if refused:
        raise ApiError(
            403,
            "forbidden",
            f"key `{key.name}` may publish only types under: {', '.join(key.prefixes)};"
            " nothing in this request was recorded",
            permission=Permission.PUBLISH,
            role=key.role,
            allowed_prefixes=list(key.prefixes),
            refused=refused[:20],
        )
    foreign = _refused_sources(items, key)
    if foreign:
        ctx.metrics.identity_refusals.labels(SOURCE_NOT_ALLOWED).inc(len(foreign))
        raise _source_refusal(key, foreign)
    detail = "nothing was recorded; retry (events are idempotent)"
    with recording_refusals(log, "publish", detail):
        results = await ctx.writer.publish(raw)
    outcomes = [result.as_dict() for result in results]
    summary = Counter(result.outcome for result in results)
    return Response(
        orjson.dumps(outcomes[0] if single else outcomes),
        media_type="application/json",
        headers={"X-Kapflow-Outcomes": ",".join(f"{k}={v}" for k, v in sorted(summary.items()))},
    )

"""`GET /fhir/Task`: open and closed follow-up tasks as a FHIR R5 searchset Bundle.

`fhir.resources` 8.x implements FHIR R5 (5.0.0); every Task and the Bundle are validated
with it before they leave, so a consumer's FHIR client can rely on them.

Mapping from kapflow's task (SPEC §4):
- `id`, `identifier` (system `urn:kapflow:task`) ← task id (a UUID, v5 or time-ordered v8
  by pathway release; a valid FHIR id);
- `status`, `intent` ("order"), `priority` ← the same codes (kapflow uses FHIR's value sets);
- `code` ← CodeableConcept, system `urn:kapflow:task-code`, code and display from the
  catalogue; `description` ← the catalogue text;
- `for` ← `Patient/{client_id}`;
- `owner` ← the owning ROLE, not a person: a Reference of type `PractitionerRole` with an
  identifier in `urn:kapflow:owner-role` and the role as display (kapflow assigns work to
  roles; the practice's own system picks the practitioner). Tasks owned by the client are
  a Reference to `Patient/{client_id}`;
- `focus` ← the triggering event, by identifier (system `urn:kapflow:event`): events are
  not FHIR resources;
- `authoredOn`, `lastModified`; `restriction.period.end` ← due;
- `note` ← an Annotation; `amount_usd` ← extension `urn:kapflow:fhir:task-amount`
  (valueMoney, USD).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fhir.resources.bundle import Bundle

from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import record_access, server_now, services
from kapflow.entrypoints.http.errors import ApiError, errors_for
from kapflow.entrypoints.http.metrics import OWNERS
from kapflow.entrypoints.http.reads import CLIENT_ID_PATTERN
from kapflow.service.access import Permission
from workflow.tasks import OPEN_STATUSES, iso

router = APIRouter(tags=["fhir"])

FHIR_VERSION = "5.0.0"  # what fhir.resources 8.x validates against (R5)
FHIR_JSON = "application/fhir+json"
TASK_CODE_SYSTEM = "urn:kapflow:task-code"
TASK_ID_SYSTEM = "urn:kapflow:task"
OWNER_ROLE_SYSTEM = "urn:kapflow:owner-role"
EVENT_SYSTEM = "urn:kapflow:event"
AMOUNT_EXTENSION = "urn:kapflow:fhir:task-amount"
TASK_STATUSES = ("requested", "in-progress", "completed", "cancelled")
_STATUS = "(requested|in-progress|completed|cancelled)"
_STATUS_LIST = f"^{_STATUS}(,{_STATUS})*$"  # FHIR token search: comma means OR


def fhir_task(task: dict[str, Any]) -> dict[str, Any]:
    """One kapflow task object (`Task.as_dict()`) as a FHIR R5 Task resource (a dict)."""
    client_ref = f"Patient/{task['for']}"
    owner: dict[str, Any]
    if task["owner"] == "client":
        owner = {"reference": client_ref, "display": "client"}
    else:
        owner = {
            "type": "PractitionerRole",
            "identifier": {"system": OWNER_ROLE_SYSTEM, "value": task["owner"]},
            "display": task["owner"],
        }
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": task["id"],
        "identifier": [{"system": TASK_ID_SYSTEM, "value": task["id"]}],
        "status": task["status"],
        "intent": task["intent"],
        "priority": task["priority"],
        "code": {
            "coding": [
                {"system": TASK_CODE_SYSTEM, "code": task["code"], "display": task["description"]}
            ],
            "text": task["description"],
        },
        "description": task["description"],
        "for": {"reference": client_ref},
        "owner": owner,
        "focus": {"identifier": {"system": EVENT_SYSTEM, "value": task["focus"]}},
        "authoredOn": task["authored_on"],
        "lastModified": task["last_modified"],
        "restriction": {"period": {"end": task["due"]}},
    }
    if task.get("note"):
        resource["note"] = [{"text": task["note"]}]
    if task.get("amount_usd") is not None:
        resource["extension"] = [
            {
                "url": AMOUNT_EXTENSION,
                "valueMoney": {"value": Decimal(task["amount_usd"]), "currency": "USD"},
            }
        ]
    return resource


def task_bundle(tasks: list[dict[str, Any]], base_url: str, complete: bool) -> bytes:
    """A validated searchset Bundle, as FHIR JSON."""
    document: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": iso(server_now()),
        "link": [{"relation": "self", "url": f"{base_url}/fhir/Task"}],
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/Task/{task['id']}",
                "resource": fhir_task(task),
                "search": {"mode": "match"},
            }
            for task in tasks
        ],
    }
    if complete:
        document["total"] = len(tasks)
    bundle = Bundle.model_validate(document)
    return orjson.dumps(orjson.loads(bundle.model_dump_json(exclude_none=True)))


_BUNDLE_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "type"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]},
        "type": {"type": "string", "enum": ["searchset"]},
        "total": {"type": "integer"},
        "entry": {"type": "array", "items": {"type": "object"}},
    },
}


@router.get(
    "/fhir/Task",
    summary="Follow-up tasks as a FHIR R5 Bundle of Task resources",
    description="Search parameters: `status` (comma-separated FHIR task status codes), "
    "`owner` (kapflow owner role), `patient` (client id), `_count` (page size).",
    response_model=None,
    responses={
        200: {
            "description": "FHIR R5 Bundle (searchset)",
            "content": {FHIR_JSON: {"schema": _BUNDLE_SCHEMA}},
        },
        **errors_for(401, 403, 422),
    },
)
def search_tasks(
    request: Request,
    _: Annotated[object, Depends(require(Permission.FHIR))],
    status: Annotated[str | None, Query(pattern=_STATUS_LIST, max_length=100)] = None,
    owner: Annotated[str | None, Query(json_schema_extra={"enum": list(OWNERS)})] = None,
    patient: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, max_length=64)] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=10000)] = 1000,
) -> Response:
    statuses: set[str] | None = None
    if status:
        statuses = {s.strip() for s in status.split(",") if s.strip()}
        if not statuses or statuses - set(TASK_STATUSES):
            raise ApiError(
                422,
                "invalid_parameter",
                f"`status` must be among {', '.join(TASK_STATUSES)}",
                field="status",
            )
    if owner is not None and owner not in OWNERS:
        raise ApiError(422, "invalid_parameter", "`owner` is not a task owner role", field="owner")
    open_only = statuses is not None and statuses <= OPEN_STATUSES
    record_access(request, "fhir-tasks", patient)
    store = services(request).store
    # Fetch one more than asked, to know whether the page is complete (Bundle.total).
    found = store.tasks(open_only=open_only, owner=owner, client_id=patient, limit=count + 1)
    tasks = [t.as_dict() for t in found if statuses is None or t.status in statuses]
    complete = len(found) <= count
    base = str(request.base_url).rstrip("/")
    return Response(task_bundle(tasks[:count], base, complete), media_type=FHIR_JSON)

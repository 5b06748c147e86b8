"""`POST /v1/clients/{id}/break-glass`: an emergency read of one client (issue 18).

The act is recorded as `operations.break_glass_invoked` through the single writer
(kapflow/service/break_glass.py), so it is in the client's history, opens a clinician's
review task and, for the minutes the setting grants (`KAPFLOW_BREAK_GLASS_MINUTES`, 30),
lets the person read that client's history and replay (`auth.require_or_break_glass`).
Status codes: 200 with the grant; 403 a role that may not (a publisher, an auditor, a
dashboard's key: only people break the glass, and operations or admin); 404 no such
client; 409 the client's history refused the event; 422 a reason that is not a code;
503 nothing was recorded, safe to retry.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import principal, server_now, services
from kapflow.entrypoints.http.errors import ApiError, errors_for, recording_refusals
from kapflow.entrypoints.http.reads import ClientIdPath, json_response
from kapflow.service.access import ApiKey, Permission, Role, is_person
from kapflow.service.break_glass import ClientNotFound, InvalidBreakGlass, invoke_break_glass
from kapflow.service.ingest import IngestResult, RawInput
from kapflow.settings import SettingsError, load_break_glass_settings

log = logging.getLogger("kapflow.http.break_glass")
router = APIRouter(tags=["clients"])


class BreakGlassIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="why, as a reason code, never prose (e.g. `emergency_care`, `safety_concern`)",
        examples=["emergency_care"],
    )


class GrantOut(BaseModel):
    client_id: str
    actor: str
    reason: str
    event_id: str
    granted_at: str
    until: str


class BreakGlassOut(BaseModel):
    outcome: Literal["accepted"]
    event: dict[str, str]
    grant: GrantOut
    reasons: list[dict[str, str]]


def _minutes() -> int:
    try:
        return load_break_glass_settings().minutes
    except SettingsError as error:
        log.error("%s", error)
        raise ApiError(503, "misconfigured", "break-glass settings are invalid") from None


def _refuse_screens(key: ApiKey) -> None:
    # The dashboard role holds break-glass for its people; a dashboard's key is a screen.
    if key.role == Role.DASHBOARD and not is_person(key):
        raise ApiError(
            403,
            "forbidden",
            f"key `{key.name}` is a dashboard's: only a person breaks the glass",
            permission=Permission.BREAK_GLASS,
            role=key.role,
        )


@router.post(
    "/v1/clients/{client_id}/break-glass",
    summary="Break the glass: read this client in an emergency, beyond the role "
    "(`operations.break_glass_invoked`; time-limited, reviewed)",
    response_model=None,
    responses={200: {"model": BreakGlassOut}, **errors_for(400, 401, 403, 404, 409, 422, 503)},
)
def break_glass(
    request: Request,
    client_id: ClientIdPath,
    body: BreakGlassIn,
    _: Annotated[object, Depends(require(Permission.BREAK_GLASS))],
) -> Response:
    key = principal(request)
    _refuse_screens(key)
    ctx = services(request)

    def record(items: list[RawInput]) -> list[IngestResult]:
        return ctx.writer.submit(items).result()

    try:
        with recording_refusals(log, "break-glass"):
            result = invoke_break_glass(
                ctx.store,
                record,
                client_id,
                actor=key.name,
                reason=body.reason,
                minutes=_minutes(),
                at=server_now(),
            )
    except ClientNotFound:
        raise ApiError(404, "not_found", "no such client", client_id=client_id) from None
    except InvalidBreakGlass as invalid:
        raise ApiError(
            422,
            "invalid_parameter",
            "the request breaks the event contract",
            reasons=[reason.as_dict() for reason in invalid.reasons],
        ) from None
    # Loud on purpose (issue 18): ids and codes only, never the record.
    log.warning(
        "break-glass invoked: actor=%s role=%s client=%s reason=%s outcome=%s event=%s",
        key.name,
        key.role,
        client_id,
        body.reason,
        result.outcome,
        result.grant.event_id,
    )
    if result.outcome != "accepted":
        raise ApiError(
            409,
            "refused",
            f"the break-glass event was {result.outcome}",
            outcome=result.outcome,
            reasons=[reason.as_dict() for reason in result.reasons],
        )
    return json_response(result.as_dict())

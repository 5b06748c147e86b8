"""Bearer API keys over HTTP: the transport half of `kapflow.service.access`.

Every data endpoint declares the one permission it needs (`Depends(require(...))`); the
dependency finds the key, checks its role, and leaves the principal on `request.state` for
the access log. 401 and 403 bodies say what is missing, never anything about other keys.

`EventSource` (the browser's SSE client) cannot send headers, so `/v1/stream` alone also
accepts a stream ticket, `?ticket=` (single use, short-lived, from `POST /v1/stream/ticket`
with the key in the header: stream_access.py), and, deprecated, the key itself as
`?access_token=`. Nowhere else: query strings end up in proxy logs and browser history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from kapflow.entrypoints.http.context import server_now
from kapflow.entrypoints.http.errors import ApiError
from kapflow.service.access import INSECURE_DEV_KEY, ROLES_WITH, ApiKey, KeyRing

# Declared for OpenAPI (the docs' "Authorize" button, schemathesis); checked below.
bearer_scheme = HTTPBearer(auto_error=False, description="an API key from `kapflow keys create`")
query_token_scheme = APIKeyQuery(
    name="access_token",
    auto_error=False,
    description="deprecated: the API key itself, for EventSource clients of /v1/stream only "
    "(use `ticket`)",
)
ticket_scheme = APIKeyQuery(
    name="ticket",
    scheme_name="StreamTicket",  # the default (the class name) is the access_token's
    auto_error=False,
    description="a stream ticket from `POST /v1/stream/ticket` (single use, short-lived), "
    "for EventSource clients of /v1/stream only",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kapflow"'}
_BAD_TICKET = "unknown, used or expired stream ticket: POST /v1/stream/ticket for a new one"

Dependency = Callable[..., Awaitable[ApiKey]]


def _check(request: Request, token: str | None, permission: str, ticket: bool = False) -> ApiKey:
    keys: KeyRing | None = request.app.state.keys
    if keys is None:  # --insecure-dev
        request.state.principal = INSECURE_DEV_KEY
        return INSECURE_DEV_KEY
    allowed = list(ROLES_WITH.get(permission, ()))
    if not token:
        raise ApiError(
            401,
            "unauthenticated",
            "missing API key: send `Authorization: Bearer <key>`",
            headers=_CHALLENGE,
            permission=permission,
            roles_allowed=allowed,
        )
    key: ApiKey | None
    if ticket:  # it stands for the key it was issued to, if still in the ring
        key = request.app.state.streams.tickets.redeem(keys, token)
    else:
        key = keys.authenticate(token)
    refusal = key.refusal(server_now()) if key is not None else "unknown"
    if key is None or refusal is not None:
        unknown = _BAD_TICKET if ticket else "unknown or revoked API key"
        raise ApiError(
            401,
            "unauthenticated",
            unknown if key is None else f"{refusal} API key",
            headers=_CHALLENGE,
            permission=permission,
            roles_allowed=allowed,
        )
    request.state.principal = key
    usage = getattr(request.app.state, "key_usage", None)
    if usage is not None:
        usage.seen(key.name)
    if not key.may(permission):
        raise ApiError(
            403,
            "forbidden",
            f"role `{key.role}` (key `{key.name}`) lacks permission `{permission}`",
            permission=permission,
            role=key.role,
            roles_allowed=allowed,
        )
    return key


def require(permission: str) -> Dependency:
    """A dependency that admits keys whose role holds `permission` (bearer header only)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> ApiKey:
        return _check(request, credentials.credentials if credentials else None, permission)

    return dependency


def require_for_stream(permission: str) -> Dependency:
    """As `require`, also accepting a stream ticket (`?ticket=`) and, unless the stream
    settings refuse it, the deprecated `?access_token=` (EventSource cannot set headers)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        ticket: Annotated[str | None, Depends(ticket_scheme)],
        access_token: Annotated[str | None, Depends(query_token_scheme)],
    ) -> ApiKey:
        if credentials is not None:
            return _check(request, credentials.credentials, permission)
        if ticket:
            return _check(request, ticket, permission, ticket=True)
        if access_token and not request.app.state.streams.settings.allow_query_key:
            raise ApiError(
                401,
                "unauthenticated",
                "an API key in the URL is refused: send `Authorization: Bearer <key>`, or "
                "open the stream with a ticket from POST /v1/stream/ticket",
                headers=_CHALLENGE,
                permission=permission,
                roles_allowed=list(ROLES_WITH.get(permission, ())),
            )
        return _check(request, access_token, permission)

    return dependency

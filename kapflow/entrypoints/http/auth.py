"""Bearer API keys over HTTP: the transport half of `kapflow.service.access`.

Every data endpoint declares the one permission it needs (`Depends(require(...))`); the
dependency finds the key, checks its role, and leaves the principal on `request.state` for
the access log. 401 and 403 bodies say what is missing, never anything about other keys.

`EventSource` (the browser's SSE client) cannot send headers, so `/v1/stream` alone also
accepts the key as `?access_token=`. Nowhere else: query strings end up in proxy logs.
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
    description="the API key, for EventSource clients of /v1/stream only",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kapflow"'}

Dependency = Callable[..., Awaitable[ApiKey]]


def _check(request: Request, token: str | None, permission: str) -> ApiKey:
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
    key = keys.authenticate(token)
    refusal = key.refusal(server_now()) if key is not None else "unknown"
    if key is None or refusal is not None:
        raise ApiError(
            401,
            "unauthenticated",
            "unknown or revoked API key" if key is None else f"{refusal} API key",
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
    """As `require`, also accepting `?access_token=` (EventSource cannot set headers)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        access_token: Annotated[str | None, Depends(query_token_scheme)],
    ) -> ApiKey:
        token = credentials.credentials if credentials else access_token
        return _check(request, token, permission)

    return dependency

"""Bearer API keys over HTTP: the transport half of `kapflow.service.access`.

Every data endpoint declares the one permission it needs (`Depends(require(...))`); the
dependency finds the key, checks its role, and leaves the principal on `request.state` for
the access log. 401 and 403 bodies say what is missing, never anything about other keys.

People sign in with OpenID Connect instead (oidc.py): when `KAPFLOW_OIDC_ISSUER` is set, a
bearer token that is a JWT is verified as the provider's access token, and the person (their
subject, and the kapflow role their provider roles map to) is the principal: the access log
and the events they record name them. API keys stay for services.

`EventSource` (the browser's SSE client) cannot send headers, so `/v1/stream` alone also
accepts a stream ticket, `?ticket=` (single use, short-lived, from `POST /v1/stream/ticket`
with the key in the header: stream_access.py), and, deprecated, the key itself as
`?access_token=`. Nowhere else: query strings end up in proxy logs and browser history.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from kapflow.entrypoints.http.context import server_now, services
from kapflow.entrypoints.http.errors import ApiError
from kapflow.entrypoints.http.oidc import (
    OidcRefused,
    OidcVerifier,
    ProviderUnavailable,
    looks_like_jwt,
)
from kapflow.service.access import INSECURE_DEV_KEY, ROLES_WITH, ApiKey, KeyRing, is_person
from kapflow.service.break_glass import active_grant
from kapflow.settings import SettingsError, load_oidc_settings
from workflow.tasks import iso

# Declared for OpenAPI (the docs' "Authorize" button, schemathesis); checked below.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="an API key from `kapflow keys create` (services), or a person's OpenID "
    "Connect access token (a JWT) when KAPFLOW_OIDC_ISSUER is set",
)
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

log = logging.getLogger("kapflow.http.auth")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kapflow"'}
_BAD_TICKET = "unknown, used or expired stream ticket: POST /v1/stream/ticket for a new one"

Dependency = Callable[..., Awaitable[ApiKey]]
_UNSET = object()


def _verifier(request: Request) -> OidcVerifier | None:
    """The app's OpenID Connect verifier (KAPFLOW_OIDC_*), built on first use; None: off."""
    state = request.app.state
    verifier = getattr(state, "oidc", _UNSET)
    if verifier is _UNSET:
        try:
            settings = load_oidc_settings()
        except SettingsError as error:
            log.error("%s", error)
            raise ApiError(503, "misconfigured", "OpenID Connect settings are invalid") from None
        verifier = OidcVerifier(settings) if settings.enabled else None
        state.oidc = verifier
    return verifier  # type: ignore[return-value]


async def _person(request: Request, token: str | None, permission: str) -> ApiKey | None:
    """The signed-in person a JWT bearer token stands for; None when it is not one (an API
    key) or OpenID Connect is off. Keys are fetched off the event loop."""
    if not token or request.app.state.keys is None or not looks_like_jwt(token):
        return None
    verifier = _verifier(request)
    if verifier is None:
        return None
    try:
        person: ApiKey = await run_in_threadpool(verifier.person, token)
    except OidcRefused as refused:
        if refused.status == 403:
            raise ApiError(403, "forbidden", str(refused), permission=permission) from None
        raise ApiError(
            401,
            "unauthenticated",
            str(refused),
            headers={"WWW-Authenticate": 'Bearer realm="kapflow", error="invalid_token"'},
            permission=permission,
        ) from None
    except ProviderUnavailable as error:
        log.warning("identity provider unavailable: %s", error)
        raise ApiError(
            503, "identity_provider_unavailable", "cannot check the token now; retry"
        ) from None
    return person


def _check(
    request: Request,
    token: str | None,
    permission: str,
    ticket: bool = False,
    person: ApiKey | None = None,
) -> ApiKey:
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
    if person is not None:  # signed in with OpenID Connect (verified by `_person`)
        key = person
    elif ticket:  # it stands for the key it was issued to, if still in the ring
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
    if usage is not None and not is_person(key):
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
        token = credentials.credentials if credentials else None
        person = await _person(request, token, permission)
        return _check(request, token, permission, person=person)

    return dependency


def require_or_break_glass(permission: str) -> Dependency:
    """As `require`, and also admits a person whose role lacks `permission` but who holds a
    break-glass grant in force on the client in the path (issue 18). The grant is read from
    the client's recorded history (kapflow/service/break_glass.py), so every process agrees;
    each read under it is a WARNING here and is marked in the access log (`record_access`)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> ApiKey:
        token = credentials.credentials if credentials else None
        person = await _person(request, token, permission)
        try:
            return _check(request, token, permission, person=person)
        except ApiError as refused:
            client_id = request.path_params.get("client_id")
            # Only a person breaks the glass: a key is a system, whose role is its whole say.
            if refused.status != 403 or person is None or not client_id:
                raise
            now = server_now()
            store = services(request).store
            grant = await run_in_threadpool(active_grant, store, client_id, person.name, now)
            if grant is None:
                raise
        request.state.break_glass = grant
        log.warning(
            "break-glass read: actor=%s role=%s client=%s permission=%s grant=%s until=%s",
            person.name,
            person.role,
            client_id,
            permission,
            grant.event_id,
            iso(grant.until),
        )
        return person

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
            person = await _person(request, credentials.credentials, permission)
            return _check(request, credentials.credentials, permission, person=person)
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

"""People sign in with OpenID Connect: their access token (a JWT) is verified here.

Why a person is not an API key (SPEC §6): every act and read must name the person who did
it, and a clinic's staff are already in an identity provider that can sign them in, enforce
MFA and remove a leaver at once. kapflow checks the provider's signed access token (RFC
9068 shape, as Keycloak, Entra ID, Okta, Auth0 or panva's oidc-provider issue them): the
signature against the provider's published keys (JWKS, found through the issuer's discovery
document), the issuer, the audience (this API), the expiry; then reads the person's roles
from a configurable claim and maps them to kapflow's roles (`kapflow.service.access`).
PyJWT does the cryptography and the key cache (`PyJWKClient`); nothing here is hand-rolled.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt

from kapflow.service.access import ApiKey, person_principal, person_role
from kapflow.settings import OidcSettings

log = logging.getLogger("kapflow.http.oidc")

# The person's id as recorded in events and the access log: a short token (events.Code).
_ACTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")


class OidcRefused(Exception):
    """The token does not sign this person in; the message says why (never the token).
    `status` 401: not authenticated; 403: authenticated, but no kapflow role."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class ProviderUnavailable(Exception):
    """The identity provider's discovery document or keys cannot be fetched now."""


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (header.payload.signature, the header JSON starting `{"`); an API key
    (`kfk_…`) never is one."""
    return token.startswith("eyJ") and token.count(".") == 2


def _discover_jwks_uri(issuer: str, timeout: float) -> str:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https or loopback (settings)
        document = json.loads(response.read())
    if document.get("issuer") != issuer or not isinstance(document.get("jwks_uri"), str):
        raise ProviderUnavailable("the discovery document names another issuer or no jwks_uri")
    jwks_uri: str = document["jwks_uri"]
    return jwks_uri


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _roles(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


class OidcVerifier:
    """Verifies people's access tokens for one issuer and audience."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self.algorithms = settings.algorithms.split(",")
        self._keys: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _key_client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._keys is None:
                settings = self.settings
                assert settings.issuer is not None, "verifiers are built for an issuer"
                try:
                    url = settings.jwks_url or _discover_jwks_uri(
                        settings.issuer, settings.http_timeout_seconds
                    )
                except (OSError, ValueError) as error:
                    raise ProviderUnavailable(type(error).__name__) from error
                self._keys = jwt.PyJWKClient(
                    url,
                    cache_keys=True,
                    lifespan=max(settings.jwks_cache_seconds, 1),
                    timeout=settings.http_timeout_seconds,
                )
            return self._keys

    def _claims(self, token: str) -> dict[str, Any]:
        settings = self.settings
        try:
            key = self._key_client().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as error:
            raise ProviderUnavailable("the provider's keys cannot be fetched") from error
        except jwt.ExpiredSignatureError:
            raise OidcRefused("expired token") from None
        except jwt.InvalidIssuerError:
            raise OidcRefused("token from another issuer") from None
        except jwt.InvalidAudienceError:
            raise OidcRefused("token for another audience") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as error:
            raise OidcRefused(f"invalid token ({type(error).__name__})") from None
        return claims

    def person(self, token: str) -> ApiKey:
        """The signed-in person as a request principal, or OidcRefused / ProviderUnavailable."""
        claims = self._claims(token)
        actor = claims.get(self.settings.actor_claim)
        if not isinstance(actor, str) or not _ACTOR.match(actor):
            raise OidcRefused(
                f"the `{self.settings.actor_claim}` claim is not a short token (letters, digits,"
                " ._:-): set KAPFLOW_OIDC_ACTOR_CLAIM to a claim that is"
            )
        roles = _roles(_claim(claims, self.settings.roles_claim))
        role = person_role(roles, self.settings.role_names)
        if role is None:
            raise OidcRefused(
                f"`{actor}` holds no kapflow role in the `{self.settings.roles_claim}` claim",
                status=403,
            )
        until = claims["exp"] + self.settings.leeway_seconds  # as jwt.decode judged it
        return person_principal(actor, role, datetime.fromtimestamp(until, UTC))


def provider_origin(issuer: str) -> str:
    """The origin (scheme://host[:port]) the dashboard's page may connect to for sign-in."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}"


def dashboard_sign_in(settings: OidcSettings) -> dict[str, str] | None:
    """What the dashboard's page needs to sign a person in with the authorization-code flow
    and PKCE (a public client: no secret, so nothing here is confidential); None: off.

    The browser reads the authorization and token endpoints from the issuer's discovery
    document itself, and asks for a token for `audience` (the resource indicator, RFC 8707),
    which is what `OidcVerifier` then requires."""
    if not settings.browser_sign_in or settings.issuer is None or settings.client_id is None:
        return None
    return {
        "issuer": settings.issuer,
        "client_id": settings.client_id,
        "redirect_path": settings.redirect_path,
        "scope": settings.scopes,
        "resource": settings.audience or "",
        "provider": settings.provider_name or urlsplit(settings.issuer).hostname or "provider",
    }

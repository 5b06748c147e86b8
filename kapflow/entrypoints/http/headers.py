"""Security headers on every response (OWASP Secure Headers; HTTP Headers Cheat Sheet).

- `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` everywhere: a
  browser never guesses a type other than the one sent, and a URL (which holds a client
  id, or a stream's `access_token`) never travels to another site as a referrer.
- `Cache-Control: no-store` on clinical data (`/v1/*` with the exports and the stream,
  `/fhir/*`, the dashboard's pages): no browser, proxy or disk cache keeps a copy of it
  after the screen is closed. It replaces a route's own `no-cache`.
- `Strict-Transport-Security` when the request came over TLS (`serve --tls-cert`, or a
  proxy uvicorn trusts that says `X-Forwarded-Proto: https`): browsers then refuse plain
  HTTP to this host.
- A `Content-Security-Policy` that allows nothing, on every response that does not set its
  own: a JSON body opened in a browser runs nothing and cannot be framed. The HTML pages
  (dashboard, client page, protocol, /docs) each set the policy they need.

Pure ASGI (no BaseHTTPMiddleware), so streamed responses pass through unbuffered.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CLINICAL_PREFIXES = ("/v1/", "/fhir/", "/dashboard/clients/")
_CLINICAL_PAGES = frozenset({"/dashboard", "/dashboard/"})
# One year; the host only (kapflow does not know the domain it is served under).
HSTS = "max-age=31536000"
DEFAULT_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def is_clinical(path: str) -> bool:
    return path in _CLINICAL_PAGES or path.startswith(_CLINICAL_PREFIXES)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = is_clinical(scope["path"])
        over_tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = DEFAULT_CSP
                if no_store:
                    headers["Cache-Control"] = "no-store"
                if over_tls:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)

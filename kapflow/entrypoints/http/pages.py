"""Probes, metrics, the operations dashboard and the API docs.

Nothing here is fetched from the internet: the dashboard is served from the package, and
/docs uses the Swagger UI files shipped in the `fastapi-offline` wheel (no CDN).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kapflow.entrypoints.http.auth import require
from kapflow.entrypoints.http.context import services
from kapflow.entrypoints.http.errors import errors_for
from kapflow.entrypoints.http.oidc import dashboard_sign_in, provider_origin
from kapflow.entrypoints.http.schemas import HealthOut, ReadyOut
from kapflow.service.access import Permission
from kapflow.settings import (
    OidcSettings,
    SettingsError,
    load_clinic_settings,
    load_oidc_settings,
)

router = APIRouter()
log = logging.getLogger("kapflow.http.pages")

STATIC = resources.files("kapflow.entrypoints.http") / "static"
_DASHBOARD_FILES = {
    "common.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "client.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page's own origin only: no inline script, no external anything; when people sign in
# with OpenID Connect, the page may also call the provider (its discovery document and token
# endpoint: the code exchange is the browser's, a public client's), nothing else.
_DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src {connect}; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _swagger_static() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@router.get(
    "/healthz",
    tags=["probes"],
    summary="Liveness: the process is up (no database check)",
    response_model=HealthOut,
)
async def healthz(request: Request) -> JSONResponse:
    insecure = request.app.state.keys is None
    return JSONResponse({"status": "ok", "insecure_dev": insecure})


@router.get(
    "/readyz",
    tags=["probes"],
    summary="Readiness: the database answers and the writer is running",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    ctx = getattr(request.app.state, "services", None)
    if ctx is None:
        return JSONResponse({"status": "starting", "database": "unknown", "writer": "unknown"}, 503)
    try:
        await asyncio.wait_for(asyncio.to_thread(ctx.store.outbox_after, 2**62, 1), 5.0)
        database = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        database = f"unavailable ({type(error).__name__})"
    try:
        # Audited reads are refused while their access log cannot be written: not ready.
        await asyncio.wait_for(asyncio.to_thread(ctx.access_log.ping), 5.0)
        access_log = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        access_log = f"unavailable ({type(error).__name__})"
    writer = "ok" if ctx.writer.running else "stopped"
    ready = database == "ok" and access_log == "ok" and writer == "ok"
    return JSONResponse(
        {
            "status": "ready" if ready else "not_ready",
            "database": database,
            "access_log": access_log,
            "writer": writer,
        },
        200 if ready else 503,
    )


@router.get(
    "/metrics",
    tags=["probes"],
    summary="Prometheus metrics (text exposition format)",
    response_model=None,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **errors_for(401, 403, 503),
    },
)
def metrics(
    request: Request, _: Annotated[object, Depends(require(Permission.METRICS))]
) -> Response:
    registry = services(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _sign_in(request: Request) -> dict[str, str] | None:
    """The dashboard's OpenID Connect sign-in (KAPFLOW_OIDC_*), read once per app; None when
    off, under --insecure-dev (no one signs in), or misconfigured (logged; API keys stay)."""
    state = request.app.state
    if not hasattr(state, "dashboard_sign_in"):
        try:
            settings: OidcSettings | None = load_oidc_settings()
        except SettingsError as error:
            log.error("dashboard sign-in off: %s", error)
            settings = None
        on = settings is not None and state.keys is not None
        state.dashboard_sign_in = dashboard_sign_in(settings) if on and settings else None
    found: dict[str, str] | None = state.dashboard_sign_in
    return found


def _page(request: Request, name: str) -> Response:
    sign_in = _sign_in(request)
    connect = "'self'" if sign_in is None else f"'self' {provider_origin(sign_in['issuer'])}"
    return Response(
        (STATIC / name).read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": _DASHBOARD_CSP.format(connect=connect),
            "Cache-Control": "no-cache",
        },
    )


@router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request) -> Response:
    return _page(request, "dashboard.html")


@router.get("/dashboard/clients/{client_id}", include_in_schema=False)
async def client_page(request: Request, client_id: str) -> Response:
    # The page reads its client id from the URL and asks the API (with the key) for data:
    # the HTML itself holds nothing about the client.
    return _page(request, "client.html")


@router.get("/dashboard/sign-in.json", include_in_schema=False)
async def sign_in_options(request: Request) -> JSONResponse:
    # Public, as a provider's discovery document is: an issuer, a public client id, a path;
    # and the clinic's time zone, in which the pages show every time.
    return JSONResponse(
        {"oidc": _sign_in(request), "clinic_time_zone": _clinic_time_zone(request)},
        headers={"Cache-Control": "no-cache"},
    )


def _clinic_time_zone(request: Request) -> str:
    """KAPFLOW_CLINIC_TZ, read once per app; UTC when misconfigured (logged)."""
    state = request.app.state
    if not hasattr(state, "clinic_time_zone"):
        try:
            state.clinic_time_zone = load_clinic_settings().tz
        except SettingsError as error:
            log.error("clinic time zone: %s; showing UTC", error)
            state.clinic_time_zone = "UTC"
    zone: str = state.clinic_time_zone
    return zone


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    media = _DASHBOARD_FILES.get(name)
    if media is None:
        return JSONResponse({"error": "not_found", "detail": "no such file"}, 404)
    return Response(
        (STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"}
    )


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    if _swagger_static() is None:
        return HTMLResponse(
            "<!doctype html><title>kapflow API</title><p>Swagger UI is not installed "
            "(pip install fastapi-offline). The OpenAPI document is at "
            "<a href='/openapi.json'>/openapi.json</a>.</p>"
        )
    page, policy = _docs_page()
    return HTMLResponse(page, headers={"Content-Security-Policy": policy})


@cache
def _docs_page() -> tuple[bytes, str]:
    """Swagger UI's page and its policy: its files from this origin, its one inline script
    (the start-up call FastAPI writes into the page, the same bytes every time) allowed by
    its hash, its API calls to this origin only (so nothing reaches the internet either)."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="kapflow API",
        swagger_js_url="/docs/static/swagger-ui-bundle.js",
        swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon.png",
    ).body
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in re.findall(rb"<script>(.*?)</script>", bytes(page), re.DOTALL)
    )
    policy = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return bytes(page), policy


@router.get("/docs/static/{name}", include_in_schema=False)
async def docs_static(name: str) -> Response:
    folder = _swagger_static()
    allowed = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
    if folder is None or name not in allowed:
        return JSONResponse({"error": "not_found", "detail": "no such file"}, 404)
    return FileResponse(folder / name, headers={"Cache-Control": "public, max-age=86400"})


@router.get("/", include_in_schema=False)
async def root() -> Response:
    return JSONResponse(
        {
            "service": "kapflow",
            "dashboard": "/dashboard",
            "docs": "/docs",
            "openapi": "/openapi.json",
        }
    )

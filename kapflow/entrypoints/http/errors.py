"""Error bodies: one JSON shape for every failure, and nothing from the request echoed back.

Why a shape of our own rather than FastAPI's defaults: publishers and dashboards act on the
`error` code, people read `detail`; and FastAPI's validation errors include the offending
input, which for this service could be part of a clinical payload (SPEC §3: minimum
necessary; README privacy note).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kapflow.service.writer import WriterClosed, WriterOverloaded
from kapflow.store.base import StoreError

log = logging.getLogger("kapflow.http")


class ErrorBody(BaseModel):
    """`error`: a stable machine-readable code; `detail`: what is wrong, for a person."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers
        self.extra = extra


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status, headers=headers)


def _error_responses() -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request (e.g. body is not JSON, bad Last-Event-ID)",
        401: "No valid API key: send `Authorization: Bearer <key>`",
        403: "The key's role (or publisher prefixes) does not allow this",
        404: "Not found",
        409: "Conflicts with what is recorded (e.g. the task is already closed)",
        413: "Body too large or too many events",
        415: "Body is not JSON",
        422: "A parameter or the body's top-level shape is invalid",
        503: "Database or writer unavailable; retry later",
    }
    return {code: {"model": ErrorBody, "description": text} for code, text in described.items()}


ERROR_RESPONSES = _error_responses()


def errors_for(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("query", "path", "header", "body")]
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(
            error.status, error.error, error.detail, headers=error.headers, **error.extra
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field(item.get("loc", ())), "problem": item.get("msg", "invalid")}
            for item in error.errors()
        ]
        names = ", ".join(p["field"] for p in problems if p["field"]) or "request"
        return error_response(422, "invalid_parameter", f"invalid: {names}", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = error.detail if isinstance(error.detail, str) else "request failed"
        return error_response(
            error.status_code,
            codes.get(error.status_code, "http_error"),
            detail,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, error: StoreError) -> JSONResponse:
        log.error(  # type only: a database message could quote a value
            "database error on %s %s: %s", request.method, _route(request), type(error).__name__
        )
        return error_response(
            503, "database_unavailable", "the database is unavailable; retry later"
        )

    # Innermost of the middlewares, so the request log and the metrics count the 500.
    app.add_middleware(InternalErrorGuard)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "?"))


class InternalErrorGuard:
    """The last catch of an unexpected exception: a 500 body and one log line naming the
    error class, nothing else. Why not an `exception_handler(Exception)`: Starlette runs
    that one and then re-raises, so the server logged the whole traceback, whose messages
    can quote request values (a client id, a time, a row)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as error:  # noqa: BLE001 - the point: nothing escapes to the server
            route = getattr(scope.get("route"), "path", "?")
            log.error("internal error on %s %s: %s", scope["method"], route, type(error).__name__)
            if not started:  # else the server ends the half-sent response: the client sees it
                response = error_response(
                    500, "internal_error", "internal error; the request was logged"
                )
                await response(scope, receive, send)


@contextmanager
def recording_refusals(
    log: logging.Logger, what: str, detail: str = "nothing was recorded; retry"
) -> Iterator[None]:
    """The single writer's refusals as the API's 503s, one translation for every route that
    records through it: queue full (retry after 1 s), shutting down, or the store unwell
    (logged by error class only: a database message could quote a value)."""
    try:
        yield
    except WriterOverloaded:
        raise ApiError(
            503, "overloaded", "too many events queued; retry", headers={"Retry-After": "1"}
        ) from None
    except WriterClosed:
        raise ApiError(503, "shutting_down", "the service is stopping; retry") from None
    except StoreError as error:
        log.error("%s failed: %s", what, type(error).__name__)
        raise ApiError(503, "database_unavailable", detail) from None

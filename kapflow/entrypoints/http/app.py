"""The FastAPI application of `kapflow serve`: one place where the HTTP runtime is assembled.

Bootstrap (Cosmic Python's single composition point): open the store and the access log
from the database URL, start the single writer over an IngestService, start the outbox
feed, wire metrics, then mount the routers. Routers hold no state of their own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kapflow.entrypoints.http import audit, events, fhir, live, pages, reads
from kapflow.entrypoints.http.context import HttpSettings, Services, server_now
from kapflow.entrypoints.http.errors import install_error_handlers
from kapflow.entrypoints.http.metrics import HttpMetricsMiddleware, ServiceMetrics
from kapflow.entrypoints.http.readmodels import PathwayFunnel
from kapflow.entrypoints.http.stream import OutboxFeed, state_change_of
from kapflow.service.clock import fire_deadlines
from kapflow.service.ingest import IngestService
from kapflow.service.writer import SingleWriter
from kapflow.store import open_store
from kapflow.store.access_log import open_access_log
from workflow.states.pathway import PATHWAY_VERSION

log = logging.getLogger("kapflow.http")
request_log = logging.getLogger("kapflow.http.requests")

INSECURE_HEADER = (b"x-kapflow-insecure-dev", b"true")

DESCRIPTION = """
Event-driven care workflow for the Ketamine-Assisted Psychotherapy programme.

Authenticate with `Authorization: Bearer <API key>` (`kapflow keys create`). Roles:
`publisher` (POST events of its own type prefixes), `dashboard` (states, counts, tasks,
stream, FHIR tasks), `auditor` (all reads, incl. histories, replays, exports, verify,
rejections, access log), `admin` (everything).

`POST /v1/events` answers 200 with one outcome per event (accepted, duplicate, rejected,
parked) whenever every event got one; see the operation for the other statuses.
"""


class RequestLogMiddleware:
    """One log line per request (method, route template, status, ms, key name), never the
    raw path or query string (they hold client ids and, on /v1/stream, a key); and under
    --insecure-dev, the `X-Kapflow-Insecure-Dev: true` header on every response."""

    def __init__(self, app: ASGIApp, insecure_dev: bool) -> None:
        self.app = app
        self.insecure_dev = insecure_dev

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.insecure_dev:
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], INSECURE_HEADER]
                if request_log.isEnabledFor(logging.INFO):
                    principal = scope.get("state", {}).get("principal")
                    request_log.info(
                        "%s %s %d %.1fms key=%s",
                        scope["method"],
                        getattr(scope.get("route"), "path", "-"),
                        message["status"],
                        (time.perf_counter() - started) * 1000,
                        getattr(principal, "name", "-"),
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _build_services(settings: HttpSettings) -> Services:
    store = open_store(settings.db)
    try:
        access_log = open_access_log(settings.db)
    except Exception:
        store.close()
        raise
    writer = SingleWriter(IngestService(store), max_queue_events=max(100_000, settings.max_events))
    feed_reader = ThreadPoolExecutor(1, thread_name_prefix="kapflow-feed")
    feed = OutboxFeed(
        store, feed_reader, poll_interval=settings.poll_interval, buffer_rows=settings.buffer_rows
    )
    metrics = ServiceMetrics(store, server_now)
    funnel = PathwayFunnel()
    writer.add_listener(metrics.on_commit)
    writer.add_listener(lambda _commit: feed.wake())
    feed.observe(lambda row: funnel.mark(state_change_of(row)))
    return Services(
        settings=settings,
        store=store,
        writer=writer,
        feed=feed,
        access_log=access_log,
        metrics=metrics,
        funnel=funnel,
        background=ThreadPoolExecutor(2, thread_name_prefix="kapflow-background"),
        feed_reader=feed_reader,
    )


def _load_funnel(ctx: Services) -> None:
    try:
        ctx.funnel.load(ctx.store)
    except Exception as error:  # noqa: BLE001 - stats still answer, marked incomplete
        log.error("funnel history pass failed: %s", type(error).__name__)


async def run_clock(ctx: Services) -> None:
    """kapflow's clock in the embedded runtime: deadlines go through the single writer,
    in order with every other write; stale parked events are expired."""
    interval = ctx.settings.clock_interval
    if interval <= 0:
        return
    service = ctx.writer.service
    while True:
        await asyncio.sleep(interval)
        now = server_now()
        try:
            fired = await asyncio.to_thread(
                fire_deadlines,
                lambda events: ctx.writer.submit(events).result(),
                ctx.store,
                service.policy,
                now,
            )
            expired = await asyncio.to_thread(service.expire_parked, now)
        except Exception as error:  # noqa: BLE001 - the clock must outlive a bad tick
            log.warning("clock tick failed (%s); retrying next tick", type(error).__name__)
            continue
        if expired:
            ctx.feed.wake()
        accepted = sum(result.outcome == "accepted" for result in fired)
        if accepted or expired:
            log.info(
                "clock: %d deadlines recorded, %d parked events expired", accepted, len(expired)
            )


async def run_kafka_relay(ctx: Services) -> None:
    """`serve --kafka`: publish the outbox to Kafka too, with the worker's relay."""
    from kapflow.publishers.kafka import KafkaOutboxRelay
    from kapflow.settings import load_kafka_settings

    relay = KafkaOutboxRelay(
        ctx.store, load_kafka_settings(kafka=ctx.settings.kafka, db=ctx.settings.db)
    )
    loop = asyncio.get_running_loop()

    def wake_relay(_commit: object) -> None:
        loop.call_soon_threadsafe(relay.wake)

    ctx.writer.add_listener(wake_relay)
    stop = asyncio.Event()
    while True:
        try:
            await relay.start()
            break
        except Exception as error:  # noqa: BLE001 - the broker may come up later
            log.warning("Kafka relay cannot start (%s); retrying", type(error).__name__)
            await asyncio.sleep(5)
    try:
        await relay.run(stop)
    finally:
        await relay.stop()


def create_app(settings: HttpSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = _build_services(settings)
        ctx.writer.start()
        await ctx.feed.start()
        # After the feed has fixed its starting point: see readmodels (no change is lost).
        ctx.background.submit(_load_funnel, ctx)
        app.state.services = ctx
        runners = [asyncio.create_task(run_clock(ctx), name="kapflow-clock")]
        if settings.kafka:
            runners.append(asyncio.create_task(run_kafka_relay(ctx), name="kapflow-relay"))
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise show up as latency spikes under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            app.state.services = None
            await ctx.feed.stop()
            ctx.writer.close()
            ctx.background.shutdown(wait=False, cancel_futures=True)
            ctx.feed_reader.shutdown(wait=False, cancel_futures=True)
            ctx.access_log.close()
            ctx.store.close()

    app = FastAPI(
        title="kapflow",
        version=PATHWAY_VERSION,
        summary="KAP care-workflow service: events in, states and tasks out",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.keys = settings.keys
    app.state.services = None
    app.state.settings = settings
    install_error_handlers(app)
    for module in (events, reads, audit, live, fhir, pages):
        app.include_router(module.router)
    app.add_middleware(
        HttpMetricsMiddleware,
        metrics=lambda: _metrics_of(app),
    )
    app.add_middleware(RequestLogMiddleware, insecure_dev=settings.insecure_dev)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            limits = (
                f" This server: at most {settings.max_events} events and"
                f" {settings.max_body_bytes} bytes per request (413 beyond)."
            )
            schema["paths"]["/v1/events"]["post"]["description"] = (
                schema["paths"]["/v1/events"]["post"].get("description", "") + limits
            ).strip()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _metrics_of(app: FastAPI) -> ServiceMetrics | None:
    ctx: Services | None = app.state.services
    return ctx.metrics if ctx is not None else None

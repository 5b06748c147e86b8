"""The FastAPI application of `kapflow serve`: one place where the HTTP runtime is assembled.

The runtime comes from kapflow/bootstrap.py (store, access log, the single writer over the
service layer, the care clock); this module adds what only HTTP needs: the outbox feed for
live streams, metrics, the routers. Routers hold no state of their own and turn each
request into a service-layer command or a read.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_fixed

from kapflow.bootstrap import bootstrap
from kapflow.entrypoints.http import (
    audit,
    break_glass,
    events,
    fhir,
    live,
    pages,
    protocol_page,
    reads,
    work_queue,
)
from kapflow.entrypoints.http.context import HttpSettings, Services, server_now
from kapflow.entrypoints.http.errors import install_error_handlers
from kapflow.entrypoints.http.headers import SecurityHeadersMiddleware
from kapflow.entrypoints.http.keys import key_maintenance
from kapflow.entrypoints.http.metrics import HttpMetricsMiddleware, ServiceMetrics
from kapflow.entrypoints.http.readmodels import PathwayFunnel
from kapflow.entrypoints.http.stream import OutboxFeed, state_change_of
from kapflow.entrypoints.http.stream_access import StreamAccess
from kapflow.entrypoints.http.stream_schema import stream_components
from kapflow.service.clock import TickReport
from kapflow.service.outbox import PruneSchedule
from kapflow.settings import StreamSettings, load_stream_settings
from workflow.states.pathway import PATHWAY_VERSION

log = logging.getLogger("kapflow.http")
request_log = logging.getLogger("kapflow.http.requests")

INSECURE_HEADER = (b"x-kapflow-insecure-dev", b"true")

DESCRIPTION = """
Event-driven care workflow for the Ketamine-Assisted Psychotherapy programme.

Authenticate with `Authorization: Bearer <API key>` (`kapflow keys create`). Roles:
`publisher` (POST events of its own type prefixes), `dashboard` (states, counts, tasks,
stream, FHIR tasks), `operations` (the same, and acts on tasks: complete, claim, cancel,
reassign), `auditor` (all reads, incl. histories, replays, exports, verify,
rejections, access log), `admin` (everything). In an emergency a dashboard-role person may
break the glass on one client (`POST /v1/clients/{id}/break-glass`): recorded and reviewed,
it lets them read that client's history and replay for a few minutes.

`POST /v1/events` answers 200 with one outcome per event (accepted, deviation, duplicate,
rejected, parked) whenever every event got one; see the operation for the other statuses.
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


def _build_services(settings: HttpSettings, streams: StreamSettings) -> Services:
    runtime = bootstrap(
        settings.db, access_log=True, writer_queue_events=max(100_000, settings.max_events)
    )
    store, writer = runtime.store, runtime.writer
    assert writer is not None and runtime.access_log is not None, "asked for both"
    feed_reader = ThreadPoolExecutor(1, thread_name_prefix="kapflow-feed")
    feed = OutboxFeed(
        store,
        feed_reader,
        poll_interval=settings.poll_interval,
        buffer_rows=settings.buffer_rows,
        backlog_readers=streams.backlog_readers,
    )
    metrics = ServiceMetrics(store, server_now)
    funnel = PathwayFunnel()
    writer.add_listener(metrics.on_commit)
    writer.add_listener(lambda _commit: feed.wake())
    feed.observe(lambda row: funnel.mark(state_change_of(row)))
    feed.observe(metrics.on_feed_row)
    return Services(
        settings=settings,
        runtime=runtime,
        feed=feed,
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
    """kapflow's clock in the embedded runtime: deadlines and the expiry of stale parked
    events go through the single writer, in order with every other write, so metrics and
    live streams see them."""
    interval = ctx.settings.clock_interval
    if interval <= 0:
        return
    clock = ctx.runtime.clock()
    prune = PruneSchedule(ctx.settings.outbox_retention)  # published rows, once an hour

    async def tick() -> TickReport:
        now = server_now()
        # Upkeep too goes through the single writer: nothing else writes the database.
        await asyncio.wrap_future(ctx.writer.maintain(partial(prune.run_if_due, now=now)))
        return await asyncio.to_thread(clock.tick, now)

    ticks = AsyncRetrying(
        retry=retry_if_exception_type(Exception),  # the clock must outlive a bad tick
        # While the store is away, retry sooner than a full interval (bounded: at most
        # every second), so deadlines resume within about a second of the store's return.
        wait=wait_fixed(min(interval, 1.0)),
        before_sleep=_log_failed_tick,
        reraise=True,  # a cancellation (shutdown) ends the clock
    )
    while True:
        await asyncio.sleep(interval)
        report: TickReport = await ticks(tick)
        failures = ticks.statistics.get("attempt_number", 1) - 1
        if failures:
            log.warning("clock resumed after %d failed ticks", failures)
        accepted = sum(result.outcome == "accepted" for result in report.fired)
        if accepted or report.expired_parked:
            log.info(
                "clock: %d deadlines recorded, %d parked events expired",
                accepted,
                len(report.expired_parked),
            )


def _log_failed_tick(state: RetryCallState) -> None:
    failures = state.attempt_number
    if failures == 1 or failures % 60 == 0:  # one line a minute while it lasts
        error = state.outcome.exception() if state.outcome else None
        log.warning("clock tick failed (%s); retry %d", type(error).__name__, failures)


def _log_relay_not_started(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("Kafka relay cannot start (%s); retrying", type(error).__name__)


async def run_kafka_relay(ctx: Services) -> None:
    """`serve --kafka`: publish the outbox to Kafka too, with the worker's relay."""
    from kapflow.publishers.kafka import KafkaOutboxRelay
    from kapflow.settings import load_kafka_settings

    relay = KafkaOutboxRelay(
        ctx.store,
        load_kafka_settings(kafka=ctx.settings.kafka, db=ctx.settings.db),
        ctx.runtime.relay_lease(),
    )
    loop = asyncio.get_running_loop()

    def wake_relay(_commit: object) -> None:
        loop.call_soon_threadsafe(relay.wake)

    ctx.writer.add_listener(wake_relay)
    stop = asyncio.Event()
    starts = AsyncRetrying(
        retry=retry_if_exception_type(Exception),  # the broker may come up later
        wait=wait_fixed(5),
        before_sleep=_log_relay_not_started,
        reraise=True,  # a cancellation (shutdown) ends the wait
    )
    await starts(relay.start)
    try:
        await relay.run(stop)
    finally:
        await relay.stop()


def create_app(settings: HttpSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = _build_services(settings, app.state.streams.settings)
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
            async with key_maintenance(app, settings):
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
            ctx.runtime.close()

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
    # Stream tickets, the per-key cap, the end of streams whose key is withdrawn.
    app.state.streams = StreamAccess.build(
        load_stream_settings(), lambda: app.state.keys, server_now
    )
    app.state.services = None
    app.state.settings = settings
    install_error_handlers(app)
    for module in (
        events,
        reads,
        work_queue,
        break_glass,
        audit,
        live,
        fhir,
        pages,
        protocol_page,
    ):
        app.include_router(module.router)
    app.add_middleware(
        HttpMetricsMiddleware,
        metrics=lambda: _metrics_of(app),
    )
    app.add_middleware(RequestLogMiddleware, insecure_dev=settings.insecure_dev)
    app.add_middleware(SecurityHeadersMiddleware)

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
            # What /v1/stream's event schema refers to (the messages it carries).
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in stream_components().items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _metrics_of(app: FastAPI) -> ServiceMetrics | None:
    ctx: Services | None = app.state.services
    return ctx.metrics if ctx is not None else None

"""What every route needs, built once per app: settings, store, writer, feed, access log.

Routes get it with `services(request)`; nothing is a module-level global, so tests can run
several apps (each with its own database) in one process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fastapi import Request

from kapflow.bootstrap import Runtime
from kapflow.entrypoints.http.errors import ApiError
from kapflow.entrypoints.http.metrics import ServiceMetrics
from kapflow.entrypoints.http.readmodels import PathwayFunnel
from kapflow.entrypoints.http.stream import OutboxFeed
from kapflow.service.access import ApiKey, KeyRing
from kapflow.service.outbox import OUTBOX_RETENTION
from kapflow.service.unit_of_work import utc_now
from kapflow.service.writer import SingleWriter
from kapflow.store.access_log import AccessLog, AccessRecord
from kapflow.store.base import EventStore
from workflow.tasks import iso

MiB = 1024 * 1024


# The server clock, for read-side questions only (overdue, access-log time); the engine
# never reads it (SPEC §6).
server_now = utc_now


@dataclass(slots=True)
class HttpSettings:
    db: str
    keys: KeyRing | None  # None: --insecure-dev (no keys, every caller is admin)
    max_body_bytes: int = MiB
    max_events: int = 1000
    poll_interval: float = 1.0
    keepalive: float = 15.0
    stream_max_seconds: float = 0.0  # end each /v1/stream response after this long; 0: never
    buffer_rows: int = 5000
    clock_interval: float = 0.0  # seconds between clock ticks; 0: off (`serve` turns it on)
    kafka: str | None = None  # also publish the outbox to Kafka at HOST:PORT
    keys_file: str | None = None  # reloaded on SIGHUP and when it changes
    keys_poll_interval: float = 1.0  # seconds between checks of the keys file
    outbox_retention: timedelta = OUTBOX_RETENTION  # published rows kept this long

    @property
    def insecure_dev(self) -> bool:
        return self.keys is None


@dataclass(slots=True)
class Services:
    settings: HttpSettings
    runtime: Runtime  # kapflow/bootstrap.py: store, service layer, single writer, access log
    feed: OutboxFeed
    metrics: ServiceMetrics
    funnel: PathwayFunnel
    # Long reads (export, verify, the funnel's startup pass) run here: a few long-lived
    # threads, so each SQLite cursor stays on the thread (connection) that opened it.
    background: ThreadPoolExecutor
    feed_reader: ThreadPoolExecutor
    started_at: datetime = field(default_factory=server_now)

    # The runtime's parts the routes use, by name.
    @property
    def store(self) -> EventStore:
        return self.runtime.store

    @property
    def writer(self) -> SingleWriter:
        writer = self.runtime.writer
        assert writer is not None, "serve's runtime is built with its single writer"
        return writer

    @property
    def access_log(self) -> AccessLog:
        access_log = self.runtime.access_log
        assert access_log is not None, "serve's runtime is built with its access log"
        return access_log


def services(request: Request) -> Services:
    found: Services | None = getattr(request.app.state, "services", None)
    if found is None:
        raise ApiError(503, "starting", "the service is starting; retry shortly")
    return found


def principal(request: Request) -> ApiKey:
    key: ApiKey = request.state.principal
    return key


def record_access(
    request: Request, action: str, client_id: str | None = None, detail: str | None = None
) -> None:
    """Record a sensitive read BEFORE serving it: if it cannot be recorded, it is not served
    (a StoreError here becomes a 503). A read admitted by a break-glass grant (issue 18) is
    logged under role `break_glass`, its detail naming the person's own role and the grant."""
    who = principal(request)
    role = who.role
    grant = getattr(request.state, "break_glass", None)
    if grant is not None:
        role = "break_glass"
        marks = f"role={who.role},grant={grant.event_id},until={iso(grant.until)}"
        detail = f"{marks},{detail}" if detail else marks
    services(request).access_log.record(
        AccessRecord(iso(server_now()), who.name, role, action, client_id, detail)
    )

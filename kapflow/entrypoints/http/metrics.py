"""Prometheus metrics: what happened (counters, latencies) and what is (gauges on scrape).

Counters and histograms are fed by the single writer's commit listener, the outbox feed
(deviations by rule) and the HTTP middleware. Gauges (clients by state, open/overdue tasks
by owner, parked, rejections) are read from the store when Prometheus scrapes, so they are
never stale and cost nothing between scrapes. Labels are bounded: event types outside the
catalogue count as `unknown`, HTTP routes are the route templates, never raw paths (a path
holds a client id; a path that matches no route is `unmatched`), methods outside the
standard ones count as `other`, statuses are the few the service answers.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events import EVENT_TYPES
from kapflow.entrypoints.http.stream import FeedRow
from kapflow.service.identity import ID_REUSED
from kapflow.service.outbox import DEVIATIONS
from kapflow.service.writer import Commit
from kapflow.store.base import EventStore
from workflow.states.pathway import CLIENT_STATES
from workflow.tasks import Owner, iso

OWNERS = (Owner.SCHEDULER, Owner.CLINICIAN, Owner.BILLING, Owner.PRESCRIBER_LIAISON, Owner.CLIENT)
_KNOWN_TYPES = frozenset(EVENT_TYPES)
# The methods a label may name; any other (a client may send any token) counts as `other`,
# so made-up methods cannot grow /metrics without limit.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreGauges(Collector):
    """Gauges computed from the store at scrape time."""

    def __init__(self, store: EventStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        clients = GaugeMetricFamily("kapflow_clients", "Clients by current state", labels=["state"])
        counts = self.store.count_by_state()
        for state in CLIENT_STATES:
            clients.add_metric([state], counts.get(state, 0))
        yield clients
        # Counted in the open-task index: no task is loaded, whatever the store's size.
        counts_by_owner = self.store.open_task_counts(iso(self.clock()))
        open_tasks = GaugeMetricFamily(
            "kapflow_open_tasks", "Open follow-up tasks by owner role", labels=["owner"]
        )
        overdue = GaugeMetricFamily(
            "kapflow_overdue_tasks",
            "Open tasks past their due time (server clock) by owner role",
            labels=["owner"],
        )
        for owner in OWNERS:
            total, late = counts_by_owner.get(owner, (0, 0))
            open_tasks.add_metric([owner], total)
            overdue.add_metric([owner], late)
        yield open_tasks
        yield overdue
        totals = self.store.stats()
        yield GaugeMetricFamily(
            "kapflow_parked_events", "Events held as premature", value=totals.get("parked", 0)
        )
        yield GaugeMetricFamily(
            "kapflow_rejected_records",
            "Dead letters recorded (all time)",
            value=totals.get("rejections", 0),
        )
        yield GaugeMetricFamily(
            "kapflow_history_entries",
            "Accepted events recorded (all time)",
            value=totals.get("history", 0),
        )


class ServiceMetrics:
    """One registry per app, so several apps (tests) never share or collide on metrics."""

    def __init__(self, store: EventStore, clock: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "kapflow_events",
            "Events processed, by outcome and type",
            ["outcome", "type"],
            registry=r,
        )
        # Counted from what was committed (the outbox feed), so a deviation recorded when a
        # parked event is retried or expired by the clock, or by another process on the same
        # database, counts too. Once per rule broken: a dosing without a chaperone and before
        # integration adds one to R7 and one to R8; a late fact that reveals a break counts
        # the rules it adds. Rule codes come from the engine, never from input: bounded.
        self.deviations = Counter(
            "kapflow_deviations",
            "Protocol deviations recorded since start, by rule broken",
            ["rule"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kapflow_ingest_request_seconds",
            "Ingest latency of one publish request: queued, processed and committed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "kapflow_ingest_transaction_seconds",
            "Duration of one ingest transaction (validation, engine, commit)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.transactions = Counter(
            "kapflow_ingest_transactions", "Ingest transactions committed", registry=r
        )
        self.requests = Counter(
            "kapflow_ingest_requests", "Publish requests committed (group commit)", registry=r
        )
        self.group_requests = Histogram(
            "kapflow_ingest_group_requests",
            "Publish requests sharing one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        # Events refused for their identity (SPEC §3): `ID_REUSED` (an id seen again with
        # other content, from the committed outcomes) and `SOURCE_NOT_ALLOWED` (a publisher
        # key posting under a source it does not name; 403, nothing recorded). Either may
        # be a publisher's bug or an attempt to silence another system's events: alert on
        # any. Two reason codes, both kapflow's own: bounded.
        self.identity_refusals = Counter(
            "kapflow_event_identity_refusals",
            "Events refused for their identity, by reason (ID_REUSED, SOURCE_NOT_ALLOWED)",
            ["reason"],
            registry=r,
        )
        self.http_requests = Counter(
            "kapflow_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "kapflow_http_request_seconds",
            "HTTP request duration until the response starts",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_clients = Counter(
            "kapflow_stream_connections", "Server-Sent Events connections opened", registry=r
        )
        r.register(StoreGauges(store, clock))

    def on_commit(self, commit: Commit) -> None:
        tally: Tally[tuple[str, str]] = Tally(
            (result.outcome, result.type if result.type in _KNOWN_TYPES else "unknown")
            for result in commit.results
        )
        for (outcome, type_), count in tally.items():
            self.events.labels(outcome, type_).inc(count)
        reused = sum(
            1 for result in commit.results if any(r.code == ID_REUSED for r in result.reasons)
        )
        if reused:
            self.identity_refusals.labels(ID_REUSED).inc(reused)
        for wait in commit.waits:
            self.request_seconds.observe(wait)
        self.transaction_seconds.observe(commit.seconds)
        self.transactions.inc()
        self.requests.inc(commit.requests)
        self.group_requests.observe(commit.requests)

    def on_feed_row(self, row: FeedRow) -> None:
        for message in row.messages:
            if message.topic == DEVIATIONS:
                before = set(message.payload["previous_rules"])
                for rule in message.payload["rules"]:
                    if rule not in before:
                        self.deviations.labels(rule).inc()


class HttpMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts requests by route template and times them
    until the response starts (a stream is counted when it opens, not when it ends)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ServiceMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics = self.metrics()
                if metrics is not None:
                    route = getattr(scope.get("route"), "path", "unmatched")
                    method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
                    metrics.http_requests.labels(method, route, str(message["status"])).inc()
                    metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, send_and_count)

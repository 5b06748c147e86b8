"""Outages kapflow rides out without a restart of its own.

A PostgreSQL restart under a running `kapflow serve` taking 200 events/s: no event accepted is
lost, the only errors are 503s while the store is away, and audited reads, the clock and the
outbox relay come back by themselves; `/readyz` says when the store is away. A SQLite
database locked by another process: requests wait for it, then go through."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import Journey
from kafka_harness import Topics, read_all, run, wait_until
from postgres_fixtures import postgres_url  # noqa: F401 - the fixture
from serve_harness import ServeProcess
from test_http_api import start_service

from kapflow.demo.cohort import generate_cohort
from kapflow.entrypoints.broker import LocalBroker
from kapflow.service.access import create_key
from kapflow.service.audit import verify, verify_access_log
from kapflow.store import open_store
from kapflow.store.access_log import open_access_log
from kapflow.store.key_usage import KeyUsageStore


def _pg_cluster(action: str) -> None:
    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("pg_ctlcluster not available to stop and start PostgreSQL")
    version = sorted(Path("/etc/postgresql").iterdir())[0].name
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    subprocess.run(
        [*command, "-m", "fast"] if action == "stop" else command,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _status(response: httpx.Response | None) -> int | None:
    return None if response is None else response.status_code


def _get(url: str, headers: dict[str, str] | None = None) -> httpx.Response | None:
    try:
        return httpx.get(url, headers=headers, timeout=15)
    except httpx.HTTPError:
        return None


class Publisher(threading.Thread):
    """Posts events one at a time at about `rate` per second, as a publisher would: a 503 is
    retried (0.2 s later) until the event gets an outcome, so each client's events stay in
    order. Keeps every status and every outcome it was told."""

    def __init__(
        self, url: str, headers: dict[str, str], events: list[dict[str, Any]], rate: float
    ) -> None:
        super().__init__(name="publisher")
        self.url, self.headers, self.events = url, headers, events
        self.rate = rate
        self.statuses: Counter[int | str] = Counter()
        self.outcomes: list[tuple[tuple[str, str], str]] = []  # (source, id), outcome
        self.sent = 0
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        due = started
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            for event in self.events:
                while True:
                    due += 1 / self.rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    try:
                        response = client.post("/v1/events", json=event)
                    except httpx.HTTPError as error:
                        self.statuses[type(error).__name__] += 1
                    else:
                        self.statuses[response.status_code] += 1
                        if response.status_code != 503:
                            break
                    time.sleep(0.2)
                    due = time.monotonic()
                if response.status_code == 200:
                    key = (event["source"], event["id"])
                    self.outcomes.append((key, response.json()["outcome"]))
                self.sent += 1
        self.seconds = time.monotonic() - started


class Load:
    """`lanes` publishers sharing `rate` events/s, each with its own clients (client order
    holds within a lane), as several publishing services would."""

    def __init__(
        self, url: str, headers: dict[str, str], events: list[dict[str, Any]], rate: float
    ) -> None:
        lanes = 8
        self.events = events
        self.lanes = [
            Publisher(
                url,
                headers,
                [e for e in events if zlib.crc32(e["subject"].encode()) % lanes == lane],
                rate / lanes,
            )
            for lane in range(lanes)
        ]

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def join(self, timeout: float) -> None:
        for lane in self.lanes:
            lane.join(timeout)

    def is_alive(self) -> bool:
        return any(lane.is_alive() for lane in self.lanes)

    @property
    def sent(self) -> int:
        return sum(lane.sent for lane in self.lanes)

    @property
    def seconds(self) -> float:
        return max(lane.seconds for lane in self.lanes)

    @property
    def statuses(self) -> Counter[int | str]:
        return sum((lane.statuses for lane in self.lanes), Counter())

    @property
    def outcomes(self) -> list[tuple[tuple[str, str], str]]:
        return [outcome for lane in self.lanes for outcome in lane.outcomes]


@pytest.mark.postgres
def test_serve_on_postgresql_rides_out_a_database_restart(
    kafka_broker: LocalBroker,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap, partitions=1))
    admin, auditor = create_key("admin", "ops-admin"), create_key("auditor", "audit-team")
    keys = json.dumps({"keys": [admin.key.as_entry(), auditor.key.as_entry()]})
    as_admin = {"Authorization": f"Bearer {admin.secret}"}
    as_auditor = {"Authorization": f"Bearer {auditor.secret}"}
    options = ("--kafka", kafka_broker.bootstrap, "--clock-interval", "0.5", "-v")
    log = tmp_path / "serve.log"
    serve = ServeProcess(
        postgres_url, log, *options, env={**topics.env(), "KAPFLOW_API_KEYS": keys}
    )
    with serve:
        url = serve.url
        before = Journey("c-before-restart")
        posted = httpx.post(f"{url}/v1/events", json=before.to_assessed(), headers=as_admin)
        assert [o["outcome"] for o in posted.json()] == ["accepted"] * 3
        assert _status(_get(f"{url}/readyz")) == 200

        load = Load(url, as_admin, list(generate_cohort(clients=120, seed=31)), rate=200)
        load.start()
        wait_until(lambda: load.sent >= 600, 60, "the load to be under way")
        _pg_cluster("stop")
        stopped = time.monotonic()
        try:
            ready = _get(f"{url}/readyz")
            history = _get(f"{url}/v1/clients/c-before-restart/history", as_auditor)
            time.sleep(max(0.0, 4 - (time.monotonic() - stopped)))  # a few seconds of load
        finally:
            _pg_cluster("start")
        started = time.monotonic()
        # While the store is away: not ready, and an audited read is refused, not served
        # unrecorded.
        assert ready is not None and ready.status_code == 503
        assert ready.json()["database"].startswith("unavailable")
        assert ready.json()["access_log"].startswith("unavailable")
        assert _status(history) == 503

        wait_until(lambda: _status(_get(f"{url}/readyz")) == 200, 60, "ready again")
        ready_after = time.monotonic() - started
        after = Journey("c-after-restart")  # its events happened in January: deadlines are due
        posted = httpx.post(f"{url}/v1/events", json=after.to_assessed(), headers=as_admin)
        assert [o["outcome"] for o in posted.json()] == ["accepted"] * 3
        read = _get(f"{url}/v1/clients/c-before-restart/history", as_auditor)
        assert _status(read) == 200

        def clock_recorded_a_deadline() -> bool:
            store = open_store(postgres_url)
            try:
                return any(
                    e.type == "system.deadline_reached" for e in store.history(after.client_id)
                )
            finally:
                store.close()

        wait_until(
            clock_recorded_a_deadline, 30, "the clock to record a deadline after the restart"
        )
        load.join(300)
        assert not load.is_alive()

    store = open_store(postgres_url)
    try:
        changes = {
            f"{e.client_id}:{e.seq}:state"
            for e in store.iter_history()
            if e.from_state != e.to_state
        }
        recorded = {(e.source, e.event_id) for e in store.iter_history()}
        report = verify(store)
    finally:
        store.close()
    # The publisher's view: every status was 200 or a 503 while the store was away, and
    # every event it was told is accepted is in a history (none lost).
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.statuses[503] > 0  # the outage really happened under load
    accepted = {key for key, outcome in load.outcomes if outcome == "accepted"}
    lost = accepted - recorded
    assert lost == set()
    assert len(load.outcomes) == len(load.events)  # every event got an outcome in the end
    assert report.ok, report.divergences[:5]
    published = run(read_all(kafka_broker.bootstrap, topics.outputs["state-changes"], len(changes)))
    published_ids = {json.loads(record.value)["id"] for record in published}
    assert changes <= published_ids  # the relay published what was recorded after it, too

    access_log = open_access_log(postgres_url)
    check = verify_access_log(access_log)
    reads = [(r.action, r.client_id) for r in access_log.entries()]
    access_log.close()
    assert check.divergences == []
    assert set(KeyUsageStore(postgres_url).last_used()) == {"ops-admin", "audit-team"}
    assert reads == [("history", "c-before-restart")]  # the refused read left no trace
    text = log.read_text()
    assert (
        "access log: lost PostgreSQL" in text
        or "access log: PostgreSQL connection restored" in (text)
    )
    assert '"channel"' not in text and "qmts_client" not in text  # ids and classes, no payloads
    outcomes = Counter(outcome for _, outcome in load.outcomes)
    print(
        f"\nPostgreSQL down {started - stopped:.1f}s under load; serve ready {ready_after:.1f}s"
        f" after the restart; {len(load.events)} events at"
        f" {sum(load.statuses.values()) / load.seconds:.0f} requests/s (200 offered) over"
        f" {load.seconds:.1f}s;"
        f" statuses {dict(load.statuses)}; outcomes {dict(outcomes)}; lost {len(lost)};"
        f" {len(changes)} state changes all published"
    )


def test_a_sqlite_database_locked_by_another_process_delays_serve_and_loses_nothing(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    server, secrets = start_service(db, clock_interval=0.3)
    as_admin = {"Authorization": f"Bearer {secrets['admin']}"}
    as_auditor = {"Authorization": f"Bearer {secrets['auditor']}"}
    try:
        j = Journey("c-locked")
        first = httpx.post(f"{server.url}/v1/events", json=j.inquiry(), headers=as_admin)
        assert first.json()["outcome"] == "accepted"
        # Another process (a backup tool, an operator's sqlite3 shell) holds the write lock.
        holder = sqlite3.connect(tmp_path / "kapflow.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        results: dict[str, httpx.Response] = {}

        def post() -> None:
            results["post"] = httpx.post(
                f"{server.url}/v1/events",
                json=j.booking("assessment", "a-1"),
                headers=as_admin,
                timeout=60,
            )

        def read() -> None:
            results["read"] = httpx.get(
                f"{server.url}/v1/clients/c-locked/history", headers=as_auditor, timeout=60
            )

        started = time.monotonic()
        callers = [threading.Thread(target=post), threading.Thread(target=read)]
        for caller in callers:
            caller.start()
        time.sleep(2.0)
        holder.execute("COMMIT")
        holder.close()
        for caller in callers:
            caller.join(60)
        waited = time.monotonic() - started
        # Both waited for the lock, then went through: nothing refused, nothing lost.
        assert results["post"].status_code == 200
        assert results["post"].json()["outcome"] == "accepted"
        assert results["read"].status_code == 200
        assert waited >= 2.0
        verified = httpx.get(f"{server.url}/v1/verify", headers=as_auditor, timeout=60).json()
        assert verified["ok"] is True, verified["divergences"][:3]
        assert verified["access_log"]["rows"] == 2  # the history read and the verify itself
    finally:
        server.stop()

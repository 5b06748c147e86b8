"""Streams and limits (issue 18): a live stream lasts only as long as the key it was opened
with, each key holds a few streams at most, a backlog replay reads the outbox a page at a
time off the event loop, and the dashboard's stream carries no API key in its URL."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import Journey
from serve_harness import KAPFLOW, ServeProcess
from test_http_api import Service, start_service
from test_http_dashboard import STRICT, browser, expect  # noqa: F401 - a fixture

from kapflow.entrypoints.http.context import HttpSettings
from kapflow.entrypoints.http.server import ServiceThread
from kapflow.entrypoints.http.stream_access import StreamTickets
from kapflow.service.access import ROLES, KeyRing, create_key, load_keys
from kapflow.service.ingest import IngestService
from kapflow.settings import StreamSettings
from kapflow.store import open_store
from kapflow.store.sqlite import SQLiteStore


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('stream-limits') / 'kapflow.db'}"
    server, secrets = start_service(db, keepalive=0.5)
    yield Service(server.url, db, secrets)
    server.stop()


@dataclass
class KeyedService:
    """An in-process service whose keys come from a file it reloads (as `serve` does)."""

    server: ServiceThread
    keys_file: Path
    secrets: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url


def fill_store(db: str, clients: int) -> int:
    """A store with `clients` journeys to preparation already recorded; how many events."""
    store = open_store(db)
    events = [e for n in range(clients) for e in Journey(f"c-bk-{n}").to_prepared()]
    for start in range(0, len(events), 1000):
        IngestService(store).ingest_batch(events[start : start + 1000])
    store.close()
    return len(events)


@contextlib.contextmanager
def service_on_a_keys_file(
    tmp_path: Path, expires: dict[str, datetime] | None = None
) -> Iterator[KeyedService]:
    made = {
        role: create_key(role, f"{role}-key", ["scheduling"] if role == "publisher" else [], at)
        for role in ROLES
        for at in [(expires or {}).get(role)]
    }
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [new.key.as_entry() for new in made.values()]}))
    settings = HttpSettings(
        db=f"sqlite:///{tmp_path / 'kapflow.db'}",
        keys=load_keys(str(keys_file)),
        keys_file=str(keys_file),
        keys_poll_interval=0.2,
        keepalive=0.5,
    )
    with ServiceThread(settings) as server:
        yield KeyedService(server, keys_file, {r: new.secret for r, new in made.items()})


def revoke(keys_file: Path, name: str) -> float:
    """`kapflow keys revoke`; the `time.monotonic()` at which it wrote the keys file."""
    result = subprocess.run(
        [KAPFLOW, "keys", "revoke", "--name", name, "--keys-file", str(keys_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return time.monotonic() - (time.time() - keys_file.stat().st_mtime)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def ticket_for(url: str, secret: str) -> str:
    response = httpx.post(f"{url}/v1/stream/ticket", headers=bearer(secret), timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["ticket"])


def seconds_until_it_ends(
    lines: Iterator[str], since: float, limit: float = 6.0, seen: list[str] | None = None
) -> float:
    """Reads a stream's lines (into `seen`) until the server ends it; seconds from `since`,
    or inf after `limit` (keep-alives every half second let the loop look at the clock)."""
    with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
        for line in lines:
            if seen is not None:
                seen.append(line)
            if time.monotonic() - since > limit:
                return float("inf")
    return time.monotonic() - since


# --- 1. a stream lasts as long as its key ------------------------------------------------------


def test_revoking_a_key_ends_the_stream_it_opened_within_a_second_or_two(tmp_path: Path) -> None:
    with (
        service_on_a_keys_file(tmp_path) as service,
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", headers=bearer(service.secrets["dashboard"])) as live,
        client.stream("GET", "/v1/stream", headers=bearer(service.secrets["auditor"])) as other,
    ):
        assert live.status_code == 200 and other.status_code == 200
        lines, seen = live.iter_lines(), []
        next(lines)  # the stream is open
        took = seconds_until_it_ends(lines, revoke(service.keys_file, "dashboard-key"), seen=seen)
        assert took < 2.0, f"the revoked key's stream was still open after {took:.1f}s"
        assert ": stream ended: revoked API key" in seen, "it ends saying why"
        # The other key's stream goes on (its keep-alives still come).
        assert any(line.startswith(": keep-alive") for line in other.iter_lines())
    print(f"\nstream of the revoked key ended {took:.2f}s after the keys file was written")


def test_a_stream_opened_with_a_ticket_ends_when_the_key_behind_the_ticket_is_revoked(
    tmp_path: Path,
) -> None:
    with service_on_a_keys_file(tmp_path) as service:
        ticket = ticket_for(service.url, service.secrets["operations"])
        with (
            httpx.Client(base_url=service.url, timeout=10) as client,
            client.stream("GET", "/v1/stream", params={"ticket": ticket}) as live,
        ):
            assert live.status_code == 200
            lines = live.iter_lines()
            next(lines)
            took = seconds_until_it_ends(lines, revoke(service.keys_file, "operations-key"))
        assert took < 2.0, f"still open after {took:.1f}s"


def test_a_revoked_keys_stream_is_cut_even_while_its_client_reads_nothing(tmp_path: Path) -> None:
    fill_store(f"sqlite:///{tmp_path / 'kapflow.db'}", 2000)  # > the socket buffers (4 MiB)
    with service_on_a_keys_file(tmp_path) as service, socket.socket() as stuck:
        gate = service.server.server.config.app.state.streams.gate
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", service.server.server.port or 0))
        request = (
            "GET /v1/stream?after=0 HTTP/1.1\r\nHost: kapflow\r\n"
            f"Authorization: Bearer {service.secrets['auditor']}\r\n\r\n"
        )
        stuck.sendall(request.encode())
        time.sleep(0.5)  # the replay fills the buffers and waits for a reader
        [auditor] = [k for k in load_keys(str(service.keys_file)).keys if k.role == "auditor"]
        assert gate.open_streams(auditor) == 1
        revoked = revoke(service.keys_file, "auditor-key")
        while gate.open_streams(auditor) and time.monotonic() - revoked < 5:
            time.sleep(0.05)
        took = time.monotonic() - revoked
        assert took < 2.0, f"the stream held its place {took:.1f}s after the revocation"
        # What was already buffered drains, then the connection ends: nothing more comes.
        stuck.settimeout(5)
        while chunk := stuck.recv(65536):
            assert chunk
    print(f"\nstuck reader's stream cut {took:.2f}s after the keys file was written")


def test_a_stream_ends_when_its_key_expires_without_any_reload(tmp_path: Path) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    with (
        service_on_a_keys_file(tmp_path, {"dashboard": expires}) as service,
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", headers=bearer(service.secrets["dashboard"])) as live,
    ):
        assert live.status_code == 200
        opened = time.monotonic()
        left = (expires - datetime.now(UTC)).total_seconds()
        took = seconds_until_it_ends(live.iter_lines(), opened, limit=left + 5)
    assert left - 0.5 < took < left + 1.5, f"ended {took:.1f}s after opening; key had {left:.1f}s"


# --- 2. at most a few streams per key --------------------------------------------------------


def test_a_key_holds_at_most_four_streams_and_the_fifth_gets_429_with_retry_after(
    service: Service,
) -> None:
    limit = StreamSettings().max_per_key
    assert limit == 4
    dashboard = bearer(service.secrets["dashboard"])
    with contextlib.ExitStack() as streams, httpx.Client(base_url=service.url, timeout=10) as c:
        opened = [
            streams.enter_context(c.stream("GET", "/v1/stream", headers=dashboard))
            for _ in range(limit - 1)
        ]
        # A stream opened with a ticket counts against the key behind it.
        ticket = ticket_for(service.url, service.secrets["dashboard"])
        opened.append(streams.enter_context(c.stream("GET", f"/v1/stream?ticket={ticket}")))
        assert [s.status_code for s in opened] == [200] * limit
        refused = c.get("/v1/stream", headers=dashboard)
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_streams"
        assert int(refused.headers["Retry-After"]) >= 1
        ticket = ticket_for(service.url, service.secrets["dashboard"])
        assert c.get(f"/v1/stream?ticket={ticket}").status_code == 429
        # Another key is not affected.
        with c.stream("GET", "/v1/stream", headers=bearer(service.secrets["auditor"])) as other:
            assert other.status_code == 200
        # Closing one frees its place as soon as the server sees the disconnect.
        opened[0].close()
        deadline = time.monotonic() + 3
        while True:
            with c.stream("GET", "/v1/stream", headers=dashboard) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's place was never freed"
            time.sleep(0.1)


# --- 4. stream tickets: the dashboard's key never goes into a URL ------------------------------


def test_a_stream_ticket_is_single_use_and_needs_a_key_that_may_stream(service: Service) -> None:
    response = httpx.post(
        f"{service.url}/v1/stream/ticket", headers=bearer(service.secrets["dashboard"])
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ticket", "expires_in"} and 0 < body["expires_in"] <= 60
    assert response.headers["Cache-Control"] == "no-store"
    assert service.secrets["dashboard"] not in body["ticket"]
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", params={"ticket": body["ticket"]}) as first,
    ):
        assert first.status_code == 200
    again = httpx.get(f"{service.url}/v1/stream", params={"ticket": body["ticket"]})
    assert again.status_code == 401 and "ticket" in again.json()["detail"]
    assert httpx.get(f"{service.url}/v1/stream", params={"ticket": "made-up"}).status_code == 401
    assert httpx.post(f"{service.url}/v1/stream/ticket").status_code == 401
    publisher = bearer(service.secrets["publisher"])
    assert httpx.post(f"{service.url}/v1/stream/ticket", headers=publisher).status_code == 403
    # A ticket opens the stream and nothing else.
    ticket = ticket_for(service.url, service.secrets["dashboard"])
    assert httpx.get(f"{service.url}/v1/stats", params={"ticket": ticket}).status_code == 401


def test_a_key_holds_a_bounded_number_of_unused_tickets_and_a_ticket_names_only_its_key() -> None:
    clock = [0.0]
    tickets = StreamTickets(30.0, clock=lambda: clock[0])
    mine, other = (create_key("dashboard", name).key for name in ("wall", "desk"))
    ring = KeyRing([mine, other])
    issued = [tickets.issue(mine) for _ in range(100)]
    assert len(tickets) <= 16, "a page asking again and again cannot fill the memory"
    assert tickets.redeem(ring, issued[0]) is None, "the oldest were dropped"
    assert tickets.redeem(ring, issued[-1]) == mine
    assert tickets.redeem(ring, issued[-1]) is None, "single use"
    late = tickets.issue(other)
    clock[0] = 31.0
    assert tickets.redeem(ring, late) is None, "expired"
    gone = tickets.issue(other)
    assert tickets.redeem(KeyRing([mine]), gone) is None, "its key is no longer configured"


def test_a_stream_ticket_expires_after_its_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAPFLOW_STREAM_TICKET_SECONDS", "0.5")
    server, secrets = start_service(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        ticket = ticket_for(server.url, secrets["dashboard"])
        time.sleep(0.8)
        late = httpx.get(f"{server.url}/v1/stream", params={"ticket": ticket})
        assert late.status_code == 401
    finally:
        server.stop()


def test_a_key_in_the_stream_query_string_still_works_but_is_marked_deprecated(
    service: Service,
) -> None:
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream(
            "GET", "/v1/stream", params={"access_token": service.secrets["dashboard"]}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["Deprecation"].startswith("@")  # RFC 9745: since when
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", headers=bearer(service.secrets["dashboard"])) as ok,
    ):
        assert "Deprecation" not in ok.headers


# --- 3. backlog replay: paged, off the event loop ------------------------------------------------


@contextlib.contextmanager
def slow_replays(url: str, secrets: list[str], readers: int) -> Iterator[list[int]]:
    """`readers` clients replaying the stream from `after=0`, each reading 4 KiB every 10 ms,
    on `secrets` in turn (each key within its cap); yields the bytes each received so far;
    they stop when the block ends."""
    stop, received = threading.Event(), [0] * readers
    # Made before: building a client (its TLS context) takes this process's CPU, which the
    # probes beside the readers must not wait for.
    clients = [httpx.Client(base_url=url, timeout=30) for _ in range(readers)]

    def read_slowly(n: int) -> None:
        headers = bearer(secrets[n % len(secrets)])
        with (
            clients[n] as client,
            client.stream("GET", "/v1/stream", params={"after": 0}, headers=headers) as response,
        ):
            for chunk in response.iter_raw(4096):
                received[n] += len(chunk)
                if stop.is_set():
                    return
                time.sleep(0.01)

    threads = [threading.Thread(target=read_slowly, args=(n,), daemon=True) for n in range(readers)]
    for thread in threads:
        thread.start()
    try:
        yield received
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def healthz_seconds(url: str, during: float) -> list[float]:
    """How long each /healthz took, asked every 0.1 s for `during` seconds."""
    probes, ends = [], time.monotonic() + during
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < ends:
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.1)
    return probes


def test_slow_readers_replaying_the_whole_backlog_leave_healthz_fast(tmp_path: Path) -> None:
    import psutil

    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    fill_store(db, 1000)
    made = [create_key("auditor", f"reader-{n}") for n in range(7)]  # 25 streams, 4 a key
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [new.key.as_entry() for new in made]}))
    options = ("--keys-file", str(keys_file), "--clock-interval", "0")
    # A process of its own, as in production: its event loop shares no GIL with the readers.
    with ServeProcess(db, tmp_path / "serve.log", *options) as serve:
        assert serve.process is not None
        memory = psutil.Process(serve.process.pid)
        rss_before = memory.memory_info().rss
        with slow_replays(serve.url, [new.secret for new in made], 25) as received:
            probes = healthz_seconds(serve.url, 4.0)
            rss_during = memory.memory_info().rss
        assert all(received), "every slow reader got part of the backlog"
    assert max(probes) < 1.0, f"/healthz took up to {max(probes):.2f}s beside slow replays"
    print(
        f"\n25 slow replays: /healthz p50 {sorted(probes)[len(probes) // 2] * 1000:.1f} ms,"
        f" max {max(probes) * 1000:.1f} ms; RSS {rss_before / 2**20:.0f} →"
        f" {rss_during / 2**20:.0f} MiB"
    )


def test_a_replay_reads_the_store_a_page_at_a_time_on_threads_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    recorded = fill_store(db, 600)
    reads: list[tuple[int, int, str]] = []  # (after, limit, thread) of each outbox read
    replaying = threading.Event()
    original = SQLiteStore.outbox_after

    def spy(self: SQLiteStore, position: int, limit: int = 500) -> list[Any]:
        # This server's replays only: not its live polls, nor the module's other server.
        if replaying.is_set() and self.url == db and position < recorded:
            reads.append((position, limit, threading.current_thread().name))
        return original(self, position, limit)

    monkeypatch.setattr(SQLiteStore, "outbox_after", spy)
    server, secrets = start_service(db)
    try:
        replaying.set()
        with slow_replays(server.url, list(secrets.values()), 8) as received:
            time.sleep(2.0)
        assert all(received)
    finally:
        server.stop()
    settings = StreamSettings()
    assert reads, "the replays read the store"
    assert max(limit for _, limit, _ in reads) <= settings.page_rows, "never all of it at once"
    threads = {thread for _, _, thread in reads}
    assert "kapflow-http" not in threads, "a store read ran on the event loop's thread"
    assert len(threads) <= settings.backlog_readers, threads
    print(f"\n{len(reads)} backlog pages read on {sorted(threads)}")


# --- 4. the dashboard in a browser ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_the_dashboard_goes_live_with_a_ticket_and_never_puts_its_key_in_a_url(
    browser: Any,  # noqa: F811 - test_http_dashboard's fixture
    tmp_path: Path,
) -> None:
    # Each stream is ended after 2 s, so the page must reconnect with a fresh ticket.
    server, secrets = start_service(
        f"sqlite:///{tmp_path / 'k.db'}", poll_interval=0.5, stream_max_seconds=2.0
    )
    try:
        page = browser.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.url}/dashboard")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#login-key", secrets["dashboard"])
        page.press("#login-key", "Enter")
        page.wait_for_selector('#connection[data-state="live"]', timeout=10_000)
        for n, wait_more in ((1, 0.0), (2, 3.0)):  # the second after a reconnection
            time.sleep(wait_more)
            event = Journey(f"c-tk-{n}").inquiry()
            admin = bearer(secrets["admin"])
            assert httpx.post(f"{server.url}/v1/events", json=event, headers=admin).is_success
            page.wait_for_selector(f'#changes li[data-client="c-tk-{n}"]', timeout=10_000)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.close()
    finally:
        server.stop()
    streams = [url for url in urls if "/v1/stream?" in url]
    assert len(streams) >= 2, urls
    assert all("ticket=" in url and "access_token" not in url for url in streams), streams
    assert len({url.split("ticket=")[1].split("&")[0] for url in streams}) == len(streams)
    assert not [url for url in urls if secrets["dashboard"] in url]
    assert not errors, errors

"""People follow the live stream (issue 18): a clinician signed in with OpenID Connect opens
`/v1/stream` with their access token, or with a ticket they asked for with it, and the
stream ends when their token expires, as a key's stream ends when the key is revoked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from builders import Journey
from oidc_fixtures import AUDIENCE, Provider, start_provider, stop_provider
from test_http_api import Service, start_service
from test_stream_limits import bearer, seconds_until_it_ends

from kapflow.entrypoints.http.stream_access import StreamGate, StreamTickets, TooManyStreams
from kapflow.service.access import KeyRing, create_key, person_principal
from kapflow.settings import StreamSettings


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    started = start_provider(tmp_path_factory.mktemp("oidc-stream") / "signing-key.json")
    yield started
    stop_provider(started)


@pytest.fixture(scope="module")
def service(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-oidc-stream') / 'kapflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_OIDC_ISSUER", provider.issuer)
        env.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
        env.setenv("KAPFLOW_OIDC_LEEWAY_SECONDS", "0")
        server, secrets = start_service(db, keepalive=0.5)
        try:
            yield Service(server.url, db, secrets)
        finally:
            server.stop()


def _publish_a_hold(service: Service, client_id: str) -> None:
    j = Journey(client_id)
    response = httpx.post(
        f"{service.url}/v1/events",
        json=[*j.to_assessed(), j.hold()],
        headers=bearer(service.secrets["admin"]),
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _reads_a_state_change(lines: Iterator[str], limit: float = 10.0) -> bool:
    since = time.monotonic()
    for line in lines:
        if line == "event: state-changes":
            return True
        if time.monotonic() - since > limit:
            return False
    return False


def test_a_signed_in_clinician_follows_the_stream_with_their_token(
    service: Service, provider: Provider
) -> None:
    token = provider.sign_in("ana")
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", headers=bearer(token)) as live,
    ):
        assert live.status_code == 200, live.read()
        _publish_a_hold(service, "c-oidc-stream-1")
        assert _reads_a_state_change(live.iter_lines())


def test_a_clinician_opens_the_stream_with_a_ticket_asked_for_with_their_token(
    service: Service, provider: Provider
) -> None:
    token = provider.sign_in("ana")
    asked = httpx.post(f"{service.url}/v1/stream/ticket", headers=bearer(token), timeout=10)
    assert asked.status_code == 200, asked.text
    ticket = asked.json()["ticket"]
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", params={"ticket": ticket}) as live,
    ):
        assert live.status_code == 200, live.read()
        _publish_a_hold(service, "c-oidc-stream-2")
        assert _reads_a_state_change(live.iter_lines())
    again = httpx.get(f"{service.url}/v1/stream", params={"ticket": ticket}, timeout=10)
    assert again.status_code == 401, "a ticket opens one stream"


def test_a_persons_stream_ends_when_their_token_expires(
    service: Service, provider: Provider
) -> None:
    token = provider.sign_in("ana", client_id="short-lived")  # valid for 2 s
    seen: list[str] = []
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", headers=bearer(token)) as live,
    ):
        assert live.status_code == 200, live.read()
        took = seconds_until_it_ends(live.iter_lines(), time.monotonic(), limit=8, seen=seen)
    assert took < 4, f"the stream outlived the 2 s token by {took - 2:.1f}s"
    assert ": stream ended: token expired" in seen


def test_a_ticket_asked_for_with_an_expiring_token_opens_a_stream_that_ends_with_it(
    service: Service, provider: Provider
) -> None:
    token = provider.sign_in("ana", client_id="short-lived")
    asked = httpx.post(f"{service.url}/v1/stream/ticket", headers=bearer(token), timeout=10)
    assert asked.status_code == 200, asked.text
    seen: list[str] = []
    with (
        httpx.Client(base_url=service.url, timeout=10) as client,
        client.stream("GET", "/v1/stream", params={"ticket": asked.json()["ticket"]}) as live,
    ):
        assert live.status_code == 200, live.read()
        took = seconds_until_it_ends(live.iter_lines(), time.monotonic(), limit=8, seen=seen)
    assert took < 4 and ": stream ended: token expired" in seen


def test_each_person_holds_their_own_streams_and_none_takes_a_keys_place() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    key = create_key("dashboard", "wall").key
    gate = StreamGate(StreamSettings(max_per_key=1), lambda: KeyRing([key]), lambda: now)
    ana = person_principal("ana", "operations", now + timedelta(minutes=5))
    ola = person_principal("ola", "auditor", now + timedelta(seconds=1))

    async def admit_all() -> None:
        async def wake() -> None:
            return None

        slots = [gate.admit(who, wake) for who in (key, ana, ola)]
        with pytest.raises(TooManyStreams, match="`ana` already holds 1"):
            gate.admit(ana, wake)
        now_later = now + timedelta(seconds=2)
        gate.now = lambda: now_later
        assert gate.check() == 1, "ola's token expired; ana's and the key's stand"
        assert [s.ended for s in slots] == [None, None, "token expired"]
        for slot in slots:
            gate.release(slot)

    asyncio.run(admit_all())


def test_a_ticket_asked_for_by_a_person_stands_for_that_person_only() -> None:
    tickets = StreamTickets(30.0)
    ana = person_principal("ana", "operations", datetime.now(UTC) + timedelta(minutes=5))
    ola = person_principal("ola", "auditor", datetime.now(UTC) + timedelta(minutes=5))
    mine, theirs = tickets.issue(ana), tickets.issue(ola)
    assert tickets.redeem(KeyRing([]), mine) == ana
    assert tickets.redeem(KeyRing([]), theirs) == ola
    assert tickets.redeem(KeyRing([]), mine) is None, "single use"

"""Who may hold a live stream, and for how long: stream tickets, the per-key cap, and the
end of every stream whose key stops being honoured.

Why this exists (issue 18): a stream is authenticated once, when it opens, and may then
stay open for days. Without a watch, revoking a key (or its expiry) refused its next
request but left its open streams flowing; one key could hold any number of streams; and a
browser had to put the key itself in the stream's URL (EventSource cannot send headers),
where proxies, logs and history keep it.

- `StreamTickets`: `POST /v1/stream/ticket` (key in the header) gives a random ticket that
  opens one stream (`?ticket=`), once, within `ticket_seconds`. It names the key by its
  digest, so the stream it opens is checked against the keys in force like any other.
- `StreamGate`: at most `max_per_key` open streams per key; a watch task, running while any
  stream is open, checks every `key_check_seconds` each open stream's key against the ring
  in force (`app.state.keys`, replaced by a reload) and the clock (expiry). A stream whose
  key is revoked, expired, removed or no longer allowed to stream is told to end (it ends
  between events, with a comment saying why); one that does not end within `_GRACE`
  seconds (its client reads nothing, so a send is blocked) is cut.

People (OpenID Connect, oidc.py) hold no key in the ring: a person's stream, opened with
their access token or with a ticket they asked for with it, is counted per person (their
subject) and ends when their token expires, as a key's does when it is revoked. The
provider is not asked again while the stream runs: a person removed there keeps their
stream until the token they opened it with expires (minutes: the provider's token lifetime).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kapflow.service.access import ApiKey, KeyRing, Permission, is_person
from kapflow.settings import StreamSettings

# How long a stream told to end may take before it is cut: long enough to finish the
# event being sent, short enough that the stream outlives its key by about a second.
_GRACE = 0.5
# Unredeemed tickets kept per key (a page that asks again and again drops its oldest).
_TICKETS_PER_KEY = 16


def ticket_digest(ticket: str) -> str:
    # Kept hashed, as keys are: what sits in memory cannot be replayed.
    return hashlib.sha256(ticket.encode()).hexdigest()


def holder_of(principal: ApiKey) -> str:
    """Who holds a stream, for the cap and the tickets: a key by its digest, a person (whose
    principal carries a shared marker, not a digest) by their subject."""
    return "person:" + principal.name if is_person(principal) else principal.digest


@dataclass(slots=True)
class _Ticket:
    holder: str
    expires_at: float
    # A person is in no ring: the ticket keeps their principal (expiring with their token).
    person: ApiKey | None = None


class StreamTickets:
    """Single-use, short-lived tickets that stand for a key (or a signed-in person) on
    `GET /v1/stream` only."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._tickets: dict[str, _Ticket] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, key: ApiKey) -> str:
        now = self.clock()
        self._tickets = {d: t for d, t in self._tickets.items() if t.expires_at > now}
        holder = holder_of(key)
        mine = [d for d, t in self._tickets.items() if t.holder == holder]
        for digest in mine[: max(len(mine) - _TICKETS_PER_KEY + 1, 0)]:  # oldest first
            del self._tickets[digest]
        ticket = "kft_" + secrets.token_urlsafe(32)
        person = key if is_person(key) else None
        self._tickets[ticket_digest(ticket)] = _Ticket(holder, now + self.lifetime, person)
        return ticket

    def redeem(self, ring: KeyRing, ticket: str) -> ApiKey | None:
        """The key in `ring` (or the person) a live ticket stands for; the ticket is used up
        either way. A person's expiry is checked by the caller, as a key's is."""
        found = self._tickets.pop(ticket_digest(ticket), None)
        if found is None or found.expires_at <= self.clock():
            return None
        if found.person is not None:
            return found.person
        return next((key for key in ring.keys if key.digest == found.holder), None)


@dataclass(eq=False, slots=True)
class StreamSlot:
    """One open stream: the key it was opened with and, once told to, why it ends."""

    key: ApiKey
    ended: str | None = None
    released: bool = False
    cancel: Callable[[], Any] | None = None  # set by `EventStreamResponse`: cuts the stream

    def why_ended(self) -> str | None:
        return self.ended


class TooManyStreams(Exception):
    """The key (or person) already holds `limit` streams."""

    def __init__(self, key: ApiKey, limit: int) -> None:
        who = f"`{key.name}`" if is_person(key) else f"key `{key.name}`"
        super().__init__(f"{who} already holds {limit} open streams (the most)")
        self.limit = limit


def refusal_in(in_force: dict[str, ApiKey], key: ApiKey, now: datetime) -> str | None:
    """Why the keys in force (by digest) no longer honour `key` for streaming, or None; a
    person's token, which no ring holds, is judged by its expiry alone."""
    if is_person(key):
        return "token expired" if key.refusal(now) is not None else None
    current = in_force.get(key.digest)
    if current is None:
        return "API key removed"
    why = current.refusal(now)
    if why is not None:
        return f"{why} API key"
    return None if current.may(Permission.STREAM) else "API key may no longer stream"


@dataclass
class StreamGate:
    """Counts open streams per key and ends those whose key is withdrawn.

    `keys()` is the ring in force (None: --insecure-dev, where there is nothing to withdraw
    and no cap: every caller is the one development principal)."""

    settings: StreamSettings
    keys: Callable[[], KeyRing | None]
    now: Callable[[], datetime]
    _open: dict[str, set[StreamSlot]] = field(default_factory=dict)
    _watch: asyncio.Task[None] | None = None

    def open_streams(self, key: ApiKey) -> int:
        return len(self._open.get(holder_of(key), ()))

    def admit(self, key: ApiKey, wake: Callable[[], Awaitable[None]]) -> StreamSlot:
        """A slot for one more stream of `key`, or TooManyStreams. `wake()` wakes the
        streams waiting for news (the feed), so a stream told to end does so at once."""
        held = self._open.setdefault(holder_of(key), set())
        if self.keys() is not None and len(held) >= self.settings.max_per_key:
            raise TooManyStreams(key, self.settings.max_per_key)
        slot = StreamSlot(key)
        held.add(slot)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._run(wake), name="kapflow-stream-keys")
        return slot

    def release(self, slot: StreamSlot) -> None:
        if slot.released:
            return
        slot.released = True
        holder = holder_of(slot.key)
        held = self._open.get(holder)
        if held is not None:
            held.discard(slot)
            if not held:
                del self._open[holder]

    def check(self) -> int:
        """End the streams whose key the ring in force no longer honours, or whose person's
        token expired; how many."""
        ring = self.keys()
        if ring is None:
            return 0
        now, ended = self.now(), 0
        in_force = {key.digest: key for key in ring.keys}
        for slot in [s for held in self._open.values() for s in held if s.ended is None]:
            why = refusal_in(in_force, slot.key, now)
            if why is not None:
                self._end(slot, why)
                ended += 1
        return ended

    def _end(self, slot: StreamSlot, why: str) -> None:
        slot.ended = why
        asyncio.get_running_loop().call_later(_GRACE, self._cut, slot)

    @staticmethod
    def _cut(slot: StreamSlot) -> None:
        # The response is cancelled mid-body: uvicorn closes the connection (what was
        # already buffered still drains) and logs "ASGI callable returned without
        # completing response", which here is what was meant.
        if not slot.released and slot.cancel is not None:
            slot.cancel()

    async def _run(self, wake: Callable[[], Awaitable[None]]) -> None:
        # Runs only while streams are open: an idle server has no task ticking.
        while self._open:
            await asyncio.sleep(self.settings.key_check_seconds)
            if self.check():
                await wake()


@dataclass(frozen=True)
class StreamAccess:
    """The stream limits of one app (`app.state.streams`)."""

    settings: StreamSettings
    tickets: StreamTickets
    gate: StreamGate

    @classmethod
    def build(
        cls,
        settings: StreamSettings,
        keys: Callable[[], KeyRing | None],
        now: Callable[[], datetime],
    ) -> StreamAccess:
        tickets = StreamTickets(settings.ticket_seconds)
        return cls(settings, tickets, StreamGate(settings, keys, now))


class EventStreamResponse(StreamingResponse):
    """A Server-Sent Events response that gives its slot back however it ends (finished,
    client gone, cut), and that the gate can cut while a send is blocked."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        gate: StreamGate,
        slot: StreamSlot,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.gate = gate
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.CancelScope() as cancel_scope:
                self.slot.cancel = cancel_scope.cancel
                await super().__call__(scope, receive, send)
        finally:
            self.gate.release(self.slot)

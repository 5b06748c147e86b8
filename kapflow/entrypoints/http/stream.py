"""The live stream (SPEC §5): state changes, task changes, rejections and protocol
deviations as Server-Sent Events.

Read from the transactional outbox, so the stream shows exactly what was committed, in
commit order, and nothing recorded is ever missed. One `OutboxFeed` per process polls the
store for new outbox rows and renders each row once (`service.outbox.render`); every SSE
connection reads the feed's in-memory tail, or the store directly when it resumes from
further back than the tail holds.

Replays are paged and bounded (issue 18: 25 slow clients replaying from `after=0` once made
`/healthz` take 3 s and RSS grow by 360 MiB): a stream holds at most one page of rows at a
time and asks for the next only when the previous one was sent, so a slow client is held
back by the socket (back-pressure) instead of piling rows up in memory. Backlog pages are
read, rendered and encoded on a small pool of their own (`backlog_readers` threads, hence
as many SQLite connections and page caches), never on the event loop and never on the
default pool, which other requests need; each page goes out as one chunk.

Wake-ups: the single writer wakes the feed right after each local commit; otherwise the
feed polls every `poll_interval` seconds, which also picks up writes by other processes
(`kapflow ingest`, a Kafka worker) on the same database.

Ids: each SSE `id:` is `<outbox position>.<index of the message within that row>`. Rendering
is deterministic, so a client reconnecting with `Last-Event-ID: P.I` gets row P's messages
after I, then every later row: no gaps, no duplicates.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from kapflow.service.outbox import DEAD_LETTERS, STATE_CHANGES, Message, render
from kapflow.store.base import EventStore, OutboxRow

log = logging.getLogger("kapflow.stream")

T = TypeVar("T")
_LAST_EVENT_ID = re.compile(r"^(\d{1,18})\.(\d{1,6})$")


@dataclass(frozen=True, slots=True)
class FeedRow:
    position: int
    messages: tuple[Message, ...]


def rendered(rows: Iterable[OutboxRow]) -> list[FeedRow]:
    out = []
    for position, ref, record in rows:
        try:
            out.append(FeedRow(position, tuple(render(ref, record))))
        except (TypeError, ValueError, KeyError) as error:
            # An outbox row whose record cannot be read: skip it, keep the stream alive.
            log.error("outbox row %d could not be rendered: %s", position, type(error).__name__)
            out.append(FeedRow(position, ()))
    return out


def read_page(store: EventStore, position: int, limit: int) -> list[FeedRow]:
    """One page of the backlog, read and rendered (on a backlog reader thread)."""
    return rendered(store.outbox_after(position, limit))


def _never() -> str | None:
    return None


def tail_position(store: EventStore) -> int:
    """The last outbox position, via `outbox_after(p, 1)` probes (O(log n) indexed reads).

    The store offers no max(position) read; positions may have gaps (sequences), so this
    searches for the smallest p with no row after it.
    """
    if not store.outbox_after(0, 1):
        return 0
    low, high = 0, 1  # invariant: a row exists after `low`
    while store.outbox_after(high, 1):
        low, high = high, high * 2
    while high - low > 1:  # no row after `high`
        middle = (low + high) // 2
        if store.outbox_after(middle, 1):
            low = middle
        else:
            high = middle
    return high


def parse_last_event_id(text: str) -> tuple[int, int]:
    match = _LAST_EVENT_ID.match(text.strip())
    if not match:
        raise ValueError("Last-Event-ID must look like <position>.<index>, e.g. 1042.0")
    return int(match.group(1)), int(match.group(2))


class OutboxFeed:
    """Polls the outbox once for all connections; keeps the last `buffer_rows` rendered rows.

    The buffer holds every row with a position in (`base`, `head`]. All mutation happens on
    the event loop; store reads run on `executor` (one thread: one SQLite connection).
    """

    def __init__(
        self,
        store: EventStore,
        executor: Executor,
        *,
        poll_interval: float = 1.0,
        buffer_rows: int = 5000,
        page: int = 500,
        min_interval: float = 0.05,
        backlog_readers: int = 2,
    ) -> None:
        self.store = store
        self.min_interval = min_interval
        self.executor = executor
        self.poll_interval = poll_interval
        self.buffer_rows = buffer_rows
        self.page = page
        self.head = 0
        self.base = 0
        self.stopping = False
        self._rows: list[FeedRow] = []
        self._positions: list[int] = []
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._observers: list[Callable[[FeedRow], None]] = []
        self._backlog = ThreadPoolExecutor(backlog_readers, thread_name_prefix="kapflow-backlog")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.head = self.base = await self._run(tail_position, self.store)
        self._task = asyncio.create_task(self._poll(), name="kapflow-outbox-feed")

    async def end_streams(self) -> None:
        """Shutting down: every open stream ends (its client will reconnect elsewhere)."""
        self.stopping = True
        self._wake.set()
        async with self._changed:
            self._changed.notify_all()

    async def nudge(self) -> None:
        """Wake every stream waiting for news, so each re-checks whether it should end."""
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        await self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await self._task
        self._backlog.shutdown(wait=False, cancel_futures=True)

    def observe(self, observer: Callable[[FeedRow], None]) -> None:
        """Called on the event loop for every new row the feed reads (read models)."""
        self._observers.append(observer)

    def wake(self) -> None:
        """Thread-safe: called by the writer thread after a commit."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = 0.0
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            # Under a stream of commits, read at most every `min_interval`: one read then
            # carries many commits, and the writer keeps the CPU (latency of a publish
            # matters more than a few ms of stream delay).
            pause = last_read + self.min_interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            last_read = loop.time()
            try:
                await self._catch_up()
            except Exception as error:  # noqa: BLE001 - keep polling; the store may recover
                log.warning("outbox poll failed: %s", type(error).__name__)
                await asyncio.sleep(self.poll_interval)

    async def _catch_up(self) -> None:
        while not self.stopping:
            rows = await self._run(self.store.outbox_after, self.head, self.page)
            if not rows:
                return
            fresh = await self._run(rendered, rows)
            for row in fresh:
                self._rows.append(row)
                self._positions.append(row.position)
                for observer in self._observers:
                    observer(row)
            self.head = fresh[-1].position
            excess = len(self._rows) - self.buffer_rows
            if excess > 0:
                self.base = self._positions[excess - 1]
                del self._rows[:excess]
                del self._positions[:excess]
            async with self._changed:
                self._changed.notify_all()
            if len(rows) < self.page:
                return

    async def rows_after(self, position: int, limit: int = 500) -> list[FeedRow]:
        """Rows after `position`, from the buffer when it covers them, else one page read
        from the store on a backlog reader thread."""
        if position >= self.base:
            start = bisect.bisect_right(self._positions, position)
            return self._rows[start : start + limit]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._backlog, read_page, self.store, position, limit)

    async def page_after(
        self, position: int, limit: int, encode: Callable[[list[FeedRow]], bytes]
    ) -> tuple[int, bytes] | None:
        """The next page of at most `limit` rows after `position`, as `encode` makes it, and
        the position it ends at; None when the feed has nothing after `position` yet.

        A page from the store is read, rendered and encoded on a backlog reader thread
        (`encode` must be a pure function of the rows)."""
        if position >= self.base:
            start = bisect.bisect_right(self._positions, position)
            rows = self._rows[start : start + limit]
            return (rows[-1].position, encode(rows)) if rows else None
        base = self.base

        def read() -> tuple[int, bytes]:
            rows = read_page(self.store, position, limit)
            # Nothing left before the buffer (pruned rows): go on from where it starts.
            return (rows[-1].position, encode(rows)) if rows else (base, b"")

        return await asyncio.get_running_loop().run_in_executor(self._backlog, read)

    async def wait_beyond(
        self, position: int, timeout: float, ended: Callable[[], str | None] = _never
    ) -> bool:
        """Until the feed has read past `position` or `ended()` names a reason (True), or
        `timeout` passes (False)."""

        def done() -> bool:
            return self.head > position or self.stopping or ended() is not None

        if done():
            return True
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True


async def recent_messages(
    feed: OutboxFeed, topics: frozenset[str], per_topic: int, max_rows: int = 20_000
) -> tuple[int, list[tuple[int, int, Message]]]:
    """The latest `per_topic` messages of each topic, oldest first, and the position they
    were read up to.

    Why: a dashboard opening on a busy store wants its "recent" lists filled at once, but the
    last N outbox rows may hold no state change at all (a clock tick escalating many tasks).
    This walks back from the head page by page until each topic has enough or `max_rows`
    rows were read. A stream opened with `?after=<position>` then continues exactly there:
    no gap, no duplicate.
    """
    head = feed.head
    found: dict[str, list[tuple[int, int, Message]]] = {topic: [] for topic in topics}
    cursor, page = head, 500
    while cursor > 0 and head - cursor < max_rows:
        if all(len(found[topic]) >= per_topic for topic in topics):
            break
        start = max(cursor - page, 0)
        rows = [row for row in await feed.rows_after(start, page) if row.position <= cursor]
        for row in reversed(rows):
            for index in reversed(range(len(row.messages))):
                message = row.messages[index]
                if message.topic in found and len(found[message.topic]) < per_topic:
                    found[message.topic].append((row.position, index, message))
        cursor = start
    merged = sorted(item for items in found.values() for item in items)
    return head, merged


def event_payload(message: Message, redact: bool) -> dict[str, Any]:
    """A message as the stream sends it in `data:`; dead letters without the original for
    keys that may not read rejections."""
    payload = message.payload
    if redact and message.topic == DEAD_LETTERS and "original" in payload:
        payload = {k: v for k, v in payload.items() if k != "original"}
    return {"id": message.id, "key": message.key, **payload}


def state_change_of(row: FeedRow) -> Iterable[tuple[str, str]]:
    for message in row.messages:
        if message.topic == STATE_CHANGES:
            yield message.payload["client_id"], message.payload["to_state"]


def _event_text(position: int, index: int, message: Message, redact: bool) -> bytes:
    data = orjson.dumps(event_payload(message, redact))
    return b"id: %d.%d\nevent: %s\ndata: %s\n\n" % (
        position,
        index,
        message.topic.encode(),
        data,
    )


def _row_text(row: FeedRow, topics: frozenset[str], redact: bool, after_index: int = -1) -> bytes:
    """The SSE text of a row's messages (those of `topics`, after `after_index`)."""
    return b"".join(
        _event_text(row.position, i, message, redact)
        for i, message in enumerate(row.messages)
        if i > after_index and message.topic in topics
    )


def _page_text(rows: list[FeedRow], topics: frozenset[str], redact: bool) -> bytes:
    return b"".join(_row_text(row, topics, redact) for row in rows)


async def sse_events(
    feed: OutboxFeed,
    *,
    after: tuple[int, int | None],
    topics: frozenset[str],
    redact_originals: bool,
    keepalive: float,
    max_seconds: float = 0.0,
    page: int = 100,
    ended: Callable[[], str | None] = _never,
) -> AsyncIterator[bytes]:
    """The SSE body for one connection: resume point `after` = (position, index or None).

    `max_seconds` > 0 ends the response after about that long, between events: EventSource
    then reconnects with the last `id` it saw (as after any disconnect), so nothing is
    missed; proxies that cap a connection's lifetime, and tests, need an end.

    `page` rows at most are held at a time, sent as one chunk; the next page is read only
    once the server could send the last (back-pressure). `ended()` names why the stream
    must end now (its key was revoked, say): it ends between pages with a comment saying
    why.
    """
    ends = time.monotonic() + max_seconds if max_seconds > 0 else math.inf
    encode = functools.partial(_page_text, topics=topics, redact=redact_originals)
    yield b"retry: 3000\n: kapflow stream\n\n"
    cursor, index = after
    if index is not None:
        # Resume inside row `cursor`: its messages after `index`, then the rows after it.
        for row in await feed.rows_after(cursor - 1, 1):
            if row.position == cursor and (text := _row_text(row, topics, redact_originals, index)):
                yield text
    while not feed.stopping and time.monotonic() < ends:
        why = ended()
        if why is not None:
            yield b": stream ended: %s\n\n" % why.encode()
            return
        found = await feed.page_after(cursor, page, encode)
        if found is not None:
            cursor, text = found
            if text:
                yield text
            # A page from the in-memory tail involves no await of its own: let the other
            # requests in between pages (a fast reader must not hold the loop).
            await asyncio.sleep(0)
            continue
        wait = min(keepalive, max(ends - time.monotonic(), 0.0))
        if not await feed.wait_beyond(cursor, wait, ended) and wait == keepalive:
            yield b": keep-alive\n\n"

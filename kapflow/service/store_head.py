"""The store head: one value, kept outside the database, that pins down what the store held.

Issue 18, finding 3: each client's chain starts from a known genesis and has no key, so
an insider who edits an adverse event and recomputes that client's chain (or deletes
every row of a client, or a rejection) leaves a store that verifies. What no history
derives — that a client existed, the rejected log, the order of it all — needs an anchor
outside the store, as the access log's head is (service/audit.py `verify_access_log`).

`kapflow verify` prints `store head: H.R:HASH`: H is the last history position and R the
last rejected-log position it covers, HASH a SHA-256 (HMAC-SHA256 with the head key, when
one is given) over every history row up to H as (position, client, seq, entry hash) and
every rejected-log row up to R as (position, SHA-256 of its content), in position order.
Both logs only ever grow, so a head taken earlier is checked by recomputing it over the
same positions: rows appended since are outside it and do not change it; a row up to
there removed, or rewritten with its chain recomputed, does.

Keyed with `KAPFLOW_HEAD_KEY` (or `--head-key-file`), kept away from the database: with
the database alone nobody can compute the head of a rewritten store. Without a key the
head is plain SHA-256, which still catches rewriting done after the head was kept.

Parked events are not covered (they leave the store when applied); receipts are not
either, but each must stand for a history entry, a rejection or a parked event, and each
of those for a receipt (service/derived_rows.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from kapflow.store.base import EventStore

HEAD_KEY_ENV = "KAPFLOW_HEAD_KEY"
_DOMAIN = b"kapflow store head 1\n"  # a head of another shape never compares equal
_PAGE = 10_000


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class StoreHead:
    history: int  # the last history position covered
    rejections: int  # the last rejected-log position covered
    digest: str
    keyed: bool

    def text(self) -> str:
        return f"{self.history}.{self.rejections}:{self.digest}"


def parse_store_head(text: str) -> tuple[int, int, str]:
    """`H.R:HASH` as `kapflow verify` prints it; ValueError if it is not that."""
    positions, _, digest = text.partition(":")
    history, _, rejections = positions.partition(".")
    if not (history.isdigit() and rejections.isdigit()) or len(digest) != 64:
        raise ValueError(f"not H.R:HASH as verify prints its store head: {text!r}")
    return int(history), int(rejections), digest.lower()


def head_key(key_file: str | None = None) -> bytes | None:
    """The head key: the file's content if one is named, else `KAPFLOW_HEAD_KEY`, else
    None (an unkeyed head)."""
    if key_file:
        key = Path(key_file).read_bytes().strip()
        if not key:
            raise ValueError(f"the head key file {key_file} is empty")
        return key
    text = os.environ.get(HEAD_KEY_ENV, "").strip()
    return text.encode() if text else None


def store_head(
    store: EventStore, key: bytes | None, upto: tuple[int, int] | None = None
) -> StoreHead:
    """The store's head now, or over the positions `upto` (history, rejected log) of a head
    taken earlier."""
    history, rejections = upto if upto is not None else store.last_positions()
    mac: _Digest = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    mac.update(_DOMAIN + orjson.dumps([history, rejections]) + b"\n")
    for link in _history_links(store, history):
        mac.update(orjson.dumps(link) + b"\n")
    for position, content in _rejections(store, rejections):
        mac.update(orjson.dumps([position, content]) + b"\n")
    return StoreHead(history, rejections, mac.hexdigest(), key is not None)


def _history_links(store: EventStore, upto: int) -> Iterator[tuple[int, str, int, str]]:
    after = 0
    while after < upto and (links := store.history_links(after, _PAGE)):
        for link in links:
            if link[0] > upto:
                return
            yield link
        after = links[-1][0]


def _rejections(store: EventStore, upto: int) -> Iterator[tuple[int, str]]:
    after = 0
    while after < upto and (rows := store.rejections(limit=_PAGE, after=after)):
        for position, record in rows:
            if position > upto:
                return
            fields = [
                record.key_source,
                record.key_id,
                record.source,
                record.event_id,
                record.client_id,
                record.type,
                record.recorded_at,
                record.reasons,
                record.original,
            ]
            yield position, hashlib.sha256(orjson.dumps(fields)).hexdigest()
        after = rows[-1][0]


@dataclass(slots=True)
class StoreHeadCheck:
    """The head `kapflow verify` prints, and what checking a head kept earlier found."""

    head: StoreHead
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "head": self.head.text(),
            "keyed": self.head.keyed,
            "problems": list(self.problems),
        }


def check_store_head(store: EventStore, key: bytes | None, expected: str | None) -> StoreHeadCheck:
    """The store's head now; and if `expected` (a head kept earlier) is given, whether
    the store still holds everything it covered, unchanged."""
    check = StoreHeadCheck(store_head(store, key))
    if expected is None:
        return check
    history, rejections, digest = parse_store_head(expected)
    if check.head.history < history or check.head.rejections < rejections:
        check.problems.append(
            f"the store ends at history {check.head.history}, rejected log"
            f" {check.head.rejections}; the head kept earlier covers {history}.{rejections}:"
            " rows were removed from the end"
        )
    again = store_head(store, key, (history, rejections))
    if not hmac.compare_digest(again.digest, digest):
        keying = "with the head key" if key else "without a head key"
        check.problems.append(
            f"store head {history}.{rejections} no longer matches ({keying}): history or"
            " rejected-log rows it covers were removed or rewritten, or the key differs"
        )
    return check

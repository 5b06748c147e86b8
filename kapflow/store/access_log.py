"""The access log: who read which client's history, replayed it, exported or verified.

Why it is stored next to the event store (same database URL, own table): auditors must be
able to show who looked at clinical histories long after the service restarted, and a log
that lives in process memory or a rotating text file cannot do that. It is append-only and
holds ids and action names only, never what was read.

Kept apart from `EventStore` on purpose: recording a read is not part of the event
transaction, and the store adapters are owned by the core; this module only adds a table.

Tamper evidence (HIPAA 164.312(b) audit controls; OWASP: protect the logs): like the
histories, each row carries the hash of the row before it and a hash over that link, its
position and its fields. Rows are appended one at a time under a lock (SQLite's write lock,
a PostgreSQL advisory lock), so the chain has one order however many processes write.
Removing or altering a row breaks the chain at that row, and `kapflow verify` says which
(service/audit.py). Someone who rewrites every later row can recompute a chain, so verify
also prints the head (last position and hash) for the auditor to keep outside the database.
A store written before the chain existed is migrated in place the first time it is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_base,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_chain,
    wait_fixed,
)

from kapflow.store.base import StoreError
from kapflow.store.database import database_kind, sqlite_path
from kapflow.store.file_modes import create_private
from workflow.client import GENESIS_HASH

log = logging.getLogger("kapflow.access_log")

_R = TypeVar("_R")

# Bounded retries: a read waits at most about ATTEMPTS x (BUSY_TIMEOUT_S or a connect
# timeout) plus the delays before it is refused with 503; the next request starts afresh.
ATTEMPTS = 3
RETRY_DELAYS_S = (0.25, 1.0)
BUSY_TIMEOUT_S = 5.0

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_log (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    client_id TEXT,
    detail TEXT,
    prev_hash TEXT,
    hash TEXT
);
CREATE INDEX IF NOT EXISTS access_log_by_client ON access_log (client_id, position);
"""

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_log (
    position BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    client_id TEXT,
    detail TEXT,
    prev_hash TEXT,
    hash TEXT
);
CREATE INDEX IF NOT EXISTS access_log_by_client ON access_log (client_id, position);
"""

_COLUMNS = "position, at, who, role, action, client_id, detail, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class AccessRecord:
    at: str  # RFC 3339, server clock: when the read happened
    who: str  # the API key's name
    role: str
    action: str  # history | replay | export | verify | rejections | parked | access-log
    client_id: str | None = None
    detail: str | None = None  # the query in codes (e.g. `as_of=…`, `format=csv`), no data
    position: int | None = None
    prev_hash: str | None = None  # the hash of the row before it (GENESIS for the first)
    hash: str | None = None  # over prev_hash, position and every field above

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "at": self.at,
            "who": self.who,
            "role": self.role,
            "action": self.action,
            "client_id": self.client_id,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def chained(self, position: int, prev_hash: str) -> AccessRecord:
        """This record at `position`, linked to `prev_hash`, with its own hash."""
        linked = replace(self, position=position, prev_hash=prev_hash, hash=None)
        return replace(linked, hash=access_hash(linked))


def access_hash(entry: AccessRecord) -> str:
    """SHA-256 over the previous row's hash, the row's position and every recorded field.

    The position is covered so that a removed row cannot be hidden by renumbering the rest;
    an absent `client_id`/`detail` hashes differently from an empty one.
    """
    material = "\x1e".join(
        (
            entry.prev_hash or "",
            str(entry.position),
            entry.at,
            entry.who,
            entry.role,
            entry.action,
            "\x1f" if entry.client_id is None else entry.client_id,
            "\x1f" if entry.detail is None else entry.detail,
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()


class AccessLog(Protocol):
    def record(self, entry: AccessRecord) -> int: ...

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[AccessRecord]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def iter_entries(
    access_log: AccessLog,
    *,
    since: str | None = None,
    until: str | None = None,
    client_id: str | None = None,
    who: str | None = None,
    page: int = 1000,
) -> Iterator[AccessRecord]:
    """Every row in position order (optionally with `since <= at <= until`, of one client,
    by one reader), page by page."""
    after = 0
    filters = {"since": since, "until": until, "client_id": client_id, "who": who}
    while rows := access_log.entries(limit=page, after=after, **filters):
        yield from rows
        after = rows[-1].position or after + len(rows)


def _filters(
    after: int,
    client_id: str | None,
    who: str | None,
    since: str | None,
    until: str | None,
    mark: str,
) -> tuple[str, list[Any]]:
    clauses: list[str] = [f"position > {mark}"]
    params: list[Any] = [after]
    for clause, value in (
        (f"client_id = {mark}", client_id),
        (f"who = {mark}", who),
        (f"at >= {mark}", since),
        (f"at <= {mark}", until),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return " AND ".join(clauses), params


class _Rows(Protocol):
    """The two calls the chain needs, over either driver's connection."""

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> None: ...


def _chain_unchained(rows: _Rows, mark: str) -> tuple[str, int]:
    """Chain the rows written without a hash after the last chained one; returns the hash
    of the last row and how many rows were chained.

    Such rows exist once, in a store written before the chain existed (chained when it is
    first opened), or briefly while an older kapflow still runs during an upgrade. Rows
    without a hash BEFORE a chained row are never chained afterwards: verify reports them.
    """
    last = rows.fetch("SELECT position, hash FROM access_log ORDER BY position DESC LIMIT 1")
    if not last:
        return GENESIS_HASH, 0
    if last[0][1] is not None:
        return str(last[0][1]), 0
    anchor = rows.fetch(
        "SELECT position, hash FROM access_log WHERE hash IS NOT NULL"
        " ORDER BY position DESC LIMIT 1"
    )
    after, prev_hash = (int(anchor[0][0]), str(anchor[0][1])) if anchor else (0, GENESIS_HASH)
    pending = rows.fetch(
        f"SELECT {_COLUMNS} FROM access_log WHERE position > {mark} ORDER BY position", (after,)
    )
    for row in pending:
        chained = _record(row).chained(int(row[0]), prev_hash)
        rows.run(
            f"UPDATE access_log SET prev_hash = {mark}, hash = {mark} WHERE position = {mark}",
            (chained.prev_hash, chained.hash, chained.position),
        )
        prev_hash = chained.hash or GENESIS_HASH
    return prev_hash, len(pending)


def _log_migration(chained: int) -> None:
    log.warning(
        "access log migrated in place: added the hash chain (prev_hash, hash) and chained"
        " %d existing rows",
        chained,
    )


class _SQLiteRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)


def _retrying(
    attempts: int, retry: retry_base, before_sleep: Callable[[RetryCallState], None]
) -> Retrying:
    """Bounded retries: `attempts` in all, RETRY_DELAYS_S apart (read when called, so a test
    may shorten them); the last error is raised as it is."""
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_chain(*(wait_fixed(delay) for delay in RETRY_DELAYS_S)),
        retry=retry,
        before_sleep=before_sleep,
        reraise=True,
    )


def _delay(state: RetryCallState) -> float:
    return state.next_action.sleep if state.next_action else 0.0


def _error_class(state: RetryCallState) -> str:
    return type(state.outcome.exception() if state.outcome else None).__name__


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


class SQLiteAccessLog:
    """One connection, serialised by a lock: records are tiny and rare next to reads.

    A `database is locked` (another process holds the write lock longer than the busy
    timeout) is retried a bounded number of times, each with a warning naming the attempt.
    """

    def __init__(self, url: str) -> None:
        self._path = sqlite_path(url)
        create_private(self._path)  # when the access log is the first to open the file
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._run("opening", self._migrate)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run(
        self, doing: str, work: Callable[[sqlite3.Connection], _R], attempts: int = ATTEMPTS
    ) -> _R:
        def once() -> _R:
            with self._lock:
                conn = self._connection()
                try:
                    return work(conn)
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")

        def warn(state: RetryCallState) -> None:
            log.warning(
                "access log: database is locked while %s; attempt %d of %d in %.2fs",
                doing,
                state.attempt_number + 1,
                attempts,
                _delay(state),
            )

        busy = retry_if_exception(lambda e: isinstance(e, sqlite3.Error) and _is_busy(e))
        try:
            return _retrying(attempts, busy, warn)(once)
        except sqlite3.Error as error:
            raise StoreError(f"access log: {doing} failed: {error}") from error

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.executescript(_SQLITE_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(access_log)")}
        if "hash" in columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE access_log ADD COLUMN prev_hash TEXT")
        conn.execute("ALTER TABLE access_log ADD COLUMN hash TEXT")
        _, chained = _chain_unchained(_SQLiteRows(conn), "?")
        conn.execute("COMMIT")
        _log_migration(chained)

    def record(self, entry: AccessRecord) -> int:
        def append(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")  # the write lock orders the chain
            prev_hash, _ = _chain_unchained(_SQLiteRows(conn), "?")
            cursor = conn.execute(
                "INSERT INTO access_log (at, who, role, action, client_id, detail, prev_hash)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    entry.at,
                    entry.who,
                    entry.role,
                    entry.action,
                    entry.client_id,
                    entry.detail,
                    prev_hash,
                ),
            )
            position = int(cursor.lastrowid or 0)
            chained = entry.chained(position, prev_hash)
            conn.execute(
                "UPDATE access_log SET hash = ? WHERE position = ?", (chained.hash, position)
            )
            conn.execute("COMMIT")
            return position

        return self._run("recording a read", append)

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[AccessRecord]:
        where, params = _filters(after, client_id, who, since, until, "?")
        rows = self._run(
            "reading",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM access_log WHERE {where} ORDER BY position LIMIT ?",
                [*params, limit],
            ).fetchall(),
        )
        return [_record(row) for row in rows]

    def ping(self) -> None:
        self._run(
            "checking",
            lambda conn: conn.execute("SELECT 1 FROM access_log LIMIT 1").fetchall(),
            attempts=1,
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _PostgresRows:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.conn.execute(sql, params).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)


class PostgresAccessLog:
    """Same table in PostgreSQL, through psycopg, on a connection of its own.

    The connection is reopened when it is lost (server restart, failover, idle timeout):
    the failed operation is retried a bounded number of times, with one warning per
    attempt naming the error class; while the server stays down the caller gets a
    `StoreError` at once and the next call tries again. Appends serialise on an advisory
    lock, so several processes (API replicas) extend one chain. A connection lost during
    a commit may leave a read recorded twice after the retry: never not at all.
    """

    def __init__(self, url: str) -> None:
        import psycopg

        from kapflow.store.postgres import conninfo_from_url

        self._psycopg = psycopg
        self._conninfo = conninfo_from_url(url)
        self._conn: Any = None
        self._lock = threading.Lock()
        self._failing = False
        self._run("opening", self._migrate)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = self._psycopg.connect(self._conninfo, autocommit=True)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(self._psycopg.Error):  # already gone is fine
                self._conn.close()
            self._conn = None

    def _run(self, doing: str, work: Callable[[Any], _R], attempts: int = ATTEMPTS) -> _R:
        psycopg = self._psycopg

        def once() -> _R:
            try:
                with self._lock:
                    return work(self._connection())
            except psycopg.OperationalError:
                with self._lock:
                    self._drop()  # reconnect on the next attempt
                self._failing = True
                raise

        def warn(state: RetryCallState) -> None:
            log.warning(
                "access log: lost PostgreSQL (%s) while %s; reconnecting, attempt %d of %d",
                _error_class(state),
                doing,
                state.attempt_number + 1,
                attempts,
            )

        lost = retry_if_exception_type(psycopg.OperationalError)
        try:
            result = _retrying(attempts, lost, warn)(once)
        except psycopg.OperationalError as error:
            raise StoreError(
                f"access log: {doing} failed: PostgreSQL unavailable"
                f" ({type(error).__name__}); retry once the server is back"
            ) from None
        except psycopg.Error as error:
            # Server messages may quote row data: keep the error class only.
            raise StoreError(f"access log: {doing} failed: {type(error).__name__}") from None
        if self._failing:
            self._failing = False
            log.warning("access log: PostgreSQL connection restored")
        return result

    def _migrate(self, conn: Any) -> None:
        from kapflow.store.database import ACCESS_LOG_LOCK, KAPFLOW_LOCKS

        conn.execute(_POSTGRES_SCHEMA)
        if self._has_chain(conn):
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (KAPFLOW_LOCKS, ACCESS_LOG_LOCK))
            if self._has_chain(conn):  # another process migrated it meanwhile
                return
            conn.execute(
                "ALTER TABLE access_log ADD COLUMN IF NOT EXISTS prev_hash TEXT,"
                " ADD COLUMN IF NOT EXISTS hash TEXT"
            )
            _, chained = _chain_unchained(_PostgresRows(conn), "%s")
        _log_migration(chained)

    @staticmethod
    def _has_chain(conn: Any) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'access_log' AND column_name = 'hash'"
        ).fetchone()
        return bool(row and row[0])

    def record(self, entry: AccessRecord) -> int:
        from kapflow.store.database import ACCESS_LOG_LOCK, KAPFLOW_LOCKS

        def append(conn: Any) -> int:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", (KAPFLOW_LOCKS, ACCESS_LOG_LOCK)
                )
                prev_hash, _ = _chain_unchained(_PostgresRows(conn), "%s")
                [position] = conn.execute(
                    "SELECT nextval(pg_get_serial_sequence('access_log', 'position'))"
                ).fetchone()
                chained = entry.chained(int(position), prev_hash)
                conn.execute(
                    f"INSERT INTO access_log ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (
                        chained.position,
                        chained.at,
                        chained.who,
                        chained.role,
                        chained.action,
                        chained.client_id,
                        chained.detail,
                        chained.prev_hash,
                        chained.hash,
                    ),
                )
            return int(position)

        return self._run("recording a read", append)

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[AccessRecord]:
        where, params = _filters(after, client_id, who, since, until, "%s")
        rows = self._run(
            "reading",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM access_log WHERE {where} ORDER BY position LIMIT %s",
                [*params, limit],
            ).fetchall(),
        )
        return [_record(row) for row in rows]

    def ping(self) -> None:
        self._run(
            "checking",
            lambda conn: conn.execute("SELECT 1").fetchone(),
            attempts=1,
        )

    def close(self) -> None:
        with self._lock:
            self._drop()


def _record(row: Any) -> AccessRecord:
    position, at, who, role, action, client_id, detail, prev_hash, hash_ = row
    return AccessRecord(at, who, role, action, client_id, detail, int(position), prev_hash, hash_)


def open_access_log(url: str) -> AccessLog:
    """The access log in the database the event store uses."""
    if database_kind(url) == "sqlite":
        return SQLiteAccessLog(url)
    return PostgresAccessLog(url)

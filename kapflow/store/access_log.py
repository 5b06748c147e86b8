"""The access log: who read which client's history, replayed it, exported or verified.

Why it is stored next to the event store (same database URL, own table): auditors must be
able to show who looked at clinical histories long after the service restarted, and a log
that lives in process memory or a rotating text file cannot do that. It is append-only and
holds ids and action names only, never what was read.

Kept apart from `EventStore` on purpose: recording a read is not part of the event
transaction, and the store adapters are owned by the core; this module only adds a table.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from kapflow.store.base import StoreError
from kapflow.store.sqlite import path_from_url

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_log (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    client_id TEXT,
    detail TEXT
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
    detail TEXT
);
CREATE INDEX IF NOT EXISTS access_log_by_client ON access_log (client_id, position);
"""

_COLUMNS = "position, at, who, role, action, client_id, detail"


@dataclass(frozen=True, slots=True)
class AccessRecord:
    at: str  # RFC 3339, server clock: when the read happened
    who: str  # the API key's name
    role: str
    action: str  # history | replay | export | verify | rejections | parked | access-log
    client_id: str | None = None
    detail: str | None = None  # the query in codes (e.g. `as_of=…`, `format=csv`), no data
    position: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "at": self.at,
            "who": self.who,
            "role": self.role,
            "action": self.action,
            "client_id": self.client_id,
            "detail": self.detail,
        }


class AccessLog(Protocol):
    def record(self, entry: AccessRecord) -> int: ...

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
    ) -> list[AccessRecord]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def _filters(
    after: int, client_id: str | None, who: str | None, mark: str
) -> tuple[str, list[Any]]:
    clauses: list[str] = [f"position > {mark}"]
    params: list[Any] = [after]
    if client_id is not None:
        clauses.append(f"client_id = {mark}")
        params.append(client_id)
    if who is not None:
        clauses.append(f"who = {mark}")
        params.append(who)
    return " AND ".join(clauses), params


class SQLiteAccessLog:
    """One connection, serialised by a lock: records are tiny and rare next to reads."""

    def __init__(self, url: str) -> None:
        try:
            self._conn = sqlite3.connect(
                path_from_url(url), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the access log: {error}") from error
        self._lock = threading.Lock()

    def record(self, entry: AccessRecord) -> int:
        try:
            with self._lock:
                cursor = self._conn.execute(
                    "INSERT INTO access_log (at, who, role, action, client_id, detail)"
                    " VALUES (?,?,?,?,?,?)",
                    (entry.at, entry.who, entry.role, entry.action, entry.client_id, entry.detail),
                )
                return int(cursor.lastrowid or 0)
        except sqlite3.Error as error:
            raise StoreError(f"cannot record access: {error}") from error

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
    ) -> list[AccessRecord]:
        where, params = _filters(after, client_id, who, "?")
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM access_log WHERE {where} ORDER BY position LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [_record(row) for row in rows]

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as error:
            raise StoreError(f"access log unreachable: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresAccessLog:
    """Same table in PostgreSQL, through psycopg (autocommit: each record is its own fact)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(_POSTGRES_SCHEMA)
        except psycopg.Error as error:
            raise StoreError(f"cannot open the access log: {type(error).__name__}") from error
        self._lock = threading.Lock()

    def record(self, entry: AccessRecord) -> int:
        try:
            with self._lock:
                row = self._conn.execute(
                    "INSERT INTO access_log (at, who, role, action, client_id, detail)"
                    " VALUES (%s,%s,%s,%s,%s,%s) RETURNING position",
                    (entry.at, entry.who, entry.role, entry.action, entry.client_id, entry.detail),
                ).fetchone()
        except self._psycopg.Error as error:
            raise StoreError(f"cannot record access: {type(error).__name__}") from error
        return int(row[0]) if row else 0

    def entries(
        self,
        *,
        limit: int = 100,
        after: int = 0,
        client_id: str | None = None,
        who: str | None = None,
    ) -> list[AccessRecord]:
        where, params = _filters(after, client_id, who, "%s")
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM access_log WHERE {where} ORDER BY position LIMIT %s",
                [*params, limit],
            ).fetchall()
        return [_record(row) for row in rows]

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except self._psycopg.Error as error:
            raise StoreError(f"access log unreachable: {type(error).__name__}") from error

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _record(row: Any) -> AccessRecord:
    position, at, who, role, action, client_id, detail = row
    return AccessRecord(at, who, role, action, client_id, detail, int(position))


def open_access_log(url: str) -> AccessLog:
    """The access log in the database the event store uses."""
    if url.startswith("sqlite:///"):
        return SQLiteAccessLog(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresAccessLog(url)
    raise StoreError("unsupported database URL: use sqlite:///PATH or postgresql://…")

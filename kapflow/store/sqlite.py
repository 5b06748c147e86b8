"""SQLite adapter: the embedded default (`sqlite:///./kapflow.db`), WAL mode.

Writes take the database lock up front (`BEGIN IMMEDIATE`), so one writer at a time
appends and every batch is one atomic transaction; readers see committed data only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from kapflow.store.base import (
    BatchWrites,
    HistoryEntry,
    ParkedEvent,
    StoreError,
)
from kapflow.store.sql import HISTORY_COLUMNS, SqlReads
from workflow.client import ClientSnapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    position INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    pathway_version TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (client_id, seq)
);
CREATE TABLE IF NOT EXISTS receipts (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    client_id TEXT,
    outcome TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS clients_by_state ON clients (state);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    due TEXT NOT NULL,
    task TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (status, owner, due);
CREATE INDEX IF NOT EXISTS tasks_by_client ON tasks (client_id);
CREATE TABLE IF NOT EXISTS rejections (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    key_source TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT,
    event_id TEXT,
    client_id TEXT,
    type TEXT,
    recorded_at TEXT NOT NULL,
    reasons TEXT NOT NULL,
    original TEXT NOT NULL,
    UNIQUE (key_source, key_id)
);
CREATE TABLE IF NOT EXISTS parked (
    arrival INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    event TEXT NOT NULL,
    reasons TEXT NOT NULL,
    UNIQUE (source, event_id)
);
CREATE INDEX IF NOT EXISTS parked_by_client ON parked (client_id, arrival);
CREATE TABLE IF NOT EXISTS outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    client_id TEXT,
    seq INTEGER,
    key_source TEXT,
    key_id TEXT,
    recorded_at TEXT NOT NULL,
    published_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

SCHEMA_VERSION = "1"


def path_from_url(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise ValueError("a SQLite URL looks like sqlite:///./kapflow.db")
    path = url[len("sqlite:///") :]
    return path or ":memory:"


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def receipts(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        wanted = set(keys)
        ids = sorted({event_id for _, event_id in keys})
        for chunk in _chunks(ids):
            rows = self._conn.execute(
                "SELECT source, event_id, outcome FROM receipts WHERE event_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for source, event_id, outcome in rows:
                if (source, event_id) in wanted:
                    found[(source, event_id)] = outcome
        return found

    def clients(self, client_ids: list[str]) -> dict[str, ClientSnapshot]:
        found: dict[str, ClientSnapshot] = {}
        for chunk in _chunks(sorted(set(client_ids))):
            rows = self._conn.execute(
                "SELECT client_id, snapshot FROM clients WHERE client_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for client_id, snapshot in rows:
                found[client_id] = ClientSnapshot.from_record(orjson.loads(snapshot))
        return found

    def parked(self, client_id: str) -> list[ParkedEvent]:
        rows = self._conn.execute(
            "SELECT source, event_id, client_id, type, occurred_at, recorded_at, event, reasons"
            " FROM parked WHERE client_id = ? ORDER BY arrival",
            (client_id,),
        ).fetchall()
        return [ParkedEvent(*row) for row in rows]

    def write(self, batch: BatchWrites) -> None:
        execute_many = self._conn.executemany
        if batch.history:
            execute_many(
                "INSERT INTO history (client_id, seq, source, event_id, type, occurred_at,"
                " recorded_at, pathway_version, from_state, to_state, event, outcome,"
                " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.client_id,
                        e.seq,
                        e.source,
                        e.event_id,
                        e.type,
                        e.occurred_at,
                        e.recorded_at,
                        e.pathway_version,
                        e.from_state,
                        e.to_state,
                        e.event,
                        e.outcome,
                        e.prev_hash,
                        e.hash,
                    )
                    for e in batch.history
                ],
            )
        if batch.receipts:
            execute_many(
                "INSERT INTO receipts VALUES (?,?,?,?,?) ON CONFLICT (source, event_id)"
                " DO UPDATE SET outcome = excluded.outcome, client_id = excluded.client_id",
                [
                    (r.source, r.event_id, r.client_id, r.outcome, r.recorded_at)
                    for r in batch.receipts.values()
                ],
            )
        if batch.rejections:
            execute_many(
                "INSERT INTO rejections (key_source, key_id, source, event_id, client_id, type,"
                " recorded_at, reasons, original) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (key_source, key_id) DO NOTHING",
                [
                    (
                        r.key_source,
                        r.key_id,
                        r.source,
                        r.event_id,
                        r.client_id,
                        r.type,
                        r.recorded_at,
                        r.reasons,
                        r.original,
                    )
                    for r in batch.rejections
                ],
            )
        if batch.parked_removed:
            execute_many(
                "DELETE FROM parked WHERE source = ? AND event_id = ?", list(batch.parked_removed)
            )
        if batch.parked_added:
            execute_many(
                "INSERT INTO parked (source, event_id, client_id, type, occurred_at, recorded_at,"
                " event, reasons) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        p.source,
                        p.event_id,
                        p.client_id,
                        p.type,
                        p.occurred_at,
                        p.recorded_at,
                        p.event,
                        p.reasons,
                    )
                    for p in batch.parked_added.values()
                ],
            )
        if batch.clients:
            execute_many(
                "INSERT INTO clients (client_id, state, seq, snapshot) VALUES (?,?,?,?)"
                " ON CONFLICT (client_id) DO UPDATE SET"
                " state = excluded.state, seq = excluded.seq, snapshot = excluded.snapshot",
                [
                    (c.client_id, c.state, c.seq, orjson.dumps(c.to_record()).decode())
                    for c in batch.clients.values()
                ],
            )
        if batch.tasks:
            execute_many(
                "INSERT INTO tasks (task_id, client_id, status, owner, due, task)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (task_id) DO UPDATE SET"
                " status = excluded.status, owner = excluded.owner, due = excluded.due,"
                " task = excluded.task",
                [
                    (
                        t.id,
                        t.for_,
                        t.status,
                        t.owner,
                        t.due,
                        orjson.dumps(t.as_dict()).decode(),
                    )
                    for t in batch.tasks.values()
                ],
            )
        if batch.outbox:
            execute_many(
                "INSERT INTO outbox (kind, client_id, seq, key_source, key_id, recorded_at)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (r.kind, r.client_id, r.seq, r.key_source, r.key_id, r.recorded_at)
                    for r in batch.outbox
                ],
            )


class SQLiteStore(SqlReads):
    placeholder = "?"

    def __init__(self, url: str = "sqlite:///./kapflow.db") -> None:
        self.url = url
        path = path_from_url(url)
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"database folder does not exist: {parent}")
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        conn = self._conn()
        with self._lock:
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                # Checkpoint the WAL every ~32 MiB rather than every 4 MiB: a batch
                # commit then rarely pays for a checkpoint's write and fsync.
                conn.execute("PRAGMA wal_autocheckpoint=8000")
                conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as error:
                raise StoreError(f"cannot open SQLite database: {error}") from error
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"cannot start a write transaction: {error}") from error
        try:
            yield _Transaction(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            conn.execute("ROLLBACK")
            raise StoreError(f"commit failed: {error}") from error

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    # Reads ----------------------------------------------------------------------------
    def get_client(self, client_id: str) -> ClientSnapshot | None:
        rows = self._query("SELECT snapshot FROM clients WHERE client_id = ?", (client_id,))
        return ClientSnapshot.from_record(json.loads(rows[0][0])) if rows else None

    def clients(self, state: str | None = None, limit: int = 1000) -> list[ClientSnapshot]:
        if state is None:
            rows = self._query("SELECT snapshot FROM clients ORDER BY client_id LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT snapshot FROM clients WHERE state = ? ORDER BY client_id LIMIT ?",
                (state, limit),
            )
        return [ClientSnapshot.from_record(json.loads(row[0])) for row in rows]

    def client_ids(self) -> Iterator[str]:
        for (client_id,) in self._query("SELECT client_id FROM clients ORDER BY client_id"):
            yield client_id

    def count_by_state(self) -> dict[str, int]:
        return dict(self._query("SELECT state, count(*) FROM clients GROUP BY state"))

    def history(self, client_id: str) -> list[HistoryEntry]:
        rows = self._query(
            f"SELECT {HISTORY_COLUMNS} FROM history WHERE client_id = ? ORDER BY seq",
            (client_id,),
        )
        return [HistoryEntry(*row) for row in rows]

    def iter_history(self) -> Iterator[HistoryEntry]:
        cursor = self._conn().execute(
            f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY client_id, seq"
        )
        while rows := cursor.fetchmany(2000):
            for row in rows:
                yield HistoryEntry(*row)

    def mark_published(self, positions: list[int], at: str) -> None:
        conn = self._conn()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE outbox SET published_at = ? WHERE position = ?",
                [(at, position) for position in positions],
            )
            conn.execute("COMMIT")

    def stats(self) -> dict[str, int]:
        counts = {}
        for table in ("history", "clients", "tasks", "rejections", "parked", "outbox"):
            counts[table] = int(self._query(f"SELECT count(*) FROM {table}")[0][0])
        counts["open_tasks"] = int(
            self._query("SELECT count(*) FROM tasks WHERE status IN ('requested', 'in-progress')")[
                0
            ][0]
        )
        return counts

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]

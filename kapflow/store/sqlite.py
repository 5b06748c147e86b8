"""SQLite adapter: the embedded default (`sqlite:///./kapflow.db`), WAL mode.

Writes take the database lock up front (`BEGIN IMMEDIATE`), so one writer at a time
appends and every batch is one atomic transaction; readers see committed data only.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kapflow.store.base import (
    BatchWrites,
    ClientHistory,
    HistoryEntry,
    ParkedEvent,
    Receipt,
    StoreError,
    UnstorableData,
)
from kapflow.store.checkpointer import BACKSTOP_PAGES, WalCheckpointer
from kapflow.store.codec import KEY_CHECK_META, StorageCipher, StorageCodec, StoreAccess
from kapflow.store.database import sqlite_path
from kapflow.store.due import CLOCK_MARK, ReceiptKey, fire_times, next_dues, recorded_until
from kapflow.store.file_modes import create_private
from kapflow.store.sql import (
    ENCODED_COLUMNS,
    HISTORY_COLUMNS,
    HISTORY_OF_CLIENTS,
    HOLDS_VALUES,
    OPEN_STATUS_SQL,
    RECEIPT_COLUMNS,
    RECEIPT_REWRITE,
    SCHEMA_VERSION,
    SNAPSHOTS_OF_CLIENTS,
    SqlReads,
    client_histories,
    history_entry,
    history_row,
    parked_event,
    parked_row,
    receipt_of,
    receipt_row,
    rejection_row,
    reseal_select,
    reseal_update,
    resealed,
    snapshot_of,
    snapshot_value,
    task_of,
    task_value,
)
from workflow.client import ClientSnapshot
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.timers import CLOCK_SOURCE

log = logging.getLogger("kapflow.store")

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
    digest BLOB,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    next_due TEXT
);
CREATE INDEX IF NOT EXISTS clients_by_state ON clients (state);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    due TEXT NOT NULL,
    task TEXT NOT NULL,
    fires_at TEXT
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

# Version 2 (issue 10): the clock reads only the clients and tasks with a deadline due
# that it has not recorded yet, and pruning reads only old published rows.
INDEXES_2 = """
CREATE INDEX IF NOT EXISTS clients_next_due ON clients (next_due) WHERE next_due IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_fire_at ON tasks (fires_at) WHERE fires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at)
    WHERE published_at IS NOT NULL;
"""
SCHEMA += INDEXES_2


def _receipts(conn: sqlite3.Connection, keys: list[ReceiptKey]) -> dict[ReceiptKey, Receipt]:
    """Receipts by their key (source, event_id): one primary-key search per source.

    A batch holds few sources, so `source = ? AND event_id IN (…)` searches the key;
    `(source, event_id) IN (VALUES …)` or `event_id IN (…)` alone would scan the table.
    """
    by_source: dict[str, list[str]] = {}
    for source, event_id in set(keys):
        by_source.setdefault(source, []).append(event_id)
    found: dict[ReceiptKey, Receipt] = {}
    for source, ids in sorted(by_source.items()):
        for chunk in _chunks(sorted(ids)):
            rows = conn.execute(
                f"SELECT {RECEIPT_COLUMNS} FROM receipts WHERE source = ? AND event_id IN"
                f" ({','.join('?' * len(chunk))})",
                (source, *chunk),
            ).fetchall()
            found.update(((source, row[1]), receipt_of(row)) for row in rows)
    return found


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, policy: CarePolicy, codec: StorageCodec) -> None:
        self._conn = conn
        self._policy = policy
        self._codec = codec

    def receipts(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Receipt]:
        return _receipts(self._conn, keys)

    def clients(self, client_ids: list[str]) -> dict[str, ClientSnapshot]:
        found: dict[str, ClientSnapshot] = {}
        for chunk in _chunks(sorted(set(client_ids))):
            rows = self._conn.execute(
                "SELECT client_id, snapshot FROM clients WHERE client_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for client_id, snapshot in rows:
                found[client_id] = snapshot_of(client_id, snapshot, self._codec)
        return found

    def parked(self, client_id: str) -> list[ParkedEvent]:
        rows = self._conn.execute(
            "SELECT source, event_id, client_id, type, occurred_at, recorded_at, event, reasons"
            " FROM parked WHERE client_id = ? ORDER BY arrival",
            (client_id,),
        ).fetchall()
        return [parked_event(row, self._codec) for row in rows]

    def history(self, client_id: str) -> list[HistoryEntry]:
        rows = self._conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM history WHERE client_id = ? ORDER BY seq",
            (client_id,),
        ).fetchall()
        return [history_entry(row, self._codec) for row in rows]

    def _clock_mark(self, batch: BatchWrites) -> str | None:
        """The latest due time the clock has recorded, this batch included (kept in meta)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (CLOCK_MARK,)).fetchone()
        previous = row[0] if row else None
        mark = recorded_until(previous, batch.receipts)
        if mark != previous:
            self._conn.execute(
                "INSERT INTO meta VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (CLOCK_MARK, mark),
            )
        return mark

    def write(self, batch: BatchWrites) -> None:
        execute_many = self._conn.executemany
        codec = self._codec
        clock_mark = self._clock_mark(batch)
        if batch.history:
            execute_many(
                "INSERT INTO history (client_id, seq, source, event_id, type, occurred_at,"
                " recorded_at, pathway_version, from_state, to_state, event, outcome,"
                " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [history_row(e, codec) for e in batch.history],
            )
        if batch.receipts:
            execute_many(
                f"INSERT INTO receipts ({RECEIPT_COLUMNS}) VALUES (?,?,?,?,?,?) {RECEIPT_REWRITE}",
                [receipt_row(r) for r in batch.receipts.values()],
            )
        if batch.rejections:
            execute_many(
                "INSERT INTO rejections (key_source, key_id, source, event_id, client_id, type,"
                " recorded_at, reasons, original) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (key_source, key_id) DO NOTHING",
                [rejection_row(r, codec) for r in batch.rejections],
            )
        if batch.parked_removed:
            execute_many(
                "DELETE FROM parked WHERE source = ? AND event_id = ?", list(batch.parked_removed)
            )
        if batch.parked_added:
            execute_many(
                "INSERT INTO parked (source, event_id, client_id, type, occurred_at, recorded_at,"
                " event, reasons) VALUES (?,?,?,?,?,?,?,?)",
                [parked_row(p, codec) for p in batch.parked_added.values()],
            )
        if batch.clients:
            dues = next_dues(
                batch.clients.values(),
                self._policy,
                lambda keys: _receipts(self._conn, keys),
                batch.receipts,
                clock_mark,
            )
            execute_many(
                "INSERT INTO clients (client_id, state, seq, snapshot, next_due)"
                " VALUES (?,?,?,?,?) ON CONFLICT (client_id) DO UPDATE SET"
                " state = excluded.state, seq = excluded.seq, snapshot = excluded.snapshot,"
                " next_due = excluded.next_due",
                [
                    (c.client_id, c.state, c.seq, snapshot_value(c, codec), dues[c.client_id])
                    for c in batch.clients.values()
                ],
            )
        if batch.tasks:
            fires = fire_times(
                batch.tasks.values(),
                lambda keys: _receipts(self._conn, keys),
                batch.receipts,
                clock_mark,
            )
            execute_many(
                "INSERT INTO tasks (task_id, client_id, status, owner, due, task, fires_at)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT (task_id) DO UPDATE SET"
                " status = excluded.status, owner = excluded.owner, due = excluded.due,"
                " task = excluded.task, fires_at = excluded.fires_at",
                [
                    (t.id, t.for_, t.status, t.owner, t.due, task_value(t, codec), fires[t.id])
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

    def __init__(
        self,
        url: str = "sqlite:///./kapflow.db",
        policy: CarePolicy = DEFAULT_POLICY,
        *,
        cipher: StorageCipher | None = None,
        access: StoreAccess = "write",
    ) -> None:
        self.url = url
        self.policy = policy
        self.codec = StorageCodec(cipher)
        self.migrated_from: str | None = None
        path = sqlite_path(url)
        if access == "read" and path != ":memory:" and not holds_a_store(path):
            # A reader never creates a store: a typo in --db is an error, not a new file.
            raise StoreError(f"no kapflow store at {url}")
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"database folder does not exist: {parent}")
            create_private(path)
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        # Checkpoints off the commit path (store/checkpointer.py).
        self._checkpointer = WalCheckpointer(path) if path != ":memory:" else None
        conn = self._conn()
        try:
            with self._lock:
                self._open_schema(conn)
                self._check_key(conn, access)
        except BaseException:
            self.close()  # refused (a key, a newer schema): no thread or connection left
            raise

    def _check_key(self, conn: sqlite3.Connection, access: StoreAccess) -> None:
        """Refuse an encrypted store without its key; a writer with a key marks a new store
        encrypted (a reader never: store/codec.py `key_check_to_write`)."""
        stored = _key_check(conn)
        check = self.codec.key_check_to_write(
            stored, access, lambda: bool(conn.execute(HOLDS_VALUES).fetchone()[0])
        )
        if check is not None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (KEY_CHECK_META, check))
            stored = _key_check(conn)  # another writer's, if it came first
        self.codec.check_key(stored, access)

    def _open_schema(self, conn: sqlite3.Connection) -> None:
        """Create the schema, or migrate a store written by an earlier release in place."""
        if _schema_version(conn) == SCHEMA_VERSION:  # the usual case: no write lock taken
            conn.executescript(SCHEMA)
            return
        conn.execute("BEGIN IMMEDIATE")  # two processes opening an old store: one migrates
        try:
            found = _schema_version(conn)
            if found is not None and int(found) > int(SCHEMA_VERSION):
                raise StoreError(
                    f"this store has schema version {found}, newer than this kapflow"
                    f" ({SCHEMA_VERSION}): upgrade kapflow"
                )
            if found is not None and found != SCHEMA_VERSION:
                self._migrate(conn, found)
            for statement in _statements(SCHEMA):
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if self.migrated_from is not None:
            log.warning(
                "store %s migrated in place from schema version %s to %s",
                self._path,
                self.migrated_from,
                SCHEMA_VERSION,
            )

    def _migrate(self, conn: sqlite3.Connection, found: str) -> None:
        # First: every later step may read receipts, which now include their digest.
        if int(found) < 5:
            _add_receipt_digest(conn)
        if int(found) < 2:
            self._migrate_to_2(conn)
        # Version 2 → 3 needs no rewrite: a column of SQLite holds the codec's bytes beside
        # the TEXT of the rows before, and the codec reads both (store/codec.py). Nor does
        # 3 → 4: format 0x01 values stay readable beside the new 0x03 ones. 4 → 5 adds
        # receipts.digest, empty for the receipts before it.
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        self.migrated_from = found

    def _migrate_to_2(self, conn: sqlite3.Connection) -> None:
        # Version 1 → 2: the clock's columns (filled from every snapshot and open task)
        # and the indexes.
        conn.execute("ALTER TABLE clients ADD COLUMN next_due TEXT")
        conn.execute("ALTER TABLE tasks ADD COLUMN fires_at TEXT")
        for statement in _statements(INDEXES_2):
            conn.execute(statement)
        after = ""
        while rows := conn.execute(
            "SELECT client_id, snapshot FROM clients WHERE client_id > ?"
            " ORDER BY client_id LIMIT 1000",
            (after,),
        ).fetchall():
            after = rows[-1][0]
            snapshots = [snapshot_of(row[0], row[1], self.codec) for row in rows]
            dues = next_dues(snapshots, self.policy, lambda keys: _receipts(conn, keys))
            conn.executemany(
                "UPDATE clients SET next_due = ? WHERE client_id = ?",
                [(due, client_id) for client_id, due in dues.items()],
            )
        after = ""
        while rows := conn.execute(
            f"SELECT task_id, task FROM tasks WHERE status IN ({OPEN_STATUS_SQL})"
            " AND task_id > ? ORDER BY task_id LIMIT 1000",
            (after,),
        ).fetchall():
            after = rows[-1][0]
            tasks = [task_of(row[0], row[1], self.codec) for row in rows]
            fires = fire_times(tasks, lambda keys: _receipts(conn, keys))
            conn.executemany(
                "UPDATE tasks SET fires_at = ? WHERE task_id = ?",
                [(fires_at, task_id) for task_id, fires_at in fires.items()],
            )
        clock_receipts = conn.execute(
            "SELECT source, event_id FROM receipts WHERE source = ?", (CLOCK_SOURCE,)
        ).fetchall()
        mark = recorded_until(None, clock_receipts)
        if mark is not None:
            conn.execute("INSERT INTO meta VALUES (?, ?)", (CLOCK_MARK, mark))

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                # The WAL is checkpointed on a thread of its own after commits; SQLite's
                # own checkpoint inside a commit is only the backstop.
                conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
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
            yield _Transaction(conn, self.policy, self.codec)
        except sqlite3.OperationalError as error:  # locked, busy, disk: the store, not the data
            conn.execute("ROLLBACK")
            raise StoreError(f"write transaction failed: {error}") from error
        except (sqlite3.IntegrityError, sqlite3.DataError) as error:
            conn.execute("ROLLBACK")
            raise UnstorableData(f"SQLite refused a value of the batch: {error}") from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            conn.execute("ROLLBACK")
            raise StoreError(f"commit failed: {error}") from error
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:  # locked past the busy timeout, I/O
            raise StoreError(f"read failed: {error}") from error

    # Reads ----------------------------------------------------------------------------
    def get_client(self, client_id: str) -> ClientSnapshot | None:
        rows = self._query("SELECT snapshot FROM clients WHERE client_id = ?", (client_id,))
        return snapshot_of(client_id, rows[0][0], self.codec) if rows else None

    def clients(self, state: str | None = None, limit: int = 1000) -> list[ClientSnapshot]:
        if state is None:
            rows = self._query(
                "SELECT client_id, snapshot FROM clients ORDER BY client_id LIMIT ?", (limit,)
            )
        else:
            rows = self._query(
                "SELECT client_id, snapshot FROM clients WHERE state = ?"
                " ORDER BY client_id LIMIT ?",
                (state, limit),
            )
        return [snapshot_of(row[0], row[1], self.codec) for row in rows]

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
        return [history_entry(row, self.codec) for row in rows]

    def iter_history(self) -> Iterator[HistoryEntry]:
        cursor = self._conn().execute(
            f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY client_id, seq"
        )
        while rows := cursor.fetchmany(2000):
            for row in rows:
                yield history_entry(row, self.codec)

    def client_histories(self, client_ids: Sequence[str]) -> list[ClientHistory]:
        conn = self._conn()
        history_rows: list[Any] = []
        snapshot_rows: list[Any] = []
        # Both reads in one read transaction (unless the caller's own is open): a batch
        # committed between them would show a snapshot ahead of its history.
        own_transaction = not conn.in_transaction
        try:
            if own_transaction:
                conn.execute("BEGIN")
            try:
                for chunk in _chunks(sorted(set(client_ids))):
                    ids = f"IN ({','.join('?' * len(chunk))})"
                    history = conn.execute(HISTORY_OF_CLIENTS.format(ids=ids), chunk)
                    history_rows += history.fetchall()
                    snapshots = conn.execute(SNAPSHOTS_OF_CLIENTS.format(ids=ids), chunk)
                    snapshot_rows += snapshots.fetchall()
            finally:
                if own_transaction:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as error:  # locked past the busy timeout, I/O
            raise StoreError(f"read failed: {error}") from error
        return client_histories(client_ids, history_rows, snapshot_rows, self.codec)

    def mark_published(self, positions: list[int], at: str) -> None:
        conn = self._conn()
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "UPDATE outbox SET published_at = ? WHERE position = ?",
                    [(at, position) for position in positions],
                )
                conn.execute("COMMIT")
            except sqlite3.Error as error:
                # Locked past the busy timeout: the rows stay unpublished and go out again.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot mark outbox rows published: {error}") from error

    def prune_outbox(self, published_before: str) -> int:
        """Delete outbox rows published before the given time; the number deleted."""
        cursor = self._conn().execute(
            "DELETE FROM outbox WHERE published_at < ?", (published_before,)
        )
        return cursor.rowcount

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

    def reseal(self, chunk: int = 500) -> Iterator[int]:
        """Re-encode every codec value not sealed and bound with the cipher's first key
        (`kapflow rotate-key`): one transaction per chunk, yielding how many values each
        rewrote.

        Resumable: values already sealed and bound with the first key are skipped, so an
        interrupted run simply starts again. Once all are done the key check moves to the
        new key and says every value is bound: from then on nothing else is read.
        """
        codec, conn = self.codec, self._conn()
        for table, (key, columns) in ENCODED_COLUMNS.items():
            after: Any = "" if key in ("client_id", "task_id") else -1
            while rows := conn.execute(reseal_select(table, "?"), (after, chunk)).fetchall():
                after = rows[-1][0]
                stale = resealed(table, rows, codec)
                if not stale:
                    continue
                with self._lock:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.executemany(reseal_update(table, "?"), stale)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                yield len(stale) * len(columns)
        check = codec.key_check()
        if check is not None:
            conn.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (KEY_CHECK_META, check, check),
            )
            codec.check_key(check, "reseal")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _add_receipt_digest(conn: sqlite3.Connection) -> None:
    """Version 5: receipts.digest (nullable). SQLite has no ADD COLUMN IF NOT EXISTS, and a
    store set back to an earlier version number may hold the column already."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(receipts)")}
    if "digest" not in columns:
        conn.execute("ALTER TABLE receipts ADD COLUMN digest BLOB")


def _key_check(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK_META,)).fetchone()
    return str(row[0]) if row else None


def holds_a_store(path: str) -> bool:
    """Whether the file at `path` exists and holds kapflow's schema, looked at read-only so
    that neither a missing nor an empty file is changed by the look."""
    file = Path(path).expanduser()
    if not file.is_file():
        return False
    try:
        probe = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return _schema_version(probe) is not None
        finally:
            probe.close()
    except sqlite3.Error:
        return True  # not ours to judge here: opening it reports the real problem


def _schema_version(conn: sqlite3.Connection) -> str | None:
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchall():
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(row[0]) if row else None


def _statements(script: str) -> list[str]:
    """A DDL script as statements, to run inside one transaction (executescript commits).

    Split where SQLite says a statement is complete, so a trigger body's own semicolons
    stay inside it.
    """
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]

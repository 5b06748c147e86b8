"""`kapflow backup`: a consistent copy of a SQLite store while `serve` keeps writing.

SQLite's online backup API copies the database page by page from inside one read
transaction when asked for every page in one step: the copy is the database as it stood at
one commit, whatever the writers do meanwhile (WAL mode lets them go on). The copy is
written to a temporary file beside the target, checked with `PRAGMA integrity_check`, made
durable and only then renamed into place, so a file at the target name is always a complete
backup. It is a self-contained file (rollback journal, no `-wal` beside it).

PostgreSQL stores are backed up with PostgreSQL's own tools (`pg_dump`), documented in the
README: they take the same kind of consistent snapshot, of every table kapflow has.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kapflow.store.base import StoreError
from kapflow.store.database import database_kind, sqlite_path
from kapflow.store.file_modes import create_private


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: str
    bytes: int
    history: int
    access_log: int
    seconds: float


def _count(conn: sqlite3.Connection, table: str) -> int:
    exists = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()[0]
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) if exists else 0


def backup_sqlite(url: str, out: str) -> BackupReport:
    """Copy the SQLite store at `url` to the new file `out` (never overwritten)."""
    if database_kind(url) != "sqlite":
        raise StoreError(
            "kapflow backup copies SQLite stores; back up PostgreSQL with pg_dump"
            " (README: Security and operations)"
        )
    source_path = sqlite_path(url)
    if source_path == ":memory:" or not Path(source_path).is_file():
        raise StoreError(f"no SQLite database at {source_path}")
    target = Path(out)
    if target.exists():
        raise StoreError(f"{out} exists: a backup never overwrites a file")
    if not target.parent.is_dir():
        raise StoreError(f"folder does not exist: {target.parent}")
    partial = target.with_name(f".{target.name}.partial")
    started = time.perf_counter()
    source = sqlite3.connect(source_path, timeout=30.0)  # only read from
    try:
        create_private(partial)  # a backup holds every record: owner-only, as the store
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # every page in one step: one read transaction, one commit
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise StoreError(f"the copy failed its integrity check: {verdict}")
            history, access_log = _count(copy, "history"), _count(copy, "access_log")
        finally:
            copy.close()
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    except sqlite3.Error as error:
        raise StoreError(f"backup failed: {error}") from error
    finally:
        source.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupReport(
        str(target), target.stat().st_size, history, access_log, time.perf_counter() - started
    )

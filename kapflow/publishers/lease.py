"""One outbox relay at a time: per-client order on the output topics needs one publisher.

With N workers, each runs a relay but only the holder of this lease publishes; if it dies,
its lease dies with its connection (PostgreSQL advisory lock) or its process (file lock),
and another worker takes over from the first unpublished row.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from kapflow.store.database import KAPFLOW_LOCKS, RELAY_LOCK, database_kind, sqlite_path

log = logging.getLogger("kapflow.relay")


class Lease(Protocol):
    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class FileLease:
    """For SQLite: the database lives on this machine, so an OS file lock is the lease."""

    def __init__(self, db_path: str) -> None:
        self.path = Path(f"{db_path}.relay-lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PostgresLease:
    """A session-level advisory lock on a connection of its own: lost with the connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def acquire(self) -> bool:
        import psycopg

        try:
            if self._conn is not None and not self._conn.closed and not self._conn.broken:
                # Still ours while the session lives; a cheap round trip proves it does.
                self._conn.execute("SELECT 1")
                return True
            self.release()
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=5, application_name="kapflow-relay-lease"
            )
            held = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (KAPFLOW_LOCKS, RELAY_LOCK)
            ).fetchone()
            if held and held[0]:
                self._conn = conn
                log.info("outbox relay lease acquired")
                return True
            conn.close()
            return False
        except psycopg.Error:
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already gone is fine
                self._conn.close()
            self._conn = None


def lease_for(db_url: str) -> Lease:
    """The relay lease for the database at `db_url`: a lock where that database lives."""
    if database_kind(db_url) == "sqlite":
        return FileLease(sqlite_path(db_url))
    return PostgresLease(db_url)

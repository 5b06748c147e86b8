"""Store adapters behind one interface; `open_store(url)` is the one place they are chosen."""

from __future__ import annotations

from kapflow.store.base import EventStore, StoreError

DEFAULT_DB_URL = "sqlite:///./kapflow.db"


def open_store(url: str = DEFAULT_DB_URL) -> EventStore:
    if url.startswith("sqlite:///"):
        from kapflow.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from kapflow.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError("unsupported database URL: use sqlite:///PATH or postgresql://…")


__all__ = ["DEFAULT_DB_URL", "EventStore", "StoreError", "open_store"]

"""Which database a URL names: the one place a store adapter is chosen from a URL.

The event store, the access log, the key-usage record and the outbox relay's lease all
live in the same database; each asks `database_kind` which adapter to use, so a URL that
works for one works for all of them. Also kapflow's own advisory-lock keys on PostgreSQL,
which the adapters and the relay lease share.
"""

from __future__ import annotations

from typing import Literal

from kapflow.store.base import StoreError

DEFAULT_DB_URL = "sqlite:///./kapflow.db"

DatabaseKind = Literal["sqlite", "postgresql"]


def database_kind(url: str) -> DatabaseKind:
    """`sqlite` for sqlite:///PATH, `postgresql` for postgresql://… (or postgres://…)."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise StoreError("unsupported database URL: use sqlite:///PATH or postgresql://…")


def sqlite_path(url: str) -> str:
    """The file of a sqlite:///PATH URL (`:memory:` for sqlite:///)."""
    if not url.startswith("sqlite:///"):
        raise ValueError("a SQLite URL looks like sqlite:///./kapflow.db")
    path = url[len("sqlite:///") :]
    return path or ":memory:"


# Advisory locks on PostgreSQL: client locks use the one-bigint key space, kapflow's own
# locks the two-int key space, which PostgreSQL keeps apart, so a client hash can never
# collide with them.
KAPFLOW_LOCKS = 0x6B617066  # "kapf"
SCHEMA_LOCK = 1
APPEND_LOCK = 2
RELAY_LOCK = 3  # held for a session by the one outbox relay (publishers/lease.py)
ACCESS_LOG_LOCK = 4  # orders appends to the access log's hash chain (store/access_log.py)

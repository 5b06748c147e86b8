"""When each API key was last used, so an administrator can retire keys nobody uses.

Kept in the database the service uses (table `api_key_usage`, beside the access log): the
keys file is configuration an administrator edits, this is an observation kapflow makes.
`kapflow serve` writes a key's time at most once a minute and off the request path, so it
costs requests nothing; `kapflow keys list --db URL` shows it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kapflow.store.base import StoreError
from kapflow.store.database import database_kind, sqlite_path

_SCHEMA = """CREATE TABLE IF NOT EXISTS api_key_usage (
    name TEXT PRIMARY KEY,
    last_used_at TEXT NOT NULL
)"""
# Times are fixed-width RFC 3339 UTC text: comparing the text compares the instants.
_TOUCH = (
    "INSERT INTO api_key_usage (name, last_used_at) VALUES ({0}, {0})"
    " ON CONFLICT (name) DO UPDATE SET last_used_at = excluded.last_used_at"
    " WHERE excluded.last_used_at > api_key_usage.last_used_at"
)


class KeyUsageStore:
    """One short connection per call: a key's time is written at most once a minute."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._mark = "?" if database_kind(url) == "sqlite" else "%s"
        self._execute(_SCHEMA)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._mark == "?":
            try:
                conn = sqlite3.connect(sqlite_path(self.url), timeout=5.0)
                try:
                    with conn:
                        return conn.execute(sql, params).fetchall()
                finally:
                    conn.close()
            except sqlite3.Error as error:
                raise StoreError(f"key usage: {error}") from error
        import psycopg

        from kapflow.store.postgres import conninfo_from_url

        try:
            with psycopg.connect(conninfo_from_url(self.url), autocommit=True) as pg:
                cursor = pg.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as error:
            raise StoreError(f"key usage: {type(error).__name__}") from None

    def touch(self, name: str, at: str) -> None:
        self._execute(_TOUCH.format(self._mark), (name, at))

    def last_used(self) -> dict[str, str]:
        return {
            str(name): str(at)
            for name, at in self._execute(
                "SELECT name, last_used_at FROM api_key_usage ORDER BY name"
            )
        }

"""Pytest fixtures for tests that need a real PostgreSQL server (127.0.0.1:5432).

Import from a conftest::

    from postgres_fixtures import postgres_url  # noqa: F401

Each test gets a fresh database of its own, dropped afterwards, so tests never see each
other's rows and can run against a server other engineers use at the same time. When
PostgreSQL is unreachable the tests are skipped, unless KAPFLOW_TEST_STRICT=1 (CI), where
a missing prerequisite must fail instead.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

__all__ = ["ADMIN_USERS", "POSTGRES_HOST", "POSTGRES_PORT", "admin_connection", "postgres_url"]

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
ADMIN_USERS = ("postgres", "root")

# One admin connection for the whole session: opening one per test would cost more than
# creating the database. The fixture is self-contained (no session fixture) so that one
# import line in conftest is all it takes.
_admin: psycopg.Connection[tuple[object, ...]] | None = None
_admin_user: str | None = None
_unreachable: str | None = None


def _connect_admin() -> None:
    global _admin, _admin_user, _unreachable
    failures = []
    for user in ADMIN_USERS:
        try:
            _admin = psycopg.connect(
                host=POSTGRES_HOST,
                port=POSTGRES_PORT,
                user=user,
                dbname="postgres",
                autocommit=True,
                connect_timeout=3,
                application_name="kapflow-tests",
            )
        except psycopg.Error as error:
            failures.append(f"{user}: {' '.join(str(error).split())}")
            continue
        _admin_user = user
        atexit.register(_admin.close)
        return
    _unreachable = "; ".join(failures)


def admin_connection() -> tuple[psycopg.Connection[tuple[object, ...]], str]:
    """The shared autocommit admin connection and its user; skips (or fails) without one."""
    global _admin
    if _admin is not None:
        try:
            _admin.execute("SELECT 1")
        except psycopg.Error:
            # The server restarted under the session (some tests restart it): reconnect.
            _admin.close()
            _admin = None
            _connect_admin()
    if _admin is None and _unreachable is None:
        _connect_admin()
    if _admin is None or _admin_user is None:
        reason = (
            f"PostgreSQL unreachable at {POSTGRES_HOST}:{POSTGRES_PORT} as"
            f" {' or '.join(ADMIN_USERS)} ({_unreachable})"
        )
        if os.environ.get("KAPFLOW_TEST_STRICT") == "1":
            pytest.fail(reason + " and KAPFLOW_TEST_STRICT=1", pytrace=False)
        pytest.skip(reason)
    return _admin, _admin_user


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """`postgresql://…` of a fresh, uniquely named database, dropped after the test."""
    admin, user = admin_connection()
    name = f"kapflow_test_{uuid.uuid4().hex[:16]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        # FORCE: a store the test forgot to close must not keep the database alive. A fresh
        # look-up of the admin connection: the test may have restarted the server.
        admin_connection()[0].execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

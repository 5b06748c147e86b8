"""The access log is tamper-evident: an auditor learns exactly which read was removed or
altered, stores written before the chain keep working, and the privacy officer gets the
log as JSON lines or CSV."""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from postgres_fixtures import postgres_url  # noqa: F401 - the fixture

from kapflow.service.audit import verify_access_log
from kapflow.store import access_log as access_log_module
from kapflow.store import open_store
from kapflow.store.access_log import AccessRecord, open_access_log
from kapflow.store.base import StoreError

KAPFLOW = str(Path(sys.executable).parent / "kapflow")

READS = [
    AccessRecord("2026-11-01T10:00:00Z", "audit-team", "auditor", "history", "c-1"),
    AccessRecord("2026-11-01T11:00:00Z", "audit-team", "auditor", "replay", "c-2", "as_of=x"),
    AccessRecord("2026-11-02T09:00:00Z", "ops", "admin", "export", None, "format=csv"),
    AccessRecord("2026-11-03T09:00:00Z", "audit-team", "auditor", "history", "c-3"),
]

OLD_SCHEMA = """
CREATE TABLE access_log (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, who TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL,
    client_id TEXT, detail TEXT
);
"""


def recorded(db: str) -> str:
    open_store(db).close()  # the store beside it: `kapflow verify` only reads a store
    log = open_access_log(db)
    for read in READS:
        log.record(read)
    log.close()
    return db


def sql(db: str, statement: str) -> None:
    conn = sqlite3.connect(db.removeprefix("sqlite:///"))
    with conn:
        conn.execute(statement)
    conn.close()


def findings(db: str) -> list[str]:
    log = open_access_log(db)
    try:
        return [d.detail for d in verify_access_log(log).divergences]
    finally:
        log.close()


def test_an_untouched_access_log_verifies_and_names_its_head(sqlite_url: str) -> None:
    log = open_access_log(recorded(sqlite_url))
    check = verify_access_log(log)
    rows = log.entries()
    assert check.divergences == []
    assert check.rows == 4
    assert (check.head_position, check.head_hash) == (rows[-1].position, rows[-1].hash)
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    log.close()


def test_a_removed_read_is_reported_by_its_position(sqlite_url: str) -> None:
    sql(recorded(sqlite_url), "DELETE FROM access_log WHERE position = 2")
    [finding] = findings(sqlite_url)
    assert finding.startswith("row(s) 2 removed: access-log row 3 (export by ops")


def test_the_first_reads_removed_are_reported_too(sqlite_url: str) -> None:
    sql(recorded(sqlite_url), "DELETE FROM access_log WHERE position <= 2")
    assert findings(sqlite_url) == [
        "row(s) 1..2 removed: access-log row 3 (export by ops at 2026-11-02T09:00:00Z)"
        " does not link to the row before"
    ]


def test_an_altered_read_is_reported_as_altered(sqlite_url: str) -> None:
    sql(recorded(sqlite_url), "UPDATE access_log SET who = 'someone-else' WHERE position = 2")
    assert findings(sqlite_url) == [
        "access-log row 2 (replay by someone-else at 2026-11-01T11:00:00Z) was altered:"
        " its hash does not match its content"
    ]


def test_an_altered_read_with_a_recomputed_hash_breaks_the_next_link(sqlite_url: str) -> None:
    first = open_access_log(recorded(sqlite_url)).entries()[0]
    r = READS[1]
    forged = AccessRecord(r.at, r.who, r.role, r.action, "c-9", r.detail).chained(
        2, first.hash or ""
    )
    sql(
        sqlite_url,
        f"UPDATE access_log SET client_id = 'c-9', hash = '{forged.hash}' WHERE position = 2",
    )
    assert findings(sqlite_url) == [
        "access-log row 2 was altered and re-hashed: row 3 no longer links to it"
    ]


def test_kapflow_verify_fails_on_a_removed_read_and_says_which(sqlite_url: str) -> None:
    sql(recorded(sqlite_url), "DELETE FROM access_log WHERE position = 3")
    result = subprocess.run(
        [KAPFLOW, "verify", "--db", sqlite_url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "DIVERGENCE access-log client=c-3 seq=4: row(s) 3 removed" in result.stdout
    as_json = subprocess.run(
        [KAPFLOW, "verify", "--db", sqlite_url, "--json"], capture_output=True, text=True
    )
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["access_log"]["rows"] == 3
    assert report["access_log"]["head_position"] == 4


def test_kapflow_access_log_exports_a_time_window_as_csv_or_json_lines(sqlite_url: str) -> None:
    recorded(sqlite_url)
    window = ["--from", "2026-11-01T10:30:00Z", "--to", "2026-11-02T23:59:59Z"]
    as_csv = subprocess.run(
        [KAPFLOW, "access-log", "--db", sqlite_url, *window, "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [(r["position"], r["who"], r["action"], r["client_id"]) for r in rows] == [
        ("2", "audit-team", "replay", "c-2"),
        ("3", "ops", "export", ""),
    ]
    assert all(len(r["hash"]) == 64 for r in rows)
    as_jsonl = subprocess.run(
        [KAPFLOW, "access-log", "--db", sqlite_url], capture_output=True, text=True, check=True
    ).stdout
    lines = [json.loads(line) for line in as_jsonl.splitlines()]
    assert [line["action"] for line in lines] == ["history", "replay", "export", "history"]


def test_a_store_written_before_the_chain_is_migrated_in_place_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO access_log (at, who, role, action, client_id, detail) VALUES (?,?,?,?,?,?)",
        [(r.at, r.who, r.role, r.action, r.client_id, r.detail) for r in READS[:3]],
    )
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="kapflow.access_log"):
        log = open_access_log(sqlite_url)
        log.record(READS[3])
        log.close()
        open_access_log(sqlite_url).close()  # a second open finds nothing to migrate
    migrations = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert migrations == [
        "access log migrated in place: added the hash chain (prev_hash, hash) and chained"
        " 3 existing rows"
    ]
    assert findings(sqlite_url) == []
    assert [r.action for r in open_access_log(sqlite_url).entries()] == [
        "history",
        "replay",
        "export",
        "history",
    ]


@pytest.mark.postgres
def test_on_postgresql_the_chain_is_kept_migrated_and_checked_alike(postgres_url: str) -> None:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            OLD_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        )
        for r in READS[:2]:
            conn.execute(
                "INSERT INTO access_log (at, who, role, action, client_id, detail)"
                " VALUES (%s,%s,%s,%s,%s,%s)",
                (r.at, r.who, r.role, r.action, r.client_id, r.detail),
            )
    log = open_access_log(postgres_url)
    for read in READS[2:]:
        log.record(read)
    check = verify_access_log(log)
    assert (check.rows, check.divergences) == (4, [])
    log.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM access_log WHERE position = 3")
    log = open_access_log(postgres_url)
    [finding] = [d.detail for d in verify_access_log(log).divergences]
    assert finding.startswith("row(s) 3 removed: access-log row 4 (history by audit-team")
    log.close()


def test_a_locked_sqlite_database_delays_a_read_record_but_does_not_lose_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(access_log_module, "BUSY_TIMEOUT_S", 0.2)
    log = open_access_log(sqlite_url)
    holder = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")  # another process writing for longer than the timeout
    release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    release.start()
    with caplog.at_level(logging.WARNING, logger="kapflow.access_log"):
        position = log.record(READS[0])
    release.join()
    assert position == 1
    assert "database is locked while recording a read; attempt 2 of 3" in caplog.text
    assert findings(sqlite_url) == []
    log.close()
    holder.close()


def test_a_database_locked_past_every_retry_refuses_the_read_and_keeps_the_chain(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access_log_module, "BUSY_TIMEOUT_S", 0.1)
    monkeypatch.setattr(access_log_module, "RETRY_DELAYS_S", (0.05, 0.05))
    log = open_access_log(recorded(sqlite_url))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreError, match="database is locked"):
        log.record(READS[0])
    assert time.monotonic() - started < 2.0  # bounded: three short attempts, then 503
    holder.execute("COMMIT")
    holder.close()
    log.record(READS[1])  # the next read is recorded as soon as the lock is gone
    assert [r.position for r in log.entries()] == [1, 2, 3, 4, 5]
    assert findings(sqlite_url) == []
    log.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_reads_recorded_by_several_processes_at_once_form_one_unbroken_chain(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    open_access_log(db).close()
    # Each writer has its own connection, as separate serve processes (API replicas) would.
    writers = [open_access_log(db) for _ in range(4)]

    def record_many(log: access_log_module.AccessLog, number: int) -> None:
        for i in range(25):
            log.record(
                AccessRecord(
                    f"2026-11-27T08:{i:02d}:00Z", f"key-{number}", "auditor", "history", f"c-{i}"
                )
            )

    threads = [threading.Thread(target=record_many, args=(log, n)) for n, log in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    check = verify_access_log(writers[0])
    for log in writers:
        log.close()
    assert (check.rows, check.divergences) == (100, [])


def rechain(db: str) -> None:
    """What an insider with database access and this source code can do: recompute every
    hash after an edit, so that the chain alone links again."""
    rows = open_access_log(db).entries()
    prev_hash = "0" * 64
    conn = sqlite3.connect(db.removeprefix("sqlite:///"))
    with conn:
        for row in rows:
            chained = row.chained(row.position or 0, prev_hash)
            conn.execute(
                "UPDATE access_log SET prev_hash = ?, hash = ? WHERE position = ?",
                (chained.prev_hash, chained.hash, chained.position),
            )
            prev_hash = chained.hash or ""
    conn.close()


def verify_with_head(db: str, head: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KAPFLOW, "verify", "--db", db, "--access-log-head", head],
        capture_output=True,
        text=True,
        timeout=60,
    )


def head_printed_by_verify(db: str) -> str:
    result = subprocess.run(
        [KAPFLOW, "verify", "--db", db], capture_output=True, text=True, timeout=60, check=True
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("access log:"))
    return line.split("head ")[1].split(" ")[0]


def test_a_recomputed_chain_is_caught_by_the_head_an_auditor_kept(sqlite_url: str) -> None:
    head = head_printed_by_verify(recorded(sqlite_url))
    assert head.startswith("4:")
    sql(sqlite_url, "DELETE FROM access_log WHERE position = 2")
    rechain(sqlite_url)
    assert findings(sqlite_url) == []  # the chain alone cannot tell
    result = verify_with_head(sqlite_url, head)
    assert result.returncode == 1
    assert (
        "seq=4: access-log row 4 no longer has the hash recorded earlier: the chain was"
        " rewritten" in result.stdout
    )


def test_reads_removed_from_the_end_are_caught_by_the_head_an_auditor_kept(
    sqlite_url: str,
) -> None:
    head = head_printed_by_verify(recorded(sqlite_url))
    sql(sqlite_url, "DELETE FROM access_log WHERE position >= 3")
    assert findings(sqlite_url) == []  # a shorter chain still links
    result = verify_with_head(sqlite_url, head)
    assert result.returncode == 1
    assert "access-log row 4, the head recorded earlier, is gone" in result.stdout


def test_a_head_kept_earlier_still_verifies_after_later_reads(sqlite_url: str) -> None:
    head = head_printed_by_verify(recorded(sqlite_url))
    recorded(sqlite_url)  # four more reads extend the chain
    result = verify_with_head(sqlite_url, head)
    assert result.returncode == 0, result.stdout
    assert "access log: 8 rows chained; head 8:" in result.stdout


def test_the_privacy_officer_reads_a_time_window_of_the_access_log_over_http(
    sqlite_url: str,
) -> None:
    from test_http_api import start_service

    recorded(sqlite_url)
    server, secrets = start_service(sqlite_url)
    try:
        response = httpx.get(
            f"{server.url}/v1/access-log",
            params={"from": "2026-11-01T10:30:00Z", "to": "2026-11-02T23:59:59Z"},
            headers={"Authorization": f"Bearer {secrets['auditor']}"},
        )
        bad = httpx.get(
            f"{server.url}/v1/access-log",
            params={"from": "yesterday"},
            headers={"Authorization": f"Bearer {secrets['auditor']}"},
        )
    finally:
        server.stop()
    assert [(r["position"], r["action"]) for r in response.json()] == [(2, "replay"), (3, "export")]
    assert all(len(r["hash"]) == 64 for r in response.json())
    assert bad.status_code == 422 and bad.json()["field"] == "from"

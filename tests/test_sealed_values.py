"""Sealed means sealed (issue 18, finding 4): in a store encrypted at rest, a value is read
only if it was sealed with one of the store's keys for the very row and column it sits in.
Someone with access to the database but not the key can neither slip in a value of their
own, nor move a genuine one to another client, nor get a read-only command to mark a plain
store encrypted behind the keyless server's back."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_cli import kapflow
from test_storage_codec import cohort_file, key_file

from kapflow.service.audit import verify
from kapflow.store import open_store
from kapflow.store.base import StoreError
from kapflow.store.codec import (
    ENCRYPTION_KEY_ENV,
    ENCRYPTION_KEY_FILE_ENV,
    KEY_CHECK_META,
    SEALED,
    SEALED_BOUND,
    EncryptionKeyError,
    StorageCipher,
    StorageCodec,
    compress,
    generate_key,
    key_id,
    read_key_file,
    row_context,
)
from kapflow.store.sql import ENCODED_COLUMNS

NOT_SEALED = "not encrypted in a store encrypted at rest"
MOVED = "failed authentication: altered, moved from another row"
PLAIN_STORE_WITH_A_KEY = "not encrypted at rest, but an encryption key is set"


def sqlite_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def key_check_of(db: Path) -> str | None:
    rows = sqlite_rows(db, "SELECT value FROM meta WHERE key = ?", (KEY_CHECK_META,))
    return str(rows[0][0]) if rows else None


@pytest.fixture
def encrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store written with a key from its first event: every value sealed and bound."""
    db = tmp_path / "encrypted.db"
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(key_file(tmp_path / "kapflow.key")))
    kapflow("ingest", str(cohort_file(tmp_path, clients=4)), db=f"sqlite:///{db}")
    return db


def two_clients(db: Path) -> tuple[str, str]:
    first, second = sqlite_rows(db, "SELECT client_id FROM clients ORDER BY client_id LIMIT 2")
    return first[0], second[0]


# Finding 1: a value written without the key is refused, never read ----------------------


def test_a_task_forged_in_clear_into_an_encrypted_store_is_refused_not_shown_as_completed(
    encrypted: Path,
) -> None:
    url = f"sqlite:///{encrypted}"
    [(task_id, client_id)] = sqlite_rows(
        encrypted, "SELECT task_id, client_id FROM tasks ORDER BY task_id LIMIT 1"
    )
    store = open_store(url)
    forged = store.task(task_id)
    store.close()
    assert forged is not None
    record = forged.as_dict() | {"status": "completed", "note": "done (forged)"}
    with sqlite3.connect(encrypted) as conn:  # an insider without the key: zstd only
        conn.execute(
            "UPDATE tasks SET task = ? WHERE task_id = ?",
            (StorageCodec().encode(json.dumps(record)), task_id),
        )
    shown = kapflow("tasks", "--client", client_id, db=url, check=False)
    assert shown.returncode != 0 and "forged" not in shown.stdout
    assert NOT_SEALED in shown.stderr and f"tasks {len(task_id)}:{task_id} task" in shown.stderr
    checked = kapflow("verify", db=url, check=False)
    assert checked.returncode != 0 and "verify: OK" not in checked.stdout
    assert NOT_SEALED in checked.stderr


def test_a_snapshot_or_history_entry_written_in_clear_is_refused_by_every_read(
    encrypted: Path,
) -> None:
    url = f"sqlite:///{encrypted}"
    client_id, _ = two_clients(encrypted)
    store = open_store(url)
    entry = store.history(client_id)[0]
    store.close()
    with sqlite3.connect(encrypted) as conn:
        conn.execute(
            "UPDATE history SET event = ? WHERE client_id = ? AND seq = 1",
            (entry.event.encode(), client_id),  # legacy plain JSON text, as before the codec
        )
    store = open_store(url)
    with pytest.raises(EncryptionKeyError, match=NOT_SEALED):
        store.history(client_id)
    with pytest.raises(EncryptionKeyError, match=NOT_SEALED):
        verify(store)
    store.close()


# Finding 2: a sealed value is bound to its table, row and column ------------------------


def test_two_clients_snapshots_swapped_by_an_insider_are_refused(encrypted: Path) -> None:
    url = f"sqlite:///{encrypted}"
    first, second = two_clients(encrypted)
    snapshots = dict(sqlite_rows(encrypted, "SELECT client_id, snapshot FROM clients"))
    with sqlite3.connect(encrypted) as conn:
        conn.executemany(
            "UPDATE clients SET snapshot = ? WHERE client_id = ?",
            [(snapshots[second], first), (snapshots[first], second)],
        )
    shown = kapflow("client", first, "--json", db=url, check=False)
    assert shown.returncode != 0 and second not in shown.stdout
    assert MOVED in shown.stderr
    assert kapflow("verify", db=url, check=False).returncode != 0


def test_history_values_moved_to_another_entry_or_column_are_refused(encrypted: Path) -> None:
    url = f"sqlite:///{encrypted}"
    client_id, _ = two_clients(encrypted)
    [(first_event, second_event, outcome)] = sqlite_rows(
        encrypted,
        "SELECT a.event, b.event, a.outcome FROM history a JOIN history b"
        " ON b.client_id = a.client_id AND b.seq = 2 WHERE a.client_id = ? AND a.seq = 1",
        (client_id,),
    )
    for seq, column, value in ((1, "event", second_event), (1, "outcome", first_event)):
        with sqlite3.connect(encrypted) as conn:
            conn.execute(
                f"UPDATE history SET {column} = ? WHERE client_id = ? AND seq = ?",
                (value, client_id, seq),
            )
        store = open_store(url)
        with pytest.raises(EncryptionKeyError, match=MOVED):
            store.history(client_id)
        store.close()
        with sqlite3.connect(encrypted) as conn:  # put back before the next move
            conn.execute(
                "UPDATE history SET event = ?, outcome = ? WHERE client_id = ? AND seq = 1",
                (first_event, outcome, client_id),
            )
    store = open_store(url)
    assert verify(store).ok  # the genuine values, back in place, read and verify
    store.close()


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    codec = StorageCodec(StorageCipher([base64.b64decode(generate_key())]))
    here = row_context("history", "event", "c-1", 1)
    stored = codec.encode('{"ok":true}', here)
    assert stored[0] == SEALED_BOUND and codec.decode(stored, here) == '{"ok":true}'
    for elsewhere in (
        row_context("history", "event", "c-1", 2),
        row_context("history", "outcome", "c-1", 1),
        row_context("history", "event", "c-11", 1),
        row_context("clients", "event", "c-1", 1),
    ):
        with pytest.raises(EncryptionKeyError, match=MOVED):
            codec.decode(stored, elsewhere)
    # Ids holding the separator cannot make two rows share a place.
    assert row_context("rejections", "original", "a\x1fb", "c") != row_context(
        "rejections", "original", "a", "b\x1fc"
    )


# Stores sealed by the previous release: read until resealed, then bound ------------------


def previous_release_seal(key: bytes, text: str) -> bytes:
    """A value as the release before issue 18 sealed it: format 0x02, bound to nothing."""
    header = bytes([SEALED]) + key_id(key)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(key).encrypt(nonce, compress(text), header)


def seal_as_previous_release(db: Path, key: bytes) -> None:
    """Every value of a plain store sealed as the previous release did, and its key check."""
    plain = StorageCodec()
    with sqlite3.connect(db) as conn:
        for table, (walk, columns) in ENCODED_COLUMNS.items():
            for row in conn.execute(f"SELECT {walk}, {', '.join(columns)} FROM {table}"):
                sealed = [previous_release_seal(key, plain.decode(value)) for value in row[1:]]
                assignments = ", ".join(f"{column} = ?" for column in columns)
                conn.execute(
                    f"UPDATE {table} SET {assignments} WHERE {walk} = ?", (*sealed, row[0])
                )
        check = base64.b64encode(previous_release_seal(key, "kapflow storage key check"))
        conn.execute("INSERT INTO meta VALUES (?, ?)", (KEY_CHECK_META, check.decode()))


def test_a_store_sealed_by_the_previous_release_reads_until_resealed_then_is_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "previous.db"
    url = f"sqlite:///{db}"
    kapflow("ingest", str(cohort_file(tmp_path, clients=4)), db=url)
    before = kapflow("history", "c-000002", db=url).stdout
    keys = key_file(tmp_path / "kapflow.key")
    seal_as_previous_release(db, read_key_file(keys)[0])
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(keys))
    assert kapflow("history", "c-000002", db=url).stdout == before
    assert "verify: OK" in kapflow("verify", db=url).stdout
    # Resealing under the same key binds every value, and says so in the key check.
    rotated = kapflow("rotate-key", "--new-key-file", str(keys), db=url)
    assert "re-encrypted" in rotated.stdout and "re-encrypted 0 " not in rotated.stdout
    stored = [
        bytes(value)[0]
        for table, (_, columns) in ENCODED_COLUMNS.items()
        for row in sqlite_rows(db, f"SELECT {', '.join(columns)} FROM {table}")
        for value in row
    ]
    assert stored and set(stored) == {SEALED_BOUND}
    assert kapflow("history", "c-000002", db=url).stdout == before
    assert "verify: OK" in kapflow("verify", db=url).stdout
    # Now an unbound value, even one genuinely sealed by the previous release, is refused.
    old = previous_release_seal(read_key_file(keys)[0], '{"state":"completed"}')
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE clients SET snapshot = ? WHERE client_id = 'c-000002'", (old,))
    refused = kapflow("client", "c-000002", db=url, check=False)
    assert refused.returncode != 0 and "without its row binding" in refused.stderr


def test_a_resealed_store_cannot_be_made_lenient_again_by_a_key_check_in_clear(
    encrypted: Path,
) -> None:
    plain_check = base64.b64encode(StorageCodec().encode("kapflow storage key check"))
    with sqlite3.connect(encrypted) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = ?", (plain_check.decode(), KEY_CHECK_META)
        )
    with pytest.raises(EncryptionKeyError, match="key check is damaged"):
        open_store(f"sqlite:///{encrypted}")


# Finding 3: reading never changes a store's mode ------------------------------------------


READS = (
    ("client", "c-000001"),
    ("history", "c-000001"),
    ("replay", "c-000001"),
    ("tasks",),
    ("verify",),
    ("export",),
    ("deviations",),
    ("check", "c-000001", "--dose"),
    ("parked",),
    ("deadlines",),
)


def test_a_read_command_given_a_key_never_marks_a_plain_store_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "plain.db"
    url = f"sqlite:///{db}"
    kapflow("ingest", str(cohort_file(tmp_path, clients=3)), db=url)
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    for command in READS:
        refused = kapflow(*command, db=url, check=False)
        assert refused.returncode != 0, command
        assert PLAIN_STORE_WITH_A_KEY in refused.stderr, command
        assert key_check_of(db) is None, command
    # The keyless server goes on writing and its store stays plain and whole.
    monkeypatch.delenv(ENCRYPTION_KEY_ENV)
    kapflow("ingest", str(cohort_file(tmp_path, clients=4, seed=6)), db=url)
    assert "verify: OK" in kapflow("verify", db=url).stdout


def test_a_writer_given_a_key_does_not_half_encrypt_a_plain_store_that_holds_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "plain.db"
    url = f"sqlite:///{db}"
    kapflow("ingest", str(cohort_file(tmp_path, clients=3)), db=url)
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    refused = kapflow("ingest", str(cohort_file(tmp_path, clients=4, seed=6)), db=url, check=False)
    assert refused.returncode != 0 and "kapflow rotate-key" in refused.stderr
    assert key_check_of(db) is None


def test_a_new_store_opened_read_only_with_a_key_stays_unmarked(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    cipher = StorageCipher([base64.b64decode(generate_key())])
    with pytest.raises(StoreError, match="no kapflow store at"):
        open_store(f"sqlite:///{db}", cipher=cipher, access="read")
    assert not db.exists()  # a reader creates nothing, so marks nothing
    store = open_store(f"sqlite:///{db}", cipher=cipher)  # a writer marks it, bound
    store.close()
    check = key_check_of(db)
    assert check is not None and base64.b64decode(check)[0] == SEALED_BOUND


# PostgreSQL: the same rules through the same code ----------------------------------------


@pytest.mark.postgres
def test_on_postgres_swapped_and_clear_values_are_refused_and_reads_never_mark(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kapflow("ingest", str(cohort_file(tmp_path, clients=3)), db=postgres_url)
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    refused = kapflow("history", "c-000001", db=postgres_url, check=False)
    assert refused.returncode != 0 and PLAIN_STORE_WITH_A_KEY in refused.stderr
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert not conn.execute("SELECT 1 FROM meta WHERE key = %s", (KEY_CHECK_META,)).fetchall()
    # Encrypted by rotate-key (writers stopped), then tampered with two ways.
    kapflow("rotate-key", "--new-key-file", str(key_file(tmp_path / "pg.key")), db=postgres_url)
    monkeypatch.delenv(ENCRYPTION_KEY_ENV)
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(tmp_path / "pg.key"))
    assert "verify: OK" in kapflow("verify", db=postgres_url).stdout
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT client_id, snapshot FROM clients").fetchall())
        first, second = sorted(rows)[:2]
        conn.execute("UPDATE clients SET snapshot = %s WHERE client_id = %s", (rows[second], first))
        conn.execute(
            "UPDATE clients SET snapshot = %s WHERE client_id = %s",
            (StorageCodec().encode('{"client_id":"forged"}'), second),
        )
    moved = kapflow("client", first, db=postgres_url, check=False)
    assert moved.returncode != 0 and MOVED in moved.stderr
    clear = kapflow("client", second, db=postgres_url, check=False)
    assert clear.returncode != 0 and NOT_SEALED in clear.stderr

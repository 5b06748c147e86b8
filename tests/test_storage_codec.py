"""The storage codec (issues 9 and 10): the bulky JSON columns are stored compressed, and
encrypted at rest when a key is set, without anything above the store noticing — every
history reads back as recorded, `verify` passes, and stores written before still open."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest
from test_cli import kapflow

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.service.audit import verify
from kapflow.store import open_store
from kapflow.store.base import StoreError
from kapflow.store.codec import (
    DICTIONARY_3,
    ENCRYPTION_KEY_ENV,
    ENCRYPTION_KEY_FILE_ENV,
    PLAIN,
    SEALED_BOUND,
    ZSTD_3,
    EncryptionKeyError,
    StorageCipher,
    StorageCodec,
    generate_key,
    pack_hash,
    unpack_hash,
)
from kapflow.store.codec_dictionary import DICTIONARY_1
from kapflow.store.postgres import SCHEMA as POSTGRES_SCHEMA
from kapflow.store.sql import ENCODED_COLUMNS, HISTORY_COLUMNS

FIXTURE = Path(__file__).parent / "fixtures" / "store_2026.11.3.sqlite"
EVENT = (
    '{"specversion":"1.0","type":"clinician.assessment_completed",'
    '"data":{"history":{"psychosis":false}}}'
)
# What a stored value in format 0x01 looks like today: every later release must read it.
EVENT_IN_FORMAT_1 = bytes.fromhex("01c31e7ac44ef9c01c8c676aa5b6b61600")
# The same in format 0x03, what kapflow writes since schema version 4.
EVENT_IN_FORMAT_3 = bytes.fromhex(
    "0328b52ffd2064bd0000187d7d7d067c00e2694951afcdd37e3d50a0b317ccac0c"
)
# Clinical field names as they appear in the stored JSON: never in clear when encrypted.
CLINICAL_IN_CLEAR = (b'"psychosis"', b'"chaperone_confirmed"', b'"current_medications"')


def key() -> bytes:
    return base64.b64decode(generate_key())


def key_file(path: Path) -> Path:
    path.write_text(generate_key() + "\n")
    return path


def cohort_file(tmp_path: Path, clients: int = 12, seed: int = 5) -> Path:
    events = tmp_path / "cohort.jsonl"
    write_jsonl(generate_cohort(clients=clients, seed=seed), events)
    return events


# The codec ------------------------------------------------------------------------------


def test_every_stored_value_reads_back_as_the_exact_text_recorded() -> None:
    plain, sealed = StorageCodec(), StorageCodec(StorageCipher([key()]))
    for text in (EVENT, "{}", "[]", "", "not json at all", '{"note":"Zoë — 24 h, 🙂"}'):
        for codec in (plain, sealed):
            assert codec.decode(codec.encode(text)) == text
    assert plain.encode(EVENT)[0] == ZSTD_3
    assert plain.encode("{}")[0] == PLAIN  # zstd would not make it smaller
    assert sealed.encode(EVENT)[0] == SEALED_BOUND  # bound to its row since issue 18


def test_a_value_compresses_to_a_fraction_of_its_text() -> None:
    record = json.loads(EVENT)
    record["data"] |= {"clinician_id": "clin-05", "age_years": 27, "insurance_used": True}
    text = json.dumps(record, separators=(",", ":"))
    assert len(StorageCodec().encode(text)) * 3 < len(text)


def test_rows_written_before_the_codec_read_as_they_are() -> None:
    codec = StorageCodec()
    assert codec.decode(EVENT) == EVENT  # SQLite TEXT of an earlier release
    assert codec.decode(EVENT.encode()) == EVENT  # bytes of legacy JSON
    assert codec.decode(b"\x00" + EVENT.encode()) == EVENT  # a PostgreSQL row migrated


def test_the_frozen_dictionaries_and_their_formats_never_change() -> None:
    assert hashlib.sha256(DICTIONARY_1).hexdigest() == (
        "0601d9a8aade78385abe6d2f58bfd995e90e1447789e6ac0717ad22962aeab82"
    )
    assert hashlib.sha256(DICTIONARY_3).hexdigest() == (
        "4e22844e1b076d24829ab697bda3f2a60972966928628d31be4944752e4bbba0"
    )
    assert StorageCodec().decode(EVENT_IN_FORMAT_1) == EVENT
    assert StorageCodec().decode(EVENT_IN_FORMAT_3) == EVENT
    assert StorageCodec().encode(EVENT) == EVENT_IN_FORMAT_3  # zstd is deterministic


def test_values_of_both_compressed_formats_read_back_in_one_store(tmp_path: Path) -> None:
    """A store migrated from schema 3 holds 0x01 values beside the new 0x03 ones."""
    db = tmp_path / "mixed.db"
    store = open_store(f"sqlite:///{db}")
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO tasks (task_id, client_id, status, owner, due, task) VALUES"
            " ('t-1', 'c-1', 'requested', 'clinician', '2026-01-01', ?),"
            " ('t-3', 'c-1', 'requested', 'clinician', '2026-01-01', ?)",
            (EVENT_IN_FORMAT_1, EVENT_IN_FORMAT_3),
        )
        values = [StorageCodec().decode(row[0]) for row in conn.execute("SELECT task FROM tasks")]
    assert values == [EVENT, EVENT]


def test_hashes_are_stored_as_their_32_bytes_and_read_back_as_hex() -> None:
    digest = hashlib.sha256(b"entry").hexdigest()
    assert len(pack_hash(digest)) == 32
    assert unpack_hash(pack_hash(digest)) == digest
    assert unpack_hash(digest) == digest  # a row written before: hex text
    assert unpack_hash(pack_hash("not-a-hash")) == "not-a-hash"


@pytest.mark.parametrize("stored", [EVENT_IN_FORMAT_1, EVENT_IN_FORMAT_3])
def test_a_damaged_compressed_value_is_reported_not_misread(stored: bytes) -> None:
    with pytest.raises(StoreError, match="damaged"):
        StorageCodec().decode(stored[:1] + b"\xff" * 8)
    with pytest.raises(StoreError, match="damaged|truncated"):
        StorageCodec().decode(stored[:-3])


def test_an_altered_encrypted_value_is_refused_not_misread() -> None:
    codec = StorageCodec(StorageCipher([key()]))
    stored = bytearray(codec.encode(EVENT))
    stored[-1] ^= 0x01
    with pytest.raises(EncryptionKeyError, match="failed authentication"):
        codec.decode(bytes(stored))


def test_a_value_sealed_by_an_older_key_opens_while_that_key_is_loaded() -> None:
    old, new = key(), key()
    stored = StorageCodec(StorageCipher([old])).encode(EVENT)
    assert StorageCodec(StorageCipher([new, old])).decode(stored) == EVENT
    with pytest.raises(EncryptionKeyError, match="not loaded"):
        StorageCodec(StorageCipher([new])).decode(stored)


# Stores written before the codec ----------------------------------------------------------


def test_the_previous_release_store_migrates_and_every_history_reads_as_recorded(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "previous.sqlite"
    shutil.copyfile(FIXTURE, copy)
    with sqlite3.connect(copy) as conn:
        recorded = conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY client_id, seq"
        ).fetchall()
    store = open_store(f"sqlite:///{copy}")
    assert store.migrated_from == "1"
    assert [tuple(entry.as_dict().values()) for entry in store.iter_history()] == [
        tuple(json.loads(v) if i in (10, 11) else v for i, v in enumerate(row)) for row in recorded
    ]
    assert verify(store).ok
    store.close()
    # New events on top of the legacy rows: both kinds read and verify together.
    kapflow("ingest", str(cohort_file(tmp_path)), db=f"sqlite:///{copy}")
    result = kapflow("verify", db=f"sqlite:///{copy}")
    assert "verify: OK" in result.stdout


def _version_2_postgres_store_from_fixture(url: str) -> None:
    """A PostgreSQL store as the release before the codec left it (TEXT columns, schema
    version 2), holding the fixture's rows: PostgreSQL has no committed fixture."""
    schema = POSTGRES_SCHEMA.replace("BYTEA", 'TEXT COLLATE "C"')
    tables = ("history", "receipts", "clients", "tasks", "rejections", "parked", "outbox")
    with sqlite3.connect(FIXTURE) as source, psycopg.connect(url, autocommit=True) as target:
        target.execute(schema)
        for table in tables:
            names = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
            names = [n for n in names if n not in ("position", "arrival")]
            rows = source.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall()
            if rows:
                target.cursor().executemany(
                    f"INSERT INTO {table} ({', '.join(names)})"
                    f" VALUES ({', '.join(['%s'] * len(names))})",
                    rows,
                )
        # Version 1: the fixture has no clock columns to copy (`fires_at`, `next_due`), and
        # version 1 → 2 is the migration that fills them; a version-2 store had them filled.
        target.execute("INSERT INTO meta VALUES ('schema_version', '1')")


@pytest.mark.postgres
def test_a_postgres_store_of_text_columns_migrates_in_place_and_verifies(
    postgres_url: str, tmp_path: Path
) -> None:
    _version_2_postgres_store_from_fixture(postgres_url)
    copy = tmp_path / "previous.sqlite"
    shutil.copyfile(FIXTURE, copy)
    reference = open_store(f"sqlite:///{copy}")
    store = open_store(postgres_url)
    assert store.migrated_from == "1"
    assert verify(store).ok and verify(store).entries == 695
    for client_id in list(reference.client_ids())[:5]:
        assert store.history(client_id) == reference.history(client_id)
        assert store.get_client(client_id) == reference.get_client(client_id)
    assert store.tasks(limit=10**6) == reference.tasks(limit=10**6)
    store.close()
    reference.close()
    with psycopg.connect(postgres_url) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'history' AND column_name IN ('event', 'hash')"
            ).fetchall()
        )
    assert types == {"event": "bytea", "hash": "bytea"}


# Both stores ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_sqlite_and_postgres_show_the_same_histories_and_both_verify(
    postgres_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    events = cohort_file(tmp_path)
    for url in (sqlite_url, postgres_url):
        kapflow("ingest", str(events), db=url)
    store = open_store(sqlite_url)
    client_ids = list(store.client_ids())
    store.close()
    assert len(client_ids) == 12
    for client_id in client_ids:
        shown = [kapflow("history", client_id, db=url).stdout for url in (sqlite_url, postgres_url)]
        assert shown[0] == shown[1] and shown[0].count("\n") > 3
    verified = [kapflow("verify", db=url).stdout for url in (sqlite_url, postgres_url)]
    # The heads cover when each store recorded things and who read them: they differ.
    same = [[line for line in text.splitlines() if "head" not in line] for text in verified]
    assert same[0] == same[1] and "verify: OK" in verified[0]


# Encryption at rest --------------------------------------------------------------------


def test_an_encrypted_store_holds_no_clinical_field_in_clear_and_works_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "encrypted.db"
    url = f"sqlite:///{db}"
    events = cohort_file(tmp_path)
    # A dead letter carries its raw text, clinical fields included.
    with events.open("a") as lines:
        lines.write('{"type": "clinician.assessment_completed", "data": {"psychosis": tru\n')
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(key_file(tmp_path / "key")))
    kapflow("ingest", str(events), db=url, check=False)
    assert "verify: OK" in kapflow("verify", db=url).stdout
    store = open_store(url)
    assert store.rejections() and store.history("c-000001")
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("encrypted.db*"))
    assert b"clinician.assessment_completed" in raw  # types stay clear, for the indexes
    for field in CLINICAL_IN_CLEAR:
        assert field not in raw


def test_an_encrypted_store_refuses_to_start_without_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'encrypted.db'}"
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    kapflow("ingest", str(cohort_file(tmp_path, clients=2)), db=url)
    monkeypatch.delenv(ENCRYPTION_KEY_ENV)
    without = kapflow("verify", db=url, check=False)
    assert without.returncode != 0
    assert without.stderr.strip().splitlines() == [
        "kapflow: error: this store is encrypted at rest: set KAPFLOW_ENCRYPTION_KEY or"
        " KAPFLOW_ENCRYPTION_KEY_FILE to its key"
    ]
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    wrong = kapflow("verify", db=url, check=False)
    assert wrong.returncode != 0 and "does not open this store" in wrong.stderr
    with pytest.raises(StoreError, match="encrypted at rest"):
        monkeypatch.delenv(ENCRYPTION_KEY_ENV)
        open_store(url)


def test_rotate_key_moves_every_value_to_the_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'encrypted.db'}"
    old, new = key_file(tmp_path / "old.key"), key_file(tmp_path / "new.key")
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(old))
    kapflow("ingest", str(cohort_file(tmp_path)), db=url)
    before = kapflow("history", "c-000003", db=url).stdout
    rotated = kapflow("rotate-key", "--new-key-file", str(new), db=url)
    assert "re-encrypted" in rotated.stdout
    again = kapflow("rotate-key", "--new-key-file", str(new), db=url)
    assert "re-encrypted 0 stored values" in again.stdout  # resumable: nothing left to do
    assert kapflow("verify", db=url, check=False).returncode != 0  # the old key alone: refused
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(new))
    assert kapflow("history", "c-000003", db=url).stdout == before
    assert "verify: OK" in kapflow("verify", db=url).stdout


def test_an_interrupted_rotation_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kapflow.store.codec import rotation_store

    db = tmp_path / "kapflow.db"
    url = f"sqlite:///{db}"
    kapflow("ingest", str(cohort_file(tmp_path)), db=url)  # not encrypted yet
    with sqlite3.connect(db) as conn:
        values = sum(
            len(columns) * conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table, (_, columns) in ENCODED_COLUMNS.items()
        )
    new = key_file(tmp_path / "new.key")
    store = rotation_store(url, new)
    moved_first = next(store.reseal(chunk=50))  # interrupted after one chunk
    store.close()
    store = rotation_store(url, new)
    moved_rest = sum(store.reseal(chunk=50))
    store.close()
    assert moved_first == 50 * 2  # the first chunk: 50 history entries, event and outcome
    assert moved_first + moved_rest == values  # each value moved once, none twice
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(new))
    store = open_store(url)
    assert verify(store).ok
    store.close()


@pytest.mark.postgres
def test_an_encrypted_postgres_store_holds_no_clinical_field_in_clear_and_rotates(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key = generate_key()
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, old_key)
    kapflow("ingest", str(cohort_file(tmp_path, clients=4)), db=postgres_url)
    assert "verify: OK" in kapflow("verify", db=postgres_url).stdout
    with psycopg.connect(postgres_url) as conn:
        stored = conn.execute(
            "SELECT event || outcome FROM history UNION ALL SELECT snapshot FROM clients"
            " UNION ALL SELECT task FROM tasks"
        ).fetchall()
    raw = b"".join(bytes(value) for (value,) in stored)
    assert raw and all(field not in raw for field in CLINICAL_IN_CLEAR)
    monkeypatch.delenv(ENCRYPTION_KEY_ENV)
    refused = kapflow("history", "c-000001", db=postgres_url, check=False)
    assert refused.returncode != 0 and "encrypted at rest" in refused.stderr
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, old_key)
    before = kapflow("history", "c-000001", db=postgres_url).stdout
    new_key = key_file(tmp_path / "new.key")
    kapflow("rotate-key", "--new-key-file", str(new_key), db=postgres_url)
    monkeypatch.delenv(ENCRYPTION_KEY_ENV)
    monkeypatch.setenv(ENCRYPTION_KEY_FILE_ENV, str(new_key))
    assert kapflow("history", "c-000001", db=postgres_url).stdout == before
    assert "verify: OK" in kapflow("verify", db=postgres_url).stdout


# Size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encrypted", "measured", "bound"), [(False, 800, 900), (True, 911, 1000)])
def test_a_realistic_cohort_costs_under_one_kilobyte_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool, measured: int, bound: int
) -> None:
    if encrypted:
        monkeypatch.setenv(ENCRYPTION_KEY_ENV, generate_key())
    db = tmp_path / "cohort.db"
    kapflow("ingest", str(cohort_file(tmp_path, clients=300, seed=11)), db=f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        events = int(conn.execute("SELECT count(*) FROM history").fetchone()[0])
    per_event = os.path.getsize(db) / events
    # 2,209 B/event before the codec; `measured` is what this cohort (seed 11) gives with zstd.
    assert events > 5000 and per_event <= bound, (per_event, measured)

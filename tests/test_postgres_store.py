"""The PostgreSQL store keeps the SQLite store's guarantees with several workers at once.

tests/test_store.py runs the common store suite against both adapters; these tests cover
what only the distributed shape has: concurrent writers on the same clients, a consumer
following the outbox while they write, lost connections and server restarts, and the
same records as SQLite for the same input.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from builders import Journey
from conftest import FIXED_NOW, Clinic
from postgres_fixtures import admin_connection

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.service.audit import replay, verify
from kapflow.service.ingest import IngestResult, IngestService
from kapflow.store import open_store, postgres
from kapflow.store.base import EventStore, StoreError, entry_hash
from kapflow.store.codec import StorageCodec
from kapflow.store.postgres import PostgresStore
from workflow.client import GENESIS_HASH

pytestmark = pytest.mark.postgres

KAPFLOW = str(Path(sys.executable).parent / "kapflow")


# Helpers -----------------------------------------------------------------------------------
def cohort(clients: int, seed: int = 5) -> list[str]:
    return [json.dumps(event) for event in generate_cohort(clients=clients, seed=seed)]


def batches(lines: list[str], size: int) -> list[list[str]]:
    return [lines[start : start + size] for start in range(0, len(lines), size)]


def service_for(store: EventStore) -> IngestService:
    return IngestService(store, clock=lambda: FIXED_NOW)


def ingest_retrying(service: IngestService, batch: list[str]) -> tuple[list[IngestResult], int]:
    """What a worker does with a `StoreError`: send the same batch again."""
    for attempt in range(200):
        try:
            return service.ingest_batch(batch), attempt
        except StoreError:
            time.sleep(random.uniform(0.001, 0.02))
    raise AssertionError("a batch kept failing")


def run_workers(url: str, work: list[list[list[str]]]) -> int:
    """Each worker (own store, own connections) ingests its batches in order, all at once.

    Returns how many batches had to be retried after a conflict.
    """
    start = threading.Barrier(len(work))

    def worker(own: list[list[str]]) -> int:
        store = open_store(url)
        try:
            service = service_for(store)
            start.wait()
            return sum(ingest_retrying(service, batch)[1] for batch in own)
        finally:
            store.close()

    with ThreadPoolExecutor(len(work)) as pool:
        return sum(pool.map(worker, work))


def assert_gap_free_and_chained(store: EventStore) -> int:
    entries = 0
    for client_id in store.client_ids():
        history = store.history(client_id)
        snapshot = store.get_client(client_id)
        assert snapshot is not None
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), client_id
        previous = GENESIS_HASH
        for entry in history:
            assert entry.prev_hash == previous, (client_id, entry.seq)
            assert entry.hash == entry_hash(entry), (client_id, entry.seq)
            previous = entry.hash
        assert (snapshot.seq, snapshot.last_hash) == (len(history), previous), client_id
        entries += len(history)
    return entries


def everything(store: EventStore) -> dict[str, Any]:
    """Every record a store holds, positions aside (sequences may skip on PostgreSQL)."""
    clients = list(store.client_ids())
    return {
        "history": [e.as_dict() for e in store.iter_history()],
        "snapshots": {c: store.get_client(c).to_record() for c in clients},  # type: ignore[union-attr]
        "tasks": [t.as_dict() for t in store.tasks(limit=1_000_000)],
        "open_tasks": [t.as_dict() for t in store.tasks(open_only=True, limit=1_000_000)],
        "rejections": [record for _, record in store.rejections(limit=1_000_000)],
        "parked": store.parked_events(),
        "outbox": [(ref, record) for _, ref, record in store.outbox_after(0, limit=1_000_000)],
        "count_by_state": store.count_by_state(),
        "stats": store.stats(),
    }


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def drop_connections(url: str) -> int:
    """Terminate every server process connected to the test database, as a restart would."""
    admin, _ = admin_connection()
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (database_of(url),),
    ).fetchall()
    return len(rows)


def receipts_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM receipts").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[EventStore]:
    store = open_store(postgres_url)
    yield store
    store.close()


# Several workers at once ----------------------------------------------------------------
def test_two_workers_ingesting_the_same_clients_leave_gap_free_chained_histories(
    postgres_url: str, postgres_store: EventStore
) -> None:
    lines = cohort(clients=40)
    # Alternate batches between two workers: every client's events arrive through both.
    chunks = batches(lines, 9)
    run_workers(postgres_url, [chunks[0::2], chunks[1::2]])

    entries = assert_gap_free_and_chained(postgres_store)
    report = verify(postgres_store)
    assert report.ok, report.divergences[:5]
    assert report.entries == entries > len(lines) // 2
    history = list(postgres_store.iter_history())
    keys = [(e.source, e.event_id) for e in history]
    assert len(keys) == len(set(keys)), "an event was recorded twice"
    # Every distinct valid event got exactly one receipt, whichever worker recorded it.
    distinct = {(e["source"], e["id"]) for e in map(json.loads, lines)}
    assert receipts_count(postgres_url) == len(distinct)
    first_worker = {(e["source"], e["id"]) for c in chunks[0::2] for e in map(json.loads, c)}
    mixed = {
        client_id
        for client_id in postgres_store.client_ids()
        if {(e.source, e.event_id) in first_worker for e in postgres_store.history(client_id)}
        == {True, False}
    }
    assert len(mixed) >= 20, "the workers did not share clients"


def test_the_same_stream_from_two_workers_is_recorded_once_as_one_worker_records_it(
    postgres_url: str, postgres_store: EventStore, sqlite_url: str
) -> None:
    chunks = batches(cohort(clients=25), 12)
    # Redelivery to two workers at once (a consumer-group rebalance): both get everything.
    run_workers(postgres_url, [chunks, chunks])

    reference = open_store(sqlite_url)
    service = service_for(reference)
    for chunk in chunks:
        service.ingest_batch(chunk)
    assert everything(postgres_store) == everything(reference)
    reference.close()
    assert verify(postgres_store).ok


def test_a_consumer_following_the_outbox_misses_no_row_while_workers_write(
    postgres_url: str, postgres_store: EventStore
) -> None:
    chunks = batches(cohort(clients=30), 5)
    seen: list[int] = []
    writing = threading.Event()
    writing.set()

    def follow() -> None:
        last = 0
        while True:
            done = not writing.is_set()
            rows = postgres_store.outbox_after(last, limit=50)
            seen.extend(position for position, _, _ in rows)
            last = rows[-1][0] if rows else last
            if done and not rows:
                return

    consumer = threading.Thread(target=follow)
    consumer.start()
    try:
        run_workers(postgres_url, [chunks[0::3], chunks[1::3], chunks[2::3]])
    finally:
        writing.clear()
        consumer.join(timeout=60)
    everything_written = [p for p, _, _ in postgres_store.outbox_after(0, limit=1_000_000)]
    assert len(everything_written) > 100
    assert seen == everything_written, "a position committed behind the consumer's cursor"


# Same records as SQLite; audit on PostgreSQL ----------------------------------------------
def test_postgres_records_a_cohort_exactly_as_sqlite_does(
    postgres_store: EventStore, sqlite_url: str
) -> None:
    lines = cohort(clients=60, seed=7)
    sqlite_store = open_store(sqlite_url)
    recorded_at = datetime(2026, 12, 1, tzinfo=UTC)  # after the cohort: none of it is future
    for store in (sqlite_store, postgres_store):
        service = IngestService(store, clock=lambda: recorded_at, batch_size=97)
        list(service.ingest_stream(lines))

    recorded = everything(postgres_store)
    assert recorded == everything(sqlite_store)
    assert recorded["rejections"] and recorded["open_tasks"] and len(recorded["snapshots"]) == 60
    for store in (sqlite_store, postgres_store):
        report = verify(store)
        assert report.ok, report.divergences[:5]
    # Replay through PostgreSQL's history gives back the recorded snapshot, and the same
    # past as SQLite's.
    for client_id in list(postgres_store.client_ids())[:15]:
        entries = postgres_store.history(client_id)
        rebuilt = replay(entries, client_id).client.to_record()
        stored = postgres_store.get_client(client_id)
        assert stored is not None
        assert {**rebuilt, "parked": 0} == {**stored.to_record(), "parked": 0}
        moment = datetime.fromisoformat(entries[len(entries) // 2].occurred_at)
        assert (
            replay(entries, client_id, as_of=moment).client.to_record()
            == replay(sqlite_store.history(client_id), client_id, as_of=moment).client.to_record()
        )
    sqlite_store.close()


def test_verify_on_postgres_finds_an_event_altered_in_the_database(
    postgres_url: str, postgres_store: EventStore
) -> None:
    clinic = Clinic(postgres_store)
    j = Journey()
    clinic.send(*j.to_prepared())
    assert verify(postgres_store).ok
    codec = StorageCodec()  # the stored values are compressed: edited as an insider would
    with psycopg.connect(postgres_url) as conn:
        [(seq, stored)] = conn.execute(
            "SELECT seq, event FROM history WHERE type = 'clinician.assessment_completed'"
        ).fetchall()
        forged = codec.decode(stored).replace('"age_years":35', '"age_years":17')
        conn.execute("UPDATE history SET event = %s WHERE seq = %s", (codec.encode(forged), seq))
    assert '"age_years":17' in forged
    kinds = {(d.seq, d.kind) for d in verify(postgres_store).divergences}
    assert (3, "chain") in kinds and (3, "outcome") in kinds


def test_the_cli_ingests_and_verifies_against_postgres(postgres_url: str, tmp_path: Path) -> None:
    events = tmp_path / "cohort.jsonl"
    count = write_jsonl(generate_cohort(clients=8, seed=3), events)

    def kapflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KAPFLOW, *args, "--db", postgres_url],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ingest = kapflow("ingest", str(events))
    assert ingest.returncode == 0, ingest.stderr
    outcomes = [json.loads(line) for line in ingest.stdout.splitlines()]
    assert len(outcomes) == count
    assert {o["outcome"] for o in outcomes} <= {
        "accepted",
        "deviation",
        "duplicate",
        "rejected",
        "parked",
    }
    checked = kapflow("verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify: OK" in checked.stdout
    client = kapflow("client", outcomes[0]["subject"], "--json")
    assert client.returncode == 0, client.stderr
    assert json.loads(client.stdout)["client_id"] == outcomes[0]["subject"]
    # Ingesting the same file again changes nothing: every event is a duplicate.
    again = kapflow("ingest", str(events))
    assert {json.loads(line)["outcome"] for line in again.stdout.splitlines()} <= {
        "duplicate",
        "rejected",
    }
    assert kapflow("verify").returncode == 0


# Lost connections ---------------------------------------------------------------------
def test_connections_dropped_between_batches_are_replaced_without_an_error(
    postgres_url: str, postgres_store: EventStore
) -> None:
    clinic = Clinic(postgres_store)
    j = Journey()
    clinic.send(*j.to_assessed())
    # Two connections in the pool: a streamed read holds one while the other reads.
    for _ in postgres_store.iter_history():
        postgres_store.get_client("c-1")
    assert drop_connections(postgres_url) >= 1

    assert [r.outcome for r in clinic.send(j.evaluation())] == ["accepted"]
    assert drop_connections(postgres_url) >= 1
    assert postgres_store.get_client("c-1").state == "cleared"  # type: ignore[union-attr]
    assert verify(postgres_store).ok


def test_verify_reads_a_batch_of_clients_on_a_fresh_connection_after_a_drop(
    postgres_url: str, postgres_store: EventStore
) -> None:
    clinic = Clinic(postgres_store)
    first, second = Journey("c-1"), Journey("c-2")
    clinic.send(*first.to_assessed(), second.inquiry())
    expected = [(postgres_store.history(c), postgres_store.get_client(c)) for c in ("c-1", "c-2")]
    assert drop_connections(postgres_url) >= 1
    read = postgres_store.client_histories(["c-1", "c-2"])
    assert [(client.entries, client.snapshot) for client in read] == expected


def test_a_failed_batch_read_leaves_no_transaction_open_on_its_connection(
    postgres_store: EventStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    Clinic(postgres_store).send(Journey().inquiry())
    # The second statement of the read fails, inside its read transaction.
    missing = "SELECT client_id, snapshot FROM no_such_table WHERE client_id = ANY(%b::text[])"
    monkeypatch.setattr(postgres, "_SNAPSHOTS_OF_CLIENTS", missing)
    with caplog.at_level("WARNING"), pytest.raises(StoreError, match="42P01"):
        postgres_store.client_histories(["c-1"])
    monkeypatch.undo()
    [read] = postgres_store.client_histories(["c-1"])
    assert read.entries == postgres_store.history("c-1") and read.snapshot is not None
    # Rolled back by the store, not found open by the pool when it was returned.
    assert not [r for r in caplog.records if "rolling back" in r.getMessage()]


def test_a_connection_dropped_inside_a_batch_is_a_store_error_and_records_nothing(
    postgres_url: str, postgres_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clinic = Clinic(postgres_store)
    j = Journey()
    clinic.send(j.inquiry())
    before = postgres_store.stats()
    original = postgres_store.transaction

    @contextmanager
    def dropped_before_the_writes() -> Iterator[Any]:
        with original() as tx:
            write: Callable[[Any], None] = tx.write

            def drop_then_write(batch: Any) -> None:
                drop_connections(postgres_url)
                write(batch)

            tx.write = drop_then_write  # type: ignore[method-assign]
            yield tx

    monkeypatch.setattr(postgres_store, "transaction", dropped_before_the_writes)
    batch = [j.booking("assessment", "a-1"), j.assessment()]
    with pytest.raises(StoreError, match="lost the connection to PostgreSQL"):
        clinic.send(*batch)
    monkeypatch.undo()

    assert postgres_store.stats() == before
    assert postgres_store.get_client("c-1").state == "inquiry"  # type: ignore[union-attr]
    # The worker sends the same batch again: it applies in full, once.
    assert [r.outcome for r in clinic.send(*batch)] == ["accepted", "accepted"]
    assert [r.outcome for r in clinic.send(*batch)] == ["duplicate", "duplicate"]
    assert verify(postgres_store).ok


class RestartingServer:
    """A TCP proxy in front of PostgreSQL that can go away and come back like a restart."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_a_server_restart_is_a_clear_store_error_and_the_store_recovers_after_it(
    postgres_url: str,
) -> None:
    server = RestartingServer(("127.0.0.1", 5432))
    url = postgres_url.replace(":5432/", f":{server.port}/")
    store = PostgresStore(url)
    try:
        clinic = Clinic(store)
        j = Journey()
        clinic.send(*j.to_assessed())

        server.stop()
        # Reported at once with the reason, not after the pool's checkout timeout.
        for attempt in (lambda: clinic.send(j.evaluation()), lambda: store.get_client("c-1")):
            started = time.monotonic()
            with pytest.raises(StoreError, match="unavailable") as down:
                attempt()
            assert time.monotonic() - started < 5
            assert f"127.0.0.1:{server.port}" in str(down.value)

        server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                results = clinic.send(j.evaluation())
                break
            except StoreError:
                assert time.monotonic() < deadline, "the store never reconnected"
                time.sleep(0.2)
        assert [r.outcome for r in results] == ["accepted"]
        assert [e.seq for e in store.history("c-1")] == [1, 2, 3, 4]
        assert verify(store).ok
    finally:
        store.close()
        server.stop()


def test_an_unreachable_server_is_a_store_error_naming_where_it_was_looked_for() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}/kapflow"):
        open_store(f"postgresql://postgres:secret@127.0.0.1:{port}/kapflow")
    try:
        open_store(f"postgresql://postgres:secret@127.0.0.1:{port}/kapflow")
    except StoreError as error:
        assert "secret" not in str(error)


def test_postgres_urls_may_use_the_short_scheme(postgres_url: str) -> None:
    store = open_store(postgres_url.replace("postgresql://", "postgres://", 1))
    try:
        assert [r.outcome for r in Clinic(store).send(Journey().inquiry())] == ["accepted"]
    finally:
        store.close()

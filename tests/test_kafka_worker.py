"""`kapflow worker` on a real Kafka-compatible broker (no mocks): the same events give the
same histories as `kapflow ingest`, nothing is lost or applied twice across crashes and
outages, and bad messages are dead-lettered without stopping the partition."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from kafka_harness import (
    Topics,
    Worker,
    committed,
    comparable,
    progress,
    publish,
    read_all,
    run,
    structured,
    wait_until,
)
from test_cli import kapflow

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.entrypoints.broker import LocalBroker
from kapflow.service.outbox import render
from kapflow.store import open_store

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def reference(tmp_path: Path, events: list[dict[str, Any]]) -> tuple[str, int]:
    """The same events through `kapflow ingest` into SQLite: what the worker must match."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    url = f"sqlite:///{tmp_path / 'reference.db'}"
    kapflow("ingest", str(path), db=url)
    recorded, _ = progress(url)
    return url, recorded


def on_the_events_topic(
    broker: LocalBroker, tmp_path: Path, events: list[dict[str, Any]]
) -> tuple[Topics, str, int]:
    """Fresh topics holding `events`, a worker database URL, and how many inputs
    `kapflow ingest` records from the same events."""
    _, expected = reference(tmp_path, events)
    topics = Topics()
    run(topics.create(broker.bootstrap))
    run(publish(broker.bootstrap, topics.events, structured(events)))
    return topics, f"sqlite:///{tmp_path / 'worker.db'}", expected


def published_ids(db: str) -> dict[str, set[str]]:
    store = open_store(db)
    try:
        ids: dict[str, set[str]] = {}
        for _, ref, record in store.outbox_after(0, limit=10**7):
            for message in render(ref, record):
                ids.setdefault(message.topic, set()).add(message.id)
        return ids
    finally:
        store.close()


def test_worker_records_the_same_histories_as_cli_ingest(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    events = list(generate_cohort(clients=40, seed=21))
    reference_url, expected = reference(tmp_path, events)
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap))
    run(publish(kafka_broker.bootstrap, topics.events, structured(events)))
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    worker = Worker(kafka_broker.bootstrap, db, topics, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: progress(db) == (expected, 0), 90, "all events recorded and published")
    finally:
        worker.stop()
    assert comparable(db) == comparable(reference_url)
    assert "verify: OK" in kapflow("verify", db=db).stdout

    # Consumers receive exactly what the outbox recorded, keyed by client, as CloudEvents.
    expected_ids = published_ids(db)
    for topic, name in topics.outputs.items():
        records = run(read_all(kafka_broker.bootstrap, name, len(expected_ids.get(topic, ()))))
        got = [json.loads(r.value) for r in records]
        assert {m["id"] for m in got} == expected_ids.get(topic, set())
        assert all(
            r.key.decode() == m["subject"]
            for r, m in zip(records, got, strict=True)
            if topic != "rejected"
        )
    states = [
        json.loads(r.value)
        for r in run(read_all(kafka_broker.bootstrap, topics.outputs["state-changes"], 1))
    ]
    assert states[0]["type"] == "kapflow.state_changed" and states[0]["specversion"] == "1.0"


def test_each_client_keeps_one_partition_and_its_order_on_the_output_topics(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    """The relay batches records per partition itself: a client's messages land where the
    default partitioner (murmur2 of the key, as every Kafka client computes it) puts them,
    and in the order they were recorded."""
    events = list(generate_cohort(clients=30, seed=5))
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap, partitions=4))
    run(publish(kafka_broker.bootstrap, topics.events, structured(events)))
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    _, expected = reference(tmp_path, events)
    worker = Worker(kafka_broker.bootstrap, db, topics, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: progress(db) == (expected, 0), 90, "all events recorded and published")
    finally:
        worker.stop()
    ids = published_ids(db)
    for topic in ("state-changes", "tasks"):
        records = run(read_all(kafka_broker.bootstrap, topics.outputs[topic], len(ids[topic])))
        assert len(records) == len(ids[topic])
        seqs: dict[bytes, list[int]] = {}
        for record in records:
            assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 4
            seqs.setdefault(record.key, []).append(json.loads(record.value)["data"]["seq"])
        assert all(seq == sorted(seq) for seq in seqs.values()), "a client's order was lost"


def test_a_relay_process_publishes_what_workers_without_a_relay_recorded(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    """`KAPFLOW_EMBEDDED_RELAY=false`: the worker records and publishes nothing; `kapflow
    relay`, its own process, then publishes every outbox row, as the worker would have."""
    events = list(generate_cohort(clients=20, seed=8))
    topics, db, expected = on_the_events_topic(kafka_broker, tmp_path, events)
    worker = Worker(
        kafka_broker.bootstrap, db, topics, tmp_path / "worker.log", embedded_relay=False
    ).start()
    relay = Worker(kafka_broker.bootstrap, db, topics, tmp_path / "relay.log", command="relay")
    try:
        wait_until(lambda: progress(db)[0] == expected, 90, "all events recorded")
        rows = published_ids(db)
        store = open_store(db)
        try:
            outbox_rows = len(store.outbox_after(0, limit=10**7))
        finally:
            store.close()
        assert outbox_rows > 0 and progress(db)[1] == outbox_rows  # nothing published
        relay.start()
        wait_until(lambda: progress(db) == (expected, 0), 60, "the relay published the outbox")
    finally:
        worker.stop()
        exit_status = relay.stop()
    assert exit_status == 0, (tmp_path / "relay.log").read_text()
    assert "outbox left to `kapflow relay`" in (tmp_path / "worker.log").read_text()
    for topic, name in topics.outputs.items():
        records = run(read_all(kafka_broker.bootstrap, name, len(rows.get(topic, ()))))
        assert {json.loads(r.value)["id"] for r in records} == rows.get(topic, set())


def test_offsets_are_committed_only_for_events_the_store_has_recorded(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    """The worker takes the next batch while the last one is being recorded; neither is
    acknowledged to Kafka before its transaction commits. With the database locked by
    another process, nothing more is committed however long it waits; once the lock goes,
    everything is recorded and committed."""
    import sqlite3
    import time

    events = list(generate_cohort(clients=60, seed=6))
    half = len(events) // 2
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap, partitions=4))
    run(publish(kafka_broker.bootstrap, topics.events, structured(events[:half])))
    path = tmp_path / "worker.db"
    db = f"sqlite:///{path}"
    _, expected = reference(tmp_path, events)
    worker = Worker(kafka_broker.bootstrap, db, topics, tmp_path / "worker.log").start()
    try:
        wait_until(
            lambda: run(committed(kafka_broker.bootstrap, topics)) == half,
            90,
            "the first half recorded and committed",
        )
        recorded = progress(db)[0]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            run(publish(kafka_broker.bootstrap, topics.events, structured(events[half:])))
            time.sleep(8)  # faust commits acknowledged offsets every few seconds
            assert run(committed(kafka_broker.bootstrap, topics)) == half
            assert progress(db)[0] == recorded
        finally:
            holder.execute("COMMIT")
            holder.close()
        wait_until(lambda: progress(db) == (expected, 0), 120, "the rest after the lock")
        wait_until(
            lambda: run(committed(kafka_broker.bootstrap, topics)) == len(events),
            30,
            "every offset committed",
        )
    finally:
        worker.stop()


def test_poison_messages_are_dead_lettered_and_the_partition_continues(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    good = list(generate_cohort(clients=6, seed=4))
    first = good[0]
    binary_headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"bin-1"),
        ("ce_source", b"urn:qmts:scheduling"),
        ("ce_type", b"scheduling.inquiry_received"),
        ("ce_subject", b"c-bin"),
        ("ce_time", b"2026-01-05T09:00:00Z"),
        ("content-type", b"application/json"),
    ]
    unknown_type = dict(first, id="poison-3", type="scheduling.teleported")
    schema_error = dict(first, id="poison-4", data={"channel": "carrier_pigeon"})
    unkeyed = dict(first, id="rekey-1", subject="c-rekeyed")
    records = [
        (b"c-x", b"this is not json", []),
        (b"c-x", b'["a", "list"]', []),
        (first["subject"].encode(), json.dumps(unknown_type).encode(), []),
        (first["subject"].encode(), json.dumps(schema_error).encode(), []),
        (b"c-bin", json.dumps({"channel": "email"}).encode(), binary_headers),
        (None, json.dumps(unkeyed).encode(), []),
        *structured(good),
    ]
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap))
    run(publish(kafka_broker.bootstrap, topics.events, records))
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    reference_url, expected_good = reference(tmp_path, good)
    worker = Worker(kafka_broker.bootstrap, db, topics, tmp_path / "worker.log").start()
    try:
        wait_until(
            lambda: progress(db)[0] >= expected_good + 6 and progress(db)[1] == 0,
            90,
            "good and bad messages recorded",
        )
    finally:
        worker.stop()
    store = open_store(db)
    try:
        assert store.get_client("c-bin") is not None  # binary mode decoded
        assert store.get_client("c-rekeyed") is not None  # unkeyed → re-keyed → applied
        reasons = [json.loads(r.reasons)[0]["code"] for _, r in store.rejections(limit=100)]
    finally:
        store.close()
    found = Counter(reasons)
    assert found["MALFORMED_JSON"] == 1 and found["UNKNOWN_TYPE"] >= 1 and found["SCHEMA"] >= 2
    dead = run(read_all(kafka_broker.bootstrap, topics.outputs["rejected"], len(reasons)))
    letters = [json.loads(r.value)["data"] for r in dead]
    assert any(letter["original"] == "this is not json" for letter in letters)
    assert all(letter["reasons"] for letter in letters)
    good_view = comparable(db)
    reference_view = comparable(reference_url)
    for client_id, history in reference_view["histories"].items():
        assert good_view["histories"][client_id] == history


def test_a_sigkilled_worker_restarts_without_losing_or_repeating_anything(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    events = list(generate_cohort(clients=120, seed=8))
    reference_url, expected = reference(tmp_path, events)
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap))
    run(publish(kafka_broker.bootstrap, topics.events, structured(events)))
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    log = tmp_path / "worker.log"
    worker = Worker(kafka_broker.bootstrap, db, topics, log).start()
    wait_until(lambda: progress(db)[0] > 0, 60, "the first batch")
    worker.kill()
    interrupted = progress(db)[0]
    worker = Worker(kafka_broker.bootstrap, db, topics, log).start()
    try:
        wait_until(lambda: progress(db) == (expected, 0), 120, "the rest after the restart")
    finally:
        worker.stop()
    assert interrupted < expected, "the kill must land mid-stream"
    assert comparable(db) == comparable(reference_url)
    assert "verify: OK" in kapflow("verify", db=db).stdout


def test_a_broker_restart_between_batches_loses_nothing(tmp_path: Path) -> None:
    events = list(generate_cohort(clients=30, seed=9))
    half = len(events) // 2
    _, expected_first_half = reference(tmp_path / "first", events[:half])
    reference_url, expected = reference(tmp_path, events)
    broker = LocalBroker().start()
    port = broker.port
    topics = Topics()
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    worker = Worker(broker.bootstrap, db, topics, tmp_path / "worker.log")
    try:
        run(topics.create(broker.bootstrap))
        run(publish(broker.bootstrap, topics.events, structured(events[:half])))
        worker.start()
        wait_until(lambda: progress(db) == (expected_first_half, 0), 60, "first half")
        broker.stop()
        broker = LocalBroker(port=port).start()
        # The test broker keeps its log in memory; a real Kafka broker keeps it on disk.
        # Restore the log as it was (first half at the same offsets), then add the rest.
        run(topics.create(broker.bootstrap))
        run(publish(broker.bootstrap, topics.events, structured(events)))
        wait_until(lambda: progress(db) == (expected, 0), 120, "second half after the restart")
    finally:
        worker.stop()
        broker.stop()
    assert comparable(db) == comparable(reference_url)


def test_the_worker_clock_fires_each_overdue_deadline_once(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    from builders import Journey

    clients = [Journey(f"c-clock-{n}") for n in range(6)]
    inquiries = [j.inquiry() for j in clients]  # schedule-assessment due two days later
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap))
    run(publish(kafka_broker.bootstrap, topics.events, structured(inquiries)))
    db = f"sqlite:///{tmp_path / 'worker.db'}"
    worker = Worker(
        kafka_broker.bootstrap, db, topics, tmp_path / "worker.log", clock_seconds=1
    ).start()

    def deadline_counts() -> list[int]:
        store = open_store(db)
        try:
            return [
                sum(e.type == "system.deadline_reached" for e in store.history(j.client_id))
                for j in clients
            ]
        finally:
            store.close()

    try:
        # Each client: the assessment task's deadline, its supervisor task's, the 90-day
        # inactivity timer, the follow-up task's deadline and its supervisor's.
        wait_until(lambda: deadline_counts() == [5] * len(clients), 90, "deadline events")
        import time

        time.sleep(4)  # several more clock rounds: nothing fires twice
        assert deadline_counts() == [5] * len(clients)
    finally:
        worker.stop()
    assert "verify: OK" in kapflow("verify", db=db).stdout
    # Nothing the worker's clock left undone: a manual tick now fires only duplicates.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tick = json.loads(kapflow("tick", "--now", now, "--json", db=db).stdout)
    assert set(tick["outcomes"]) <= {"duplicate"}


@pytest.mark.postgres
def test_two_workers_on_four_partitions_with_postgresql_match_cli_ingest(
    kafka_broker: LocalBroker, tmp_path: Path, postgres_url: str
) -> None:
    events = list(generate_cohort(clients=80, seed=13))
    reference_url, expected = reference(tmp_path, events)
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap, partitions=4))
    run(publish(kafka_broker.bootstrap, topics.events, structured(events)))
    open_store(postgres_url).close()  # schema first, then the workers
    workers = [
        Worker(kafka_broker.bootstrap, postgres_url, topics, tmp_path / f"w{n}.log").start()
        for n in range(2)
    ]
    try:
        wait_until(lambda: progress(postgres_url) == (expected, 0), 180, "both workers done")
    finally:
        for worker in workers:
            worker.stop()
    assert comparable(postgres_url) == comparable(reference_url)
    assert "verify: OK" in kapflow("verify", db=postgres_url).stdout
    logs = [(tmp_path / f"w{n}.log").read_text() for n in range(2)]
    assert all("recorded a batch" in log for log in logs), "both workers took partitions"


def _pg_cluster(action: str) -> None:
    import shutil
    import subprocess

    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("pg_ctlcluster not available to stop and start PostgreSQL")
    version = sorted(Path("/etc/postgresql").iterdir())[0].name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
        if action == "stop"
        else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.postgres
def test_a_postgresql_restart_mid_stream_loses_nothing(
    kafka_broker: LocalBroker, tmp_path: Path, postgres_url: str
) -> None:
    import time

    events = list(generate_cohort(clients=120, seed=17))
    reference_url, expected = reference(tmp_path, events)
    topics = Topics()
    run(topics.create(kafka_broker.bootstrap))
    open_store(postgres_url).close()
    worker = Worker(kafka_broker.bootstrap, postgres_url, topics, tmp_path / "w.log").start()
    try:
        half = len(events) // 2
        run(publish(kafka_broker.bootstrap, topics.events, structured(events[:half])))
        wait_until(lambda: progress(postgres_url)[0] > 0, 60, "the first batches")
        _pg_cluster("stop")
        try:
            # The rest arrives while the database is down: the worker must wait, not skip.
            run(publish(kafka_broker.bootstrap, topics.events, structured(events[half:])))
            time.sleep(4)
        finally:
            _pg_cluster("start")
        wait_until(lambda: _reachable(postgres_url), 60, "PostgreSQL back")
        wait_until(lambda: progress(postgres_url) == (expected, 0), 180, "all events after restart")
    finally:
        worker.stop()
    assert comparable(postgres_url) == comparable(reference_url)
    assert "store unavailable" in (tmp_path / "w.log").read_text()


def _reachable(url: str) -> bool:
    try:
        progress(url)
    except Exception:  # noqa: BLE001 - still starting up
        return False
    return True


def test_only_one_relay_holds_the_outbox_lease_at_a_time(tmp_path: Path) -> None:
    from kapflow.publishers.lease import lease_for

    url = f"sqlite:///{tmp_path / 'k.db'}"
    first, second = lease_for(url), lease_for(url)
    assert first.acquire() and first.acquire()  # re-entrant for its holder
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


@pytest.mark.postgres
def test_the_postgresql_lease_moves_when_its_holder_goes(postgres_url: str) -> None:
    from kapflow.publishers.lease import lease_for

    first, second = lease_for(postgres_url), lease_for(postgres_url)
    assert first.acquire() and not second.acquire()
    first.release()  # a dead worker's session ends the same way
    assert second.acquire()
    second.release()


@pytest.mark.parametrize("program", ["worker", "relay"])
def test_a_kafka_process_with_a_wrong_setting_stops_with_one_line_naming_it(
    program: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAPFLOW_KAFKA", raising=False)
    db = f"sqlite:///{tmp_path / 'k.db'}"
    wrong = kapflow(program, "--kafka", "no port here", db=db, check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(f"kapflow {program}: ") and "kafka" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    unopenable = kapflow(
        program, "--kafka", "127.0.0.1:9", db="sqlite:////nonexistent/k.db", check=False
    )
    assert unopenable.returncode == 3, unopenable.stderr
    assert f"kapflow {program}: database error" in unopenable.stderr


def test_a_relay_started_before_the_broker_waits_and_stops_at_once_on_sigterm(
    tmp_path: Path,
) -> None:
    """No broker: the relay says why and retries (it must not exit: the broker may be
    starting); SIGTERM during its back-off stops it promptly and cleanly."""
    import socket
    import time

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "relay.log"
    relay = Worker(
        f"127.0.0.1:{port}", f"sqlite:///{tmp_path / 'k.db'}", Topics(), log, command="relay"
    ).start()
    wait_until(
        lambda: "cannot start publishing to the broker" in log.read_text(), 30, "a retry line"
    )
    assert relay.process is not None and relay.process.poll() is None  # still waiting
    stopping = time.monotonic()
    assert relay.stop() == 0, log.read_text()
    assert time.monotonic() - stopping < 5

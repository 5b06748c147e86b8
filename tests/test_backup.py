"""Backup and restore: a copy taken while kapflow is writing is a store as it stood at one
moment — it verifies, and recording continues on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from postgres_fixtures import admin_connection, postgres_url  # noqa: F401 - the fixture
from serve_harness import KAPFLOW, ServeProcess

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.service.ingest import IngestService
from kapflow.store import open_store
from kapflow.store.access_log import AccessRecord, open_access_log


def kapflow(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAPFLOW, *arguments], capture_output=True, text=True, timeout=300)


def later_events(tmp_path: Path, clients: int = 40) -> Path:
    """Events of clients the original store never saw (a different seed and id range)."""
    events = [
        {**e, "subject": "r-" + e["subject"], "id": "r-" + e["id"]}
        for e in generate_cohort(clients=clients, seed=99)
    ]
    path = tmp_path / "later.jsonl"
    write_jsonl(events, path)
    return path


def verified(db: str) -> dict[str, Any]:
    result = kapflow("verify", "--db", db, "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_backup_taken_while_serve_is_writing_verifies_and_ingest_continues_on_it(
    tmp_path: Path,
) -> None:
    events = list(generate_cohort(clients=150, seed=21))
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    stop = threading.Event()
    posted = [0]

    with ServeProcess(
        db, tmp_path / "serve.log", "--insecure-dev", "--clock-interval", "0"
    ) as serve:

        def write_continuously() -> None:
            with httpx.Client(base_url=serve.url, timeout=60) as client:
                for start in range(0, len(events), 25):
                    if stop.is_set():
                        return
                    batch = events[start : start + 25]
                    assert client.post("/v1/events", json=batch).status_code == 200
                    client.get(f"/v1/clients/{batch[0]['subject']}/history")  # access log
                    posted[0] += len(batch)

        writer = threading.Thread(target=write_continuously)
        writer.start()
        backups: list[tuple[Path, dict[str, Any], int]] = []
        try:
            for number in range(3):
                while posted[0] < (number + 1) * 300 and writer.is_alive():
                    time.sleep(0.05)
                out = tmp_path / f"backup-{number}.db"
                result = kapflow("backup", "--db", db, "--out", str(out), "--json")
                assert result.returncode == 0, result.stderr
                backups.append((out, json.loads(result.stdout), posted[0]))
        finally:
            stop.set()
            writer.join(120)
    assert any(posted_then < len(events) for _, _, posted_then in backups)  # taken mid-stream

    for out, summary, _ in backups:
        assert summary["history"] > 0 and summary["access_log"] > 0
        assert not Path(f"{out}-wal").exists()  # one self-contained file
        restored = tmp_path / f"restored-{out.stem}.db"
        shutil.copy(out, restored)  # restore: a copy of the backup is the store
        url = f"sqlite:///{restored}"
        report = verified(url)
        assert report["entries"] == summary["history"]
        assert report["access_log"]["rows"] == summary["access_log"]
        ingest = kapflow("ingest", "--db", url, str(later_events(tmp_path)))
        assert ingest.returncode == 0, ingest.stderr
        assert verified(url)["entries"] > summary["history"]
    first = backups[0][1]
    print(
        f"\n{len(backups)} backups during writes; the first: {first['history']} history entries,"
        f" {first['bytes']} bytes in {first['seconds']:.3f}s"
    )


def test_a_backup_never_overwrites_and_points_postgresql_users_to_pg_dump(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    open_store(db).close()
    existing = tmp_path / "backup.db"
    existing.write_text("an earlier backup")
    refused = kapflow("backup", "--db", db, "--out", str(existing))
    assert refused.returncode == 3
    assert "never overwrites" in refused.stderr
    assert existing.read_text() == "an earlier backup"
    on_postgres = kapflow("backup", "--db", "postgresql://postgres@127.0.0.1/x", "--out", "b.db")
    assert on_postgres.returncode == 3 and "pg_dump" in on_postgres.stderr


@pytest.mark.postgres
def test_a_pg_dump_taken_during_writes_restores_to_a_store_that_verifies(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            if os.environ.get("KAPFLOW_TEST_STRICT") == "1":
                pytest.fail(f"{tool} is not installed", pytrace=False)
            pytest.skip(f"{tool} is not installed")
    events = list(generate_cohort(clients=80, seed=23))
    store = open_store(postgres_url)
    service = IngestService(store)
    service.ingest_batch(events[:200])
    access_log = open_access_log(postgres_url)
    access_log.record(AccessRecord("2026-11-27T08:00:00Z", "audit-team", "auditor", "export"))
    dump = tmp_path / "kapflow.dump"

    def write_rest() -> None:
        for start in range(200, len(events), 20):
            service.ingest_batch(events[start : start + 20])

    writer = threading.Thread(target=write_rest)
    writer.start()
    dumped = subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", postgres_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    writer.join(120)
    access_log.close()
    store.close()
    assert dumped.returncode == 0, dumped.stderr

    admin, _ = admin_connection()
    restored_name = f"kapflow_restore_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{restored_name}"')
    restored = postgres_url.rsplit("/", 1)[0] + f"/{restored_name}"
    try:
        loaded = subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={restored}", str(dump)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loaded.returncode == 0, loaded.stderr
        report = verified(restored)
        assert report["entries"] > 0 and report["access_log"]["rows"] == 1
        ingest = kapflow("ingest", "--db", restored, str(later_events(tmp_path, clients=20)))
        assert ingest.returncode == 0, ingest.stderr
        assert verified(restored)["entries"] > report["entries"]
    finally:
        admin_connection()[0].execute(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_fixtures import kafka_broker  # noqa: E402,F401
from postgres_fixtures import postgres_url  # noqa: E402,F401

from kapflow.service.ingest import IngestResult, IngestService  # noqa: E402
from kapflow.store import open_store  # noqa: E402
from kapflow.store.base import EventStore  # noqa: E402
from workflow.client import ClientSnapshot  # noqa: E402

FIXED_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clinic:
    """A kapflow store with an ingest service, as the scenario tests use it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.service = IngestService(store, clock=lambda: FIXED_NOW)

    def send(self, *events: Any) -> list[IngestResult]:
        flat: list[Any] = []
        for item in events:
            flat.extend(item if isinstance(item, list) else [item])
        return self.service.ingest_batch(flat)

    def last(self, *events: Any) -> IngestResult:
        return self.send(*events)[-1]

    def client(self, client_id: str = "c-1") -> ClientSnapshot:
        snapshot = self.store.get_client(client_id)
        assert snapshot is not None, f"client {client_id} not recorded"
        return snapshot

    def open_tasks(self, code: str, client_id: str = "c-1") -> list[dict[str, Any]]:
        return [
            task.as_dict()
            for task in self.client(client_id).open_tasks.values()
            if task.code == code
        ]

    def open_codes(self, client_id: str = "c-1") -> list[str]:
        return sorted(task.code for task in self.client(client_id).open_tasks.values())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kapflow.db'}"


@pytest.fixture
def clinic(sqlite_url: str) -> Iterator[Clinic]:
    store = open_store(sqlite_url)
    yield Clinic(store)
    store.close()

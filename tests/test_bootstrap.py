"""One bootstrap builds every runtime; each concept has one definition.

`kapflow/bootstrap.py` assembles the store, the service layer, the single writer (serve)
and the care clock; the CLI, serve and the worker only translate their transport. These
tests hold the parts that the three runtimes used to build each their own way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import pytest
from builders import Journey

from events.operations import TaskOwner
from kapflow.bootstrap import bootstrap
from kapflow.entrypoints.http.schemas import ParkedOut
from kapflow.publishers.lease import lease_for
from kapflow.service.outbox import prune_published
from kapflow.service.writer import Commit
from kapflow.store import StoreError, open_store
from kapflow.store.access_log import open_access_log
from kapflow.store.database import database_kind
from workflow.tasks import Owner

KAPFLOW = [sys.executable, "-m", "kapflow"]


def test_a_parked_fact_expired_by_serves_clock_reaches_metrics_and_streams(
    sqlite_url: str,
) -> None:
    """In serve every write goes through the single writer, the expiry of a parked event
    too: its commit reaches the listeners that feed metrics and live streams."""
    runtime = bootstrap(sqlite_url, writer_queue_events=1000)
    assert runtime.writer is not None
    commits: list[Commit] = []
    runtime.writer.add_listener(commits.append)
    runtime.writer.start()
    try:
        j = Journey()
        inquiry = j.inquiry()
        early = j.integration("s-1")  # an integration session before any dosing: parked
        outcomes = [r.outcome for r in runtime.writer.submit([inquiry, early]).result()]
        assert outcomes == ["accepted", "parked"]

        clock = runtime.clock()
        assert clock.tick(j.now + timedelta(hours=71)).expired_parked == []
        report = clock.tick(j.now + timedelta(hours=73))

        [expired] = report.expired_parked
        assert (expired.id, expired.outcome) == (early["id"], "deviation")
        assert [r.code for r in expired.reasons][0] == "PREMATURE_EXPIRED"
        seen = [result for commit in commits for result in commit.results]
        assert expired in seen, "the expiry went around the writer"
        assert runtime.store.parked_events() == []
    finally:
        runtime.close()


def test_a_quiet_clock_tick_through_the_writer_records_no_transaction(sqlite_url: str) -> None:
    runtime = bootstrap(sqlite_url, writer_queue_events=1000)
    assert runtime.writer is not None
    runtime.writer.start()
    try:
        report = runtime.clock().tick(Journey().now)
        assert report.fired == [] and report.expired_parked == []
        assert runtime.writer.stats.transactions == 0
    finally:
        runtime.close()


@pytest.mark.parametrize("url", ["mysql://db/kapflow", "sqlite://relative.db", "kapflow.db"])
def test_every_part_of_a_runtime_refuses_a_database_url_it_cannot_open_alike(url: str) -> None:
    with pytest.raises(StoreError) as chosen:
        database_kind(url)
    for opener in (open_store, open_access_log, lease_for, bootstrap):
        with pytest.raises(StoreError) as refused:
            opener(url)
        assert str(refused.value) == str(chosen.value)


def test_each_task_owner_is_named_from_the_one_list() -> None:
    named = {value for name, value in vars(Owner).items() if name.isupper()}
    assert named == set(get_args(TaskOwner))


def test_the_cli_and_the_api_show_a_parked_event_with_the_same_fields(
    sqlite_url: str, tmp_path: Path
) -> None:
    j = Journey()
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in (j.inquiry(), j.integration("s-1"))))
    subprocess.run(
        [*KAPFLOW, "ingest", str(events), "--db", sqlite_url],
        check=True,
        text=True,
        capture_output=True,
    )
    shown = subprocess.run(
        [*KAPFLOW, "parked", "--json", "--db", sqlite_url],
        check=True,
        capture_output=True,
        text=True,
    )
    [row] = json.loads(shown.stdout)
    assert set(row) == set(ParkedOut.model_fields)
    assert row["subject"] == "c-1" and row["event"]["type"] == "clinician.integration_completed"


def test_serves_upkeep_runs_in_the_writers_turn_and_records_nothing(sqlite_url: str) -> None:
    """Pruning the published outbox is a write: in serve it waits its turn at the single
    writer like every other, and as it records nothing, no listener hears of it."""
    runtime = bootstrap(sqlite_url, writer_queue_events=1000)
    assert runtime.writer is not None
    commits: list[Commit] = []
    runtime.writer.add_listener(commits.append)
    runtime.writer.start()
    try:
        runtime.writer.submit([Journey().inquiry()]).result()
        pruned = runtime.writer.maintain(
            lambda store: prune_published(store, datetime.now(UTC))
        ).result()
        assert pruned == 0  # nothing published yet: nothing to prune
        assert len(commits) == 1 and runtime.writer.stats.transactions == 1
    finally:
        runtime.close()

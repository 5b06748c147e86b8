"""The `kapflow` command line, through the real console entry point."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builders import Journey

KAPFLOW = shutil.which("kapflow", path=str(Path(sys.executable).parent)) or "kapflow"


def kapflow(
    *args: str, stdin: str | None = None, db: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [KAPFLOW, *args] + (["--db", db] if db else [])
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def write_events(path: Path, events: list[Any]) -> Path:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return path


@pytest.fixture
def journey_file(tmp_path: Path) -> Path:
    j = Journey()
    events = [
        *j.to_prepared(),
        j.booking("dosing", "d-1"),
        j.dosing_started("s-1", chaperone=False),
        *j.dosing("s-1"),
    ]
    return write_events(tmp_path / "events.jsonl", [*events, "{broken", events[0]])


def test_ingest_prints_one_outcome_line_per_event_and_exits_zero(
    journey_file: Path, sqlite_url: str
) -> None:
    result = kapflow("ingest", str(journey_file), db=sqlite_url)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 11
    assert set(lines[0]) == {"id", "subject", "type", "outcome", "reasons", "state"}
    assert [line["outcome"] for line in lines] == (
        ["accepted"] * 6 + ["deviation", "rejected", "accepted", "rejected", "duplicate"]
    )
    # Dosed without a confirmed chaperone: recorded, flagged R7. The same session cannot
    # start a second time: a contradiction of the recorded facts, rejected.
    assert (lines[6]["reasons"][0]["code"], lines[6]["state"]) == ("R7", "dosed")
    assert lines[7]["reasons"][0]["code"] == "SESSION_ALREADY_STARTED"
    assert lines[8]["state"] == "dosed"


def test_ingest_ends_with_a_summary_on_standard_error_and_keeps_standard_output_data(
    journey_file: Path, sqlite_url: str
) -> None:
    result = kapflow("ingest", str(journey_file), db=sqlite_url)
    assert len(result.stdout.splitlines()) == 11  # one JSON line per event, nothing else
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("ingested 11 events in ")
    assert "accepted 7, deviation 1, duplicate 1, parked 0, rejected 2" in summary


def test_ingest_reads_standard_input(journey_file: Path, sqlite_url: str) -> None:
    result = kapflow("ingest", "-", stdin=journey_file.read_text(), db=sqlite_url)
    assert len(result.stdout.splitlines()) == 11


def test_client_json_has_the_contract_fields(journey_file: Path, sqlite_url: str) -> None:
    kapflow("ingest", str(journey_file), db=sqlite_url)
    view = json.loads(kapflow("client", "c-1", "--json", db=sqlite_url).stdout)
    assert {
        "client_id",
        "state",
        "pathway",
        "doses_remaining",
        "preparation_sessions",
        "open_tasks",
        "reasons",
    } <= set(view)
    assert (view["state"], view["pathway"], view["doses_remaining"]) == ("dosed", "high_dose", 1)
    codes = {task["code"] for task in view["open_tasks"]}
    assert "schedule-integration" in codes
    task = view["open_tasks"][0]
    assert {
        "id",
        "status",
        "intent",
        "priority",
        "code",
        "for",
        "owner",
        "focus",
        "authored_on",
        "due",
    } <= set(task)


def test_history_replay_and_tasks(journey_file: Path, sqlite_url: str) -> None:
    kapflow("ingest", str(journey_file), db=sqlite_url)
    history = json.loads(kapflow("history", "c-1", "--json", db=sqlite_url).stdout)
    assert [h["seq"] for h in history] == list(range(1, 9))
    as_of = history[3]["occurred_at"]
    replayed = json.loads(
        kapflow("replay", "c-1", "--as-of", as_of, "--json", db=sqlite_url).stdout
    )
    assert replayed["state"] == "cleared"
    tasks = json.loads(
        kapflow("tasks", "--open", "--owner", "billing", "--json", db=sqlite_url).stdout
    )
    assert {t["code"] for t in tasks} == {"bill-private-time", "verify-insurance-benefits"}
    overdue = json.loads(
        kapflow(
            "tasks", "--overdue", "--now", "2030-01-01T00:00:00Z", "--json", db=sqlite_url
        ).stdout
    )
    assert overdue and all(t["status"] == "requested" for t in overdue)
    none_yet = json.loads(
        kapflow(
            "tasks", "--overdue", "--now", "2026-01-01T00:00:00Z", "--json", db=sqlite_url
        ).stdout
    )
    assert none_yet == []
    assert "scheduling.inquiry_received" in kapflow("history", "c-1", db=sqlite_url).stdout


def test_verify_exits_non_zero_on_tampering(journey_file: Path, sqlite_url: str) -> None:
    kapflow("ingest", str(journey_file), db=sqlite_url)
    assert "verify: OK" in kapflow("verify", db=sqlite_url).stdout
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    conn.execute("UPDATE history SET occurred_at = '2020-01-01T00:00:00Z' WHERE seq = 2")
    conn.commit()
    conn.close()
    result = kapflow("verify", "--json", db=sqlite_url, check=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["ok"] and report["divergences"][0]["kind"] == "chain"


def test_export_csv_and_jsonl(journey_file: Path, sqlite_url: str, tmp_path: Path) -> None:
    kapflow("ingest", str(journey_file), db=sqlite_url)
    out = tmp_path / "audit.csv"
    kapflow("export", "--format", "csv", "--out", str(out), db=sqlite_url)
    assert out.read_text().splitlines()[0].startswith("client_id,seq,occurred_at")
    jsonl = kapflow("export", db=sqlite_url).stdout.splitlines()
    assert len(jsonl) == 8 and json.loads(jsonl[0])["hash"]


def test_diagram_and_schema(tmp_path: Path) -> None:
    text = kapflow("diagram").stdout
    assert text.splitlines()[1] == "stateDiagram-v2" and "on_hold" in text
    if shutil.which("dot"):
        assert "<svg" in kapflow("diagram", "--format", "svg").stdout
    kapflow("schema", "--out", str(tmp_path / "schemas"))
    from events import EVENT_TYPES

    assert len(list((tmp_path / "schemas").glob("*.schema.json"))) == len(EVENT_TYPES)


def test_errors_are_one_line_never_a_traceback(tmp_path: Path, sqlite_url: str) -> None:
    missing = kapflow("ingest", str(tmp_path / "nope.jsonl"), db=sqlite_url, check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    kapflow("migrate", db=sqlite_url)  # an empty store: only a writer creates one
    unknown = kapflow("client", "nobody", db=sqlite_url, check=False)
    assert unknown.returncode == 1 and unknown.stderr.startswith("kapflow: error:")
    bad_db = kapflow("client", "x", db="mysql://nope", check=False)
    assert bad_db.returncode != 0 and "Traceback" not in bad_db.stderr
    no_folder = kapflow("verify", db=f"sqlite:///{tmp_path}/no/such/dir/k.db", check=False)
    assert no_folder.returncode != 0 and len(no_folder.stderr.strip().splitlines()) == 1


def test_db_comes_from_the_environment(journey_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = subprocess.run(
        [KAPFLOW, "ingest", str(journey_file)],
        capture_output=True,
        text=True,
        env={"KAPFLOW_DB": url, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env.db").exists()

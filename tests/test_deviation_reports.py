"""Readiness, the deviation report and the full export, through the `kapflow` console script.

The clinic's questions: may this client be dosed now (`kapflow check`)? which facts of care
broke the protocol, and has each been reviewed or resolved (`kapflow deviations`)? does the
auditors' export hold every decision, rejections included (`kapflow export`)?
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import Journey
from test_cli import kapflow, write_events

DOSING_READINESS_ITEMS = ["R5", "R6", "R7", "R8", "R9", "HOLD", "IN_CARE"]


def ready_for_dosing(client_id: str) -> tuple[Journey, list[dict[str, Any]]]:
    """Cleared, prepared, a dosing booked and its chaperone confirmed."""
    j = Journey(client_id)
    return j, [*j.to_prepared(), j.booking("dosing", "d-1"), j.chaperone("d-1")]


def dosed_without_chaperone(client_id: str) -> tuple[Journey, list[dict[str, Any]]]:
    j = Journey(client_id)
    return j, [
        *j.to_prepared(),
        j.booking("dosing", "d-1"),
        j.dosing_started("s-1", chaperone=False),
    ]


def dosed_on_a_clearance_renewed_late(client_id: str) -> tuple[dict[str, Any], list[Any]]:
    """The clearance expired the day before the dosing; its renewal, issued before the
    dosing, reaches kapflow only after it. Returns the renewal and the events in arrival
    order."""
    j = Journey(client_id)
    prepared = j.to_prepared(valid_until="2026-01-06")
    booked = [j.booking("dosing", "d-1"), j.chaperone("d-1")]
    renewal = j.renewal(valid_until="2026-06-30")
    j.now += timedelta(days=2)
    return renewal, [*prepared, *booked, j.dosing_started("s-1"), renewal]


@pytest.fixture(scope="module")
def clinic_db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four clients: one ready to dose, one dosed without a chaperone (R7, open), one whose
    expired clearance was renewed late (R5, resolved), one dosed without a chaperone whose
    review a clinician has done (R7, reviewed). Plus one line that is not JSON (rejected)."""
    tmp_path = tmp_path_factory.mktemp("deviation-reports")
    sqlite_url = f"sqlite:///{tmp_path / 'kapflow.db'}"
    _, ready = ready_for_dosing("c-ready")
    _, unchaperoned = dosed_without_chaperone("c-r7")
    renewal, late = dosed_on_a_clearance_renewed_late("c-late")
    _, reviewed = dosed_without_chaperone("c-reviewed")
    events = [*ready, *unchaperoned, *late, *reviewed, "{not json"]
    outcomes = [
        json.loads(line)
        for line in kapflow(
            "ingest", str(write_events(tmp_path / "clinic.jsonl", events)), db=sqlite_url
        ).stdout.splitlines()
    ]
    assert [o["outcome"] for o in outcomes].count("deviation") == 3
    review = next(
        task
        for task in json.loads(kapflow("client", "c-reviewed", "--json", db=sqlite_url).stdout)[
            "open_tasks"
        ]
        if task["code"] == "review-protocol-deviation"
    )
    kapflow("tasks", "complete", review["id"], "--now", "2026-01-06T09:00:00Z", db=sqlite_url)
    return {"db": sqlite_url, "renewal": renewal, "events": events, "review": review}


# --- kapflow check ----------------------------------------------------------------------


def test_a_prepared_client_with_a_confirmed_chaperone_is_ready_to_dose(
    clinic_db: dict[str, Any],
) -> None:
    result = kapflow(
        "check", "c-ready", "--dose", "--at", "2026-01-06T10:00:00Z", "--json", db=clinic_db["db"]
    )
    readiness = json.loads(result.stdout)
    assert readiness["client_id"] == "c-ready"
    assert (readiness["action"], readiness["at"], readiness["state"]) == (
        "dose",
        "2026-01-06T10:00:00Z",
        "prepared",
    )
    assert readiness["ready"] is True
    assert [check["rule"] for check in readiness["checks"]] == DOSING_READINESS_ITEMS
    assert all(check["passed"] and check["why"] == "ok" for check in readiness["checks"])


def test_a_second_dosing_before_integration_is_not_ready_and_says_why(
    clinic_db: dict[str, Any],
) -> None:
    result = kapflow(
        "check", "c-r7", "--dose", "--at", "2026-01-07T10:00:00Z", "--json", db=clinic_db["db"]
    )
    assert result.returncode == 0  # readiness is data, not an error
    readiness = json.loads(result.stdout)
    failed = {check["rule"]: check["why"] for check in readiness["checks"] if not check["passed"]}
    assert readiness["ready"] is False
    assert "R8" in failed and "integration" in failed["R8"]


def test_a_dosing_after_the_clearance_expired_fails_r5_in_the_readable_checklist(
    sqlite_url: str, tmp_path: Path
) -> None:
    _, events = ready_for_dosing("c-expiring")
    kapflow("ingest", str(write_events(tmp_path / "e.jsonl", events)), db=sqlite_url)
    text = kapflow("check", "c-expiring", "--dose", "--at", "2027-02-01T09:00:00Z", db=sqlite_url)
    lines = text.stdout.splitlines()
    assert lines[0] == "c-expiring: NOT READY to dose at 2027-02-01T09:00:00Z (state prepared)"
    r5 = next(line for line in lines if "] R5 " in line)
    assert r5.strip().startswith("[FAIL] R5") and "expired" in r5
    assert any(line.strip().startswith("[ok  ] R7") for line in lines)


def test_check_judges_a_dosing_now_when_no_time_is_given(clinic_db: dict[str, Any]) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    readiness = json.loads(
        kapflow("check", "c-ready", "--dose", "--json", db=clinic_db["db"]).stdout
    )
    at = datetime.fromisoformat(readiness["at"].replace("Z", "+00:00"))
    assert before <= at <= datetime.now(UTC) + timedelta(seconds=1)


def test_check_on_an_unknown_client_is_one_clear_line_and_a_failure(
    clinic_db: dict[str, Any],
) -> None:
    result = kapflow("check", "c-nobody", "--dose", "--json", db=clinic_db["db"], check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "kapflow: error: client c-nobody not found"


# --- kapflow deviations -----------------------------------------------------------------


def deviations(db: str, *args: str) -> list[dict[str, Any]]:
    printed = kapflow("deviations", "--json", *args, db=db).stdout
    return [json.loads(line) for line in printed.splitlines()]


def test_every_deviation_is_listed_with_its_rules_review_and_status(
    clinic_db: dict[str, Any],
) -> None:
    rows = {row["client_id"]: row for row in deviations(clinic_db["db"])}
    assert set(rows) == {"c-r7", "c-late", "c-reviewed"}  # c-ready broke no rule
    unchaperoned = rows["c-r7"]
    assert unchaperoned["event_type"] == "clinician.dosing_started"
    assert unchaperoned["rules"] == ["R7"]
    assert unchaperoned["reasons"][0]["code"] == "R7"
    assert unchaperoned["status"] == "open" and unchaperoned["review_task_id"]
    assert unchaperoned["resolved_by_event_id"] is None
    assert unchaperoned["pathway_version"] and unchaperoned["seq"] >= 1
    # The renewal was in force at the dosing's time: it resolved the R5 deviation.
    assert rows["c-late"]["rules"] == ["R5"]
    assert rows["c-late"]["status"] == "resolved"
    assert rows["c-late"]["resolved_by_event_id"] == clinic_db["renewal"]["id"]
    assert rows["c-reviewed"]["status"] == "reviewed"
    assert rows["c-reviewed"]["review_task_id"] == clinic_db["review"]["id"]


def test_open_lists_only_the_deviations_still_to_review(clinic_db: dict[str, Any]) -> None:
    assert [row["client_id"] for row in deviations(clinic_db["db"], "--open")] == ["c-r7"]


def test_client_lists_one_clients_deviations(clinic_db: dict[str, Any]) -> None:
    [row] = deviations(clinic_db["db"], "--client", "c-late")
    assert (row["client_id"], row["status"]) == ("c-late", "resolved")
    assert deviations(clinic_db["db"], "--client", "c-ready") == []


def test_from_and_to_select_deviations_by_when_they_happened(clinic_db: dict[str, Any]) -> None:
    # Every journey starts on 2026-01-05; the late-renewal dosing happened two days later.
    late_only = deviations(clinic_db["db"], "--from", "2026-01-07T00:00:00Z")
    assert [row["client_id"] for row in late_only] == ["c-late"]
    early = deviations(clinic_db["db"], "--to", "2026-01-06T00:00:00Z")
    assert {row["client_id"] for row in early} == {"c-r7", "c-reviewed"}


def test_deviations_as_csv_for_the_clinical_lead(clinic_db: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "deviations.csv"
    result = kapflow("deviations", "--format", "csv", "--out", str(out), db=clinic_db["db"])
    assert "wrote 3 deviations" in result.stderr
    rows = {row["client_id"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows["c-r7"]["rules"] == "R7" and rows["c-r7"]["status"] == "open"
    assert rows["c-late"]["resolved_by_event_id"] == clinic_db["renewal"]["id"]
    assert rows["c-r7"]["reasons"].startswith("R7: ")


# --- kapflow export --include-rejections ------------------------------------------------


def test_an_export_with_rejections_holds_every_decision_as_json_lines(
    clinic_db: dict[str, Any],
) -> None:
    plain = kapflow("export", db=clinic_db["db"]).stdout.splitlines()
    lines = [
        json.loads(line)
        for line in kapflow(
            "export", "--include-rejections", db=clinic_db["db"]
        ).stdout.splitlines()
    ]
    history, rejections = lines[: len(plain)], lines[len(plain) :]
    assert all("kind" not in line for line in history)
    assert sum(line["outcome"].get("outcome") == "deviation" for line in history) == 3
    assert len(rejections) == 1
    rejection = rejections[0]
    assert rejection["kind"] == "rejection"
    assert rejection["original"] == "{not json"
    assert rejection["reasons"][0]["code"]


def test_an_export_with_rejections_as_csv_tells_the_kinds_apart_in_one_table(
    clinic_db: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "audit.csv"
    result = kapflow(
        "export", "--format", "csv", "--include-rejections", "--out", str(out), db=clinic_db["db"]
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    kinds = [row["kind"] for row in rows]
    assert kinds[-1] == "rejection" and kinds.count("rejection") == 1
    assert set(kinds[:-1]) == {"history"}
    assert f"{len(rows) - 1} history entries and 1 rejections" in result.stderr
    deviations_marked = [row for row in rows if row["outcome"] == "deviation"]
    assert {(row["client_id"], row["deviations"]) for row in deviations_marked} == {
        ("c-r7", "R7"),
        ("c-late", "R5"),
        ("c-reviewed", "R7"),
    }
    assert rows[-1]["outcome"] == "rejected" and rows[-1]["seq"] == ""


def test_a_revocation_dated_before_a_dosing_but_delivered_after_it_reveals_a_deviation(
    sqlite_url: str, tmp_path: Path
) -> None:
    _, ready = ready_for_dosing("c-revoked")
    j = Journey("c-revoked", start=datetime.fromisoformat(ready[-1]["time"]))
    revocation = j.revocation()
    dosing = j.dosing_started("s-1")
    events = [*ready, dosing, revocation]  # the dosing was recorded within the protocol
    outcomes = kapflow("ingest", str(write_events(tmp_path / "e.jsonl", events)), db=sqlite_url)
    assert [json.loads(line)["outcome"] for line in outcomes.stdout.splitlines()][-2:] == [
        "accepted",
        "accepted",
    ]
    [row] = deviations(sqlite_url)
    # Revoked before the dosing: no clearance in force (R5), and the client was on hold.
    assert (row["event_id"], row["rules"], row["status"]) == (
        dosing["id"],
        ["R5", "ON_HOLD"],
        "open",
    )
    assert row["revealed_by_event_id"] == revocation["id"]
    # The review is raised by the dosing, though the revocation revealed it: its id begins
    # with the dosing's time and is the one it would have had if opened at the dosing.
    from workflow.tasks import TaskCode, task_id_for

    dosed_at = datetime.fromisoformat(dosing["time"].replace("Z", "+00:00"))
    assert row["review_task_id"] == task_id_for(
        "c-revoked",
        dosing["source"],
        dosing["id"],
        TaskCode.REVIEW_PROTOCOL_DEVIATION,
        "s-1",
        raised_at=dosed_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    assert uuid.UUID(row["review_task_id"]).version == 8


def test_the_report_reads_a_postgresql_store_the_same_way(
    postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the history is streamed through a server-side cursor while each
    review task is read: the report must not need more than the store's pool."""
    renewal, late = dosed_on_a_clearance_renewed_late("c-pg-late")
    _, unchaperoned = dosed_without_chaperone("c-pg-r7")
    events = write_events(tmp_path / "pg.jsonl", [*late, *unchaperoned])
    kapflow("ingest", str(events), db=postgres_url)
    rows = {row["client_id"]: row for row in deviations(postgres_url)}
    assert rows["c-pg-late"]["status"] == "resolved"
    assert rows["c-pg-late"]["resolved_by_event_id"] == renewal["id"]
    assert (rows["c-pg-r7"]["rules"], rows["c-pg-r7"]["status"]) == (["R7"], "open")

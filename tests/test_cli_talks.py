"""How the command line talks to the person at the terminal (issue 20): a typo in `--db`
is an error, not a new store; "now" is the clock unless a run must be reproducible; an
empty answer is said in words; every flag explains itself."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from builders import Journey
from test_cli import KAPFLOW, kapflow, write_events

from kapflow.entrypoints.cli import build_parser
from kapflow.store import open_store
from kapflow.store.access_log import AccessRecord, open_access_log


@pytest.fixture
def clinic_url(tmp_path: Path) -> str:
    """A store where c-1 is prepared and was dosed without a confirmed chaperone (R7)."""
    j = Journey()
    events = [
        *j.to_prepared(),
        j.booking("dosing", "d-1"),
        j.dosing_started("s-1", chaperone=False),
        *j.dosing("s-1"),
    ]
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    kapflow("ingest", str(write_events(tmp_path / "events.jsonl", events)), db=url)
    return url


# --- 1. a command that only reads never creates a store ---------------------------------


@pytest.mark.parametrize(
    "command", [("client", "c-1"), ("tasks",), ("deviations",), ("replay", "c-1"), ("verify",)]
)
def test_a_read_of_a_mistyped_store_says_there_is_none_and_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    result = kapflow(*command, db=url, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kapflow: error: no kapflow store at {url}"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_read_of_an_empty_sqlite_file_says_there_is_no_store_and_adds_no_tables(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = kapflow("client", "c-1", db=f"sqlite:///{empty}", check=False)
    assert result.returncode == 2 and "no kapflow store at" in result.stderr
    assert empty.stat().st_size == 0


@pytest.mark.postgres
def test_a_read_of_an_empty_postgresql_database_says_there_is_no_store(
    postgres_url: str,
) -> None:
    result = kapflow("client", "c-1", db=postgres_url, check=False)
    assert result.returncode == 2
    assert "kapflow: error: no kapflow store at " in result.stderr
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('meta')").fetchone() == (None,)


# --- 2. --now defaults to now ------------------------------------------------------------


def test_overdue_tasks_are_judged_against_the_clock_when_no_time_is_given(
    clinic_url: str,
) -> None:
    # Journeys are dated in 2026-01; by the clock of any run of this test they are overdue,
    # just as they are by an explicit time long after.
    now = json.loads(kapflow("tasks", "--overdue", "--json", db=clinic_url).stdout)
    later = kapflow("tasks", "--overdue", "--now", "2100-01-01T00:00:00Z", "--json", db=clinic_url)
    assert now and now == json.loads(later.stdout)


def test_a_tick_without_a_time_advances_the_clock_to_now(clinic_url: str) -> None:
    before = json.loads(
        kapflow("tick", "--now", "2026-01-01T00:00:00Z", "--json", db=clinic_url).stdout
    )
    assert before["now"] == "2026-01-01T00:00:00Z"
    tick = json.loads(kapflow("tick", "--json", db=clinic_url).stdout)
    assert tick["now"] > "2026-12-01T00:00:00Z"


# --- 3. replay before anything was recorded -----------------------------------------------


def test_replay_known_at_before_the_first_entry_says_nothing_was_recorded(
    clinic_url: str,
) -> None:
    early = "2026-01-01T00:00:00Z"
    text = kapflow("replay", "c-1", "--known-at", early, db=clinic_url).stdout
    assert text == f"c-1: nothing was recorded by {early}\n"
    view = json.loads(kapflow("replay", "c-1", "--known-at", early, "--json", db=clinic_url).stdout)
    assert (view["state"], view["events_applied"]) == (None, 0)
    text = kapflow("replay", "c-1", "--as-of", early, db=clinic_url).stdout
    assert text == f"c-1: nothing had happened by {early}\n"


# --- 4. deviations as a table ------------------------------------------------------------


def test_deviations_are_a_table_for_the_clinical_lead_and_json_lines_on_request(
    clinic_url: str,
) -> None:
    table = kapflow("deviations", db=clinic_url).stdout.splitlines()
    assert table[0].split()[:4] == ["OCCURRED", "AT", "CLIENT", "RULES"]
    assert len(table) == 2 and "c-1" in table[1] and "R7" in table[1] and "open" in table[1]
    [row] = [
        json.loads(line)
        for line in kapflow("deviations", "--json", db=clinic_url).stdout.splitlines()
    ]
    assert (row["client_id"], row["rules"]) == ("c-1", ["R7"])


def test_no_matching_deviations_is_said_in_words_not_silence(clinic_url: str) -> None:
    result = kapflow("deviations", "--client", "c-nobody", db=clinic_url)
    assert result.stdout == ""
    assert result.stderr.strip() == "no protocol deviations match"


# --- 5. access-log filters; dates for times -----------------------------------------------

READS = [
    AccessRecord("2026-11-30T22:00:00Z", "audit-team", "auditor", "history", "c-1"),
    AccessRecord("2026-11-30T23:30:00Z", "audit-team", "auditor", "replay", "c-2"),
    AccessRecord("2026-12-01T09:00:00Z", "ops", "admin", "history", "c-1"),
]


@pytest.fixture
def access_log_url(sqlite_url: str) -> str:
    open_store(sqlite_url).close()
    log = open_access_log(sqlite_url)
    for read in READS:
        log.record(read)
    log.close()
    return sqlite_url


def read_positions(url: str, *args: str, tz: str | None = None) -> list[int]:
    env = {**os.environ, "KAPFLOW_CLINIC_TZ": tz} if tz else None
    result = subprocess.run(
        [KAPFLOW, "access-log", "--db", url, *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["position"] for line in result.stdout.splitlines()]


def test_the_privacy_officer_sees_one_clients_reads_by_one_person(access_log_url: str) -> None:
    assert read_positions(access_log_url, "--client", "c-1") == [1, 3]
    assert read_positions(access_log_url, "--who", "audit-team") == [1, 2]
    assert read_positions(access_log_url, "--client", "c-1", "--who", "ops") == [3]


def test_a_date_means_the_start_of_that_day_in_the_clinics_time_zone(
    access_log_url: str,
) -> None:
    assert read_positions(access_log_url, "--from", "2026-12-01") == [3]
    # Midnight in Auckland (UTC+13 in December) is 11:00 UTC the day before.
    assert read_positions(access_log_url, "--from", "2026-12-01", tz="Pacific/Auckland") == [
        1,
        2,
        3,
    ]
    assert read_positions(access_log_url, "--to", "2026-12-01", tz="America/New_York") == [1, 2]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("access-log", "--from", "9999-12-31T23:59:59-05:00"), "out of range"),
        (("access-log", "--from", "0001-01-01T00:00:00+01:00"), "out of range"),
        (("tasks", "--overdue", "--now", "yesterday"), "not a date (2026-12-01)"),
        (("replay", "c-1", "--as-of", "2026-12-01T09:00"), "needs a time zone"),
        (("deadlines", "--within", "1e300d"), "not a duration"),
        (("check", "c-1", "--dose", "--at", "2026-13-01"), "not a date"),
    ],
)
def test_an_extreme_or_malformed_time_is_one_clear_line_and_exit_two(
    clinic_url: str, args: tuple[str, ...], says: str
) -> None:
    result = kapflow(*args, db=clinic_url, check=False)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert says in line and "internal error" not in line


def test_an_unknown_clinic_time_zone_is_named_in_the_error(access_log_url: str) -> None:
    result = subprocess.run(
        [KAPFLOW, "access-log", "--db", access_log_url, "--from", "2026-12-01"],
        capture_output=True,
        text=True,
        env={**os.environ, "KAPFLOW_CLINIC_TZ": "Mars/Olympus"},
    )
    assert result.returncode == 2 and "KAPFLOW_CLINIC_TZ" in result.stderr


# --- 6. --json only where it is honoured; 7. every flag and command explains itself ------


def every_command(
    parser: argparse.ArgumentParser, path: str = "kapflow"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{path} {name}", sub), *every_command(sub, f"{path} {name}")]
    return found


def test_every_flag_has_help_and_every_command_an_example() -> None:
    parser = build_parser()
    commands = every_command(parser)
    assert len(commands) > 25
    for name, sub in [("kapflow", parser), *commands]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        assert "example:\n  kapflow " in (sub.epilog or ""), f"{name}: no example"


def test_json_is_offered_only_by_commands_that_print_json() -> None:
    offered = {
        name.removeprefix("kapflow ")
        for name, sub in every_command(build_parser())
        if any("--json" in action.option_strings for action in sub._actions)
    }
    assert {"protocol", "diagram", "ingest", "export", "serve"}.isdisjoint(offered)
    assert {"client", "replay", "tasks", "deviations", "check", "keys create"} <= offered
    ignored = kapflow("protocol", "--json", check=False)
    assert ignored.returncode == 2 and "unrecognized arguments: --json" in ignored.stderr


def test_reading_the_access_log_of_a_mistyped_store_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    result = kapflow("access-log", db=url, check=False)
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"kapflow: error: no kapflow store at {url}",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_reading_the_access_log_of_an_empty_postgresql_database_creates_no_table(
    postgres_url: str,
) -> None:
    result = kapflow("access-log", db=postgres_url, check=False)
    assert result.returncode == 2 and "no kapflow store at " in result.stderr
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('access_log')").fetchone() == (None,)

"""`kapflow serve` keeps kapflow's clock: deadlines and parked-event expiry, exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from builders import Journey
from test_http_api import start_service


def test_the_service_clock_records_overdue_deadlines_once_and_lists_deadlines(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    server, secrets = start_service(db, clock_interval=0.3)
    try:
        with httpx.Client(
            base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {secrets['admin']}"}
        ) as admin:
            j = Journey("c-clock")  # January 2026: long overdue by the server clock
            inquiry = j.inquiry()
            early = j.integration("s-1")
            outcomes = admin.post("/v1/events", json=[inquiry, early]).json()
            assert [o["outcome"] for o in outcomes] == ["accepted", "parked"]
            listed = admin.get(
                "/v1/deadlines", params={"now": "2026-01-08T00:00:00Z", "within_hours": 0}
            ).json()
            assert [(d["code"], d["overdue"]) for d in listed] == [("schedule-assessment", True)]

            def deadline_events() -> int:
                history = admin.get("/v1/clients/c-clock/history").json()
                return sum(e["type"] == "system.deadline_reached" for e in history)

            deadline = time.monotonic() + 30
            while deadline_events() < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            # The task, its supervisor task, the 90-day inactivity timer and the follow-up it
            # opens; and the review of the expired early event with its supervisor task.
            time.sleep(1.5)  # several more ticks
            settled = deadline_events()
            assert settled >= 5
            time.sleep(1)
            assert deadline_events() == settled  # nothing fires twice
            assert admin.get("/v1/parked").json() == []  # expired by the clock
            # Still premature after the window: recorded as a deviation, never dropped.
            history = admin.get("/v1/clients/c-clock/history").json()
            [expired] = [e for e in history if e["event_id"] == early["id"]]
            assert "PREMATURE_EXPIRED" in json.dumps(expired)
            verify = admin.get("/v1/verify").json()
            assert verify["ok"] is True
    finally:
        server.stop()

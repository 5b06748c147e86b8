"""The work queue as staff use it (issue 20), in a real browser (Debian's chromium, via
Playwright), on a demo clinic dated to today in a clinic whose time zone is not UTC: a person
picks a view of the queue (mine, unclaimed, due today, overdue); the client's own reminders
are messages to send, not staff tasks; every time is the clinic's, with its zone named;
choosing a state or funnel stage lists its clients; and on a phone-wide screen a task's
buttons stay on screen. axe-core finds no serious or critical issue at 1400 or 400 px."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from test_http_api import Service, start_service
from test_http_dashboard import browser, expect  # noqa: F401 - a fixture
from test_http_work_queue_browser import SHOTS, chromium, serious_violations  # noqa: F401

from kapflow.demo.clinic import run_clinic
from kapflow.service.ingest import IngestService
from kapflow.settings import SettingsError, load_clinic_settings
from kapflow.store import open_store

# Half an hour off UTC and no daylight saving: a time shown in UTC by mistake cannot pass.
CLINIC_TZ = "Asia/Kolkata"
ZONE_NAME = "GMT+5:30"
WIDE, NARROW = 1400, 400


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('queue-views') / 'kapflow.db'}"
    store = open_store(db)
    run_clinic(IngestService(store), datetime.now(UTC), clients=40, seed=11)
    store.close()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_CLINIC_TZ", CLINIC_TZ)
        server, secrets = start_service(db, poll_interval=0.3)
        yield Service(server.url, db, secrets)
        server.stop()


def sign_in(chromium: Any, service: Service, width: int) -> Any:  # noqa: F811
    context = chromium.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{service.url}/dashboard")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#login-key", service.secrets["operations"])
    page.press("#login-key", "Enter")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
    page.wait_for_selector("#queue tbody tr", timeout=15_000)
    return page


def open_tasks(service: Service) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {service.secrets['operations']}"}
    response = httpx.get(f"{service.url}/v1/tasks?open=true&limit=5000", headers=headers)
    response.raise_for_status()
    tasks: list[dict[str, Any]] = response.json()
    return tasks


def clinic_time(iso: str) -> str:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(CLINIC_TZ))
    return f"{moment:%Y-%m-%d %H:%M} {ZONE_NAME}"


def choose_view(page: Any, name: str) -> None:
    page.get_by_role("group", name="View").get_by_label(name, exact=True).check()


def shown_tasks(page: Any) -> set[str]:
    return {row.get_attribute("data-task") for row in page.locator("#queue tbody tr").all()}


@pytest.mark.slow
@pytest.mark.browser
def test_staff_narrow_the_queue_to_their_own_unclaimed_due_today_or_overdue_tasks(
    chromium: Any,  # noqa: F811
    service: Service,
) -> None:
    page = sign_in(chromium, service, WIDE)
    row = page.locator("#queue tr", has=page.get_by_role("button", name="Claim")).first
    claimed = row.get_attribute("data-task")
    row.get_by_role("button", name="Claim").click()
    expect(page.locator("#announcer")).to_contain_text("accepted", timeout=10_000)

    choose_view(page, "mine")
    expect(page.locator("#queue tbody tr")).to_have_count(1, timeout=10_000)
    assert shown_tasks(page) == {claimed}
    status = page.locator("#queue .chip.status")
    expect(status).to_have_text("in progress — claimed by operations-key")

    staff = [t for t in open_tasks(service) if t["owner"] != "client"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    today = datetime.now(ZoneInfo(CLINIC_TZ)).strftime("%Y-%m-%d")
    expected = {
        "unclaimed": {t["id"] for t in staff if t["status"] == "requested"},
        "due today": {t["id"] for t in staff if clinic_time(t["due"]).startswith(today)},
        "overdue": {t["id"] for t in staff if t["due"] < now},
    }
    assert claimed not in expected["unclaimed"]
    assert expected["unclaimed"] and expected["overdue"], "the demo clinic has both"
    for view, ids in expected.items():
        choose_view(page, view)
        expect(page.locator("#queue tbody tr")).to_have_count(min(len(ids), 200), timeout=10_000)
        assert shown_tasks(page) <= ids, view
    for row in page.locator("#queue tbody tr").all():  # the overdue view says so in words
        assert "overdue" in (row.text_content() or "")

    choose_view(page, "all open")
    expect(page.locator("#queue tbody tr")).to_have_count(min(len(staff), 200), timeout=10_000)
    assert serious_violations(page) == []
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_reminders_the_client_acts_on_are_messages_to_send_not_tasks_to_claim(
    chromium: Any,  # noqa: F811
    service: Service,
) -> None:
    reminders = {t["id"]: t for t in open_tasks(service) if t["owner"] == "client"}
    assert reminders, "the demo clinic has clients waiting on an abstinence reminder"
    page = sign_in(chromium, service, WIDE)
    messages = page.locator("#messages tbody tr")
    expect(messages).to_have_count(len(reminders), timeout=10_000)
    assert {row.get_attribute("data-task") for row in messages.all()} == set(reminders)
    assert any(
        "abstinence" in (code or "")
        for code in page.locator("#messages tr").evaluate_all(
            "rows => rows.map(r => r.dataset.code)"
        )
    )
    assert page.locator("#messages button").count() == 0, "no Claim or Complete on a message"
    assert not shown_tasks(page) & set(reminders), "not in the staff queue either"
    expect(page.locator("#messages-count")).to_have_text(f"{len(reminders)} to send")
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_every_time_on_the_dashboard_is_the_clinics_with_its_zone_named(
    chromium: Any,  # noqa: F811
    service: Service,
) -> None:
    page = sign_in(chromium, service, WIDE)
    tasks = {t["id"]: t for t in open_tasks(service)}
    rows = page.locator("#queue tbody tr").all()[:10] + page.locator("#messages tbody tr").all()[:5]
    for row in rows:
        due = tasks[row.get_attribute("data-task")]["due"]
        assert row.locator(".due-time").text_content() == clinic_time(due)
    clock = re.compile(r"^\d\d:\d\d:\d\d " + re.escape(ZONE_NAME) + "$")
    assert clock.match(page.text_content("#updated") or "")
    times = page.locator("#changes .time").all_text_contents()
    assert times and all(clock.match(t) for t in times), times[:3]
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_choosing_a_state_or_a_funnel_stage_lists_the_clients_there_now(
    chromium: Any,  # noqa: F811
    service: Service,
) -> None:
    headers = {"Authorization": f"Bearer {service.secrets['operations']}"}

    def clients_in(state: str) -> set[str]:
        found = httpx.get(f"{service.url}/v1/clients?state={state}", headers=headers).json()
        return {c["client_id"] for c in found}

    page = sign_in(chromium, service, WIDE)
    listed = page.locator("#state-clients-list a.client")
    page.get_by_role("button", name="dosed: list the clients there now").click()
    expect(page.locator("#state-clients-title")).to_have_text("Clients in dosed now")
    expect(page.locator("#state-clients-count")).to_contain_text("clients")
    assert set(listed.all_text_contents()) == clients_in("dosed")

    # A pathway state, by keyboard.
    page.locator('#pathway-svg [data-state="inquiry"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator("#state-clients-title")).to_have_text("Clients in inquiry now")
    expect(page.locator("#state-clients-title")).to_be_focused()
    expect(listed).to_have_count(len(clients_in("inquiry")), timeout=10_000)
    assert set(listed.all_text_contents()) == clients_in("inquiry")
    assert serious_violations(page) == []
    page.screenshot(path=str(SHOTS / "kapflow-queue-views-1400.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_on_a_phone_wide_screen_a_tasks_buttons_stay_on_screen(
    chromium: Any,  # noqa: F811
    service: Service,
) -> None:
    page = sign_in(chromium, service, NARROW)
    page.screenshot(path=str(SHOTS / "kapflow-queue-views-400-top.png"))
    complete = page.locator("#queue tbody tr").first.get_by_role("button", name="Complete")
    complete.scroll_into_view_if_needed()
    box = complete.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= NARROW, box
    # The page scrolls, not a box inside it, and nothing runs off its right edge.
    assert page.eval_on_selector("#queue", "q => getComputedStyle(q).overflowY") == "visible"
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW
    assert serious_violations(page) == []
    page.screenshot(path=str(SHOTS / "kapflow-queue-views-400.png"), full_page=True)
    page.locator("#queue-title").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "kapflow-queue-views-400-queue.png"))
    page.locator("#messages-title").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "kapflow-queue-views-400-messages.png"))
    assert not page.errors, page.errors
    page.context.close()


def test_a_clinic_time_zone_that_is_not_an_iana_zone_is_named_as_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAPFLOW_CLINIC_TZ", "Mars/Olympus_Mons")
    with pytest.raises(SettingsError, match="KAPFLOW_CLINIC_TZ"):
        load_clinic_settings()
    monkeypatch.delenv("KAPFLOW_CLINIC_TZ")
    assert load_clinic_settings().tz == "UTC"

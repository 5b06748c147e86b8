"""The work queue and the client page in a real browser (Debian's chromium, via Playwright),
on a demo clinic dated to today: staff complete a task with its button and see the counts
and the live stream change; a client page shows where the client stands and, moved back
with the "as of" selector, where they stood before. axe-core (npm, pinned) checks both
pages for serious or critical accessibility violations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_http_api import Service, start_service
from test_http_dashboard import STRICT, browser, expect  # noqa: F401 - a fixture

from kapflow.demo.clinic import run_clinic
from kapflow.service.ingest import IngestService
from kapflow.store import open_store

AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("KAPFLOW_SCREENSHOTS", "/tmp"))
# WCAG 2.1 A and AA, and axe's best practices.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-queue') / 'kapflow.db'}"
    store = open_store(db)
    # Dated to the wall clock, as `kapflow demo` does: the browser judges "overdue" by it.
    run_clinic(IngestService(store), datetime.now(UTC), clients=40, seed=7)
    store.close()
    server, secrets = start_service(db, poll_interval=0.3)
    yield Service(server.url, db, secrets)
    server.stop()


@pytest.fixture(scope="module")
def chromium(browser: Any) -> Any:  # noqa: F811 - test_http_dashboard's browser, shared
    return browser


def sign_in(chromium: Any, service: Service, role: str) -> Any:
    # axe is injected as a script: only the test's own injection bypasses the page's CSP.
    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{service.url}/dashboard")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#login-key", service.secrets[role])
    page.press("#login-key", "Enter")
    page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
    page.wait_for_selector("#queue tbody tr", timeout=15_000)
    return page


def serious_violations(page: Any) -> list[dict[str, Any]]:
    if not AXE.exists():
        message = "axe-core missing: run `npm ci` in the repository"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        AXE_TAGS,
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"][:3]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def kpi(page: Any, name: str) -> int:
    return int((page.text_content(f"#kpi-{name}") or "0").replace(",", ""))


NOT_A_HOLDS_TASK = (
    '#queue tbody tr:not([data-code="renew-low-dose-subscription"]):not([data-code="review-hold"])'
)


@pytest.mark.slow
@pytest.mark.browser
def test_staff_complete_a_task_from_the_queue_and_see_counts_and_stream_change(
    chromium: Any, service: Service
) -> None:
    page = sign_in(chromium, service, "operations")
    assert page.locator("#changes li").count() > 0, "recent state changes filled on load"
    assert serious_violations(page) == []
    # Overdue is said in words, not only in red.
    for row in page.locator("#queue tr.is-overdue").all():
        assert "overdue" in (row.text_content() or "")

    open_before = kpi(page, "open")
    # Not a hold's own task: while the hold stands, closing it queues the next one at once.
    row = page.locator(NOT_A_HOLDS_TASK).first
    task_id, code = row.get_attribute("data-task"), row.get_attribute("data-code")
    client = row.locator("a.client").text_content()
    # Keyboard: focus the button and press Enter.
    row.get_by_role("button", name="Complete").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#announcer")).to_contain_text("accepted", timeout=10_000)
    expect(page.locator(f'#queue tr[data-task="{task_id}"]')).to_have_count(0, timeout=10_000)
    expect(page.locator("#queue-live")).to_contain_text(f"closed {code} for {client}")
    expect(page.locator("#kpi-open")).to_have_text(str(open_before - 1), timeout=10_000)

    # Cancelling needs a reason code, chosen with the keyboard in the "More" disclosure.
    task_id = page.locator(NOT_A_HOLDS_TASK).first.get_attribute("data-task")
    row = page.locator(f'#queue tr[data-task="{task_id}"]')
    row.locator("summary").focus()
    page.keyboard.press("Enter")
    row.get_by_label("Reason").select_option("not_applicable")
    row.get_by_role("button", name="Cancel task").press("Enter")
    expect(page.locator(f'#queue tr[data-task="{task_id}"]')).to_have_count(0, timeout=10_000)
    expect(page.locator("#kpi-open")).to_have_text(str(open_before - 2), timeout=10_000)
    page.screenshot(path=str(SHOTS / "kapflow-queue.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_client_page_shows_the_client_now_and_as_it_stood_earlier(
    chromium: Any, service: Service
) -> None:
    page = sign_in(chromium, service, "operations")
    # A client well along the pathway: its billing follows a dosing.
    page.select_option("#filter-owner", "billing")
    page.wait_for_selector('#queue tr[data-code="bill-private-time"]')
    link = page.locator('#queue tr[data-code="bill-private-time"] a.client').first
    client = link.text_content()
    link.click()
    page.wait_for_selector("#timeline li", timeout=15_000)
    assert page.text_content("#client-id") == client
    state_now = page.text_content("#facts .state-chip")
    assert state_now not in ("inquiry", "new")
    readiness = page.locator("#readiness li")
    assert readiness.count() >= 5 or page.is_visible("#readiness-unavailable")
    for item in readiness.all():
        assert any(word in (item.text_content() or "") for word in ("passed", "failed"))
    assert serious_violations(page) == []

    # The "as of" selector, by keyboard: back to the first recorded moment.
    page.focus("#as-of")
    page.keyboard.press("Home")
    expect(page.locator("#as-of-label")).to_contain_text("as of", timeout=10_000)
    expect(page.locator("#facts .state-chip")).to_have_text("inquiry", timeout=10_000)
    assert page.locator("#timeline li.later").count() > 0
    page.screenshot(path=str(SHOTS / "kapflow-client-as-of.png"), full_page=True)
    page.keyboard.press("End")
    expect(page.locator("#facts .state-chip")).to_have_text(state_now or "", timeout=10_000)
    page.screenshot(path=str(SHOTS / "kapflow-client.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_dashboard_key_sees_the_queue_read_only(chromium: Any, service: Service) -> None:
    page = sign_in(chromium, service, "dashboard")
    expect(page.locator("#queue-role")).to_contain_text("read only")
    assert page.locator("#queue button.act").count() == 0
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_the_protocol_page_reads_without_a_key_and_has_no_serious_accessibility_issue(
    chromium: Any, service: Service
) -> None:
    context = chromium.new_context(viewport={"width": 1200, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.goto(f"{service.url}/protocol")
    assert page.locator("h3#R12").count() == 1
    assert page.locator("#diagram ~ figure svg, #diagram ~ pre").count() >= 1
    assert serious_violations(page) == []
    page.screenshot(path=str(SHOTS / "kapflow-protocol.png"))
    context.close()

"""The operations dashboard in a real browser (Debian's chromium, driven by Playwright):
it signs in with a dashboard key, then follows the live stream without a reload."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import START, Journey
from test_http_api import Service, start_service

CHROMIUM = "/usr/bin/chromium"
STRICT = os.environ.get("KAPFLOW_TEST_STRICT") == "1"
SCREENSHOT = Path("/tmp/kapflow-dashboard.png")


def _unavailable(reason: str) -> None:
    if STRICT:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-dash') / 'kapflow.db'}"
    server, secrets = start_service(db, poll_interval=0.5)
    journeys = [Journey(f"c-{n:06d}") for n in range(1, 9)]
    events = [e for j in journeys[:5] for e in j.to_prepared()]
    events += [e for j in journeys[5:] for e in j.to_assessed()]
    events += [{"specversion": "1.0", "id": "bad-1", "type": "clinician.gossip", "subject": "c-x"}]
    headers = {"Authorization": f"Bearer {secrets['admin']}"}
    assert httpx.post(f"{server.url}/v1/events", json=events, headers=headers).status_code == 200
    yield Service(server.url, db, secrets)
    server.stop()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def count(page: Any, state: str) -> int:
    text = page.text_content(f'[data-count="{state}"]') or ""
    return int(text.replace(",", "")) if text.strip().isdigit() else -1


@pytest.mark.slow
@pytest.mark.browser
def test_the_dashboard_follows_the_live_stream_without_a_reload(
    browser: Any, service: Service
) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{service.url}/dashboard")

    # Signing in: a wrong key is refused with a message, the dashboard key opens it.
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#login-key", "kfk_wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "unknown" in (page.text_content("#login-error") or "")
    page.fill("#login-key", service.secrets["dashboard"])
    page.click("#login-form button")
    page.wait_for_selector('#connection[data-state="live"]', timeout=10_000)
    assert page.is_hidden("#insecure-banner")
    expect(page.locator('[data-count="prepared"]')).to_have_text("5")
    assert count(page, "assessed") == 3
    assert page.text_content("#kpi-rejections") == "1"
    page.evaluate("window.__sameDocument = true")  # CDP evaluate: not subject to the CSP

    # Events published through the API show up without a reload.
    newcomer = Journey("c-000099")
    moving = Journey("c-000006", start=START + timedelta(days=30))  # after its assessment
    late = [newcomer.inquiry(), moving.evaluation("journey_clinical")]
    with service.client("admin") as admin:
        outcomes = admin.post("/v1/events", json=late).json()
    assert [o["outcome"] for o in outcomes] == ["accepted", "accepted"]
    started = time.monotonic()
    page.wait_for_selector('#changes li[data-client="c-000099"]', timeout=10_000)
    page.wait_for_selector('#changes li[data-client="c-000006"][data-to="cleared"]')
    # Evaluated by locators, not page scripts: the dashboard's CSP forbids eval.
    for state, expected in (("inquiry", "1"), ("assessed", "2"), ("cleared", "1")):
        expect(page.locator(f'[data-count="{state}"]')).to_have_text(expected, timeout=10_000)
    assert time.monotonic() - started < 5
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    first = page.text_content("#changes li:first-child .client")
    assert first in ("c-000099", "c-000006")
    assert page.text_content("#rejections li .chip.reason") in ("UNKNOWN_TYPE", "SCHEMA")
    funnel = page.text_content('.funnel-row[data-stage="inquiry"] .funnel-num b')
    assert funnel == "9"
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not errors, errors
    page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_the_dashboard_warns_loudly_in_insecure_dev_mode(browser: Any, tmp_path: Path) -> None:
    from kapflow.entrypoints.http.context import HttpSettings
    from kapflow.entrypoints.http.server import ServiceThread

    settings = HttpSettings(db=f"sqlite:///{tmp_path / 'k.db'}", keys=None, poll_interval=0.5)
    with ServiceThread(settings) as server:
        page = browser.new_page()
        page.goto(f"{server.url}/dashboard")
        page.wait_for_selector("#insecure-banner:not([hidden])", timeout=10_000)
        assert "INSECURE DEV MODE" in (page.text_content("#insecure-banner") or "")
        assert page.is_hidden("#login")
        page.close()

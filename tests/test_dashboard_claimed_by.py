"""The dashboard's queue says who is on a task: claimed from the queue, the row reads "in
progress — claimed by" the person or key that claimed it (SPEC §6 accountability)."""

from __future__ import annotations

from typing import Any

import pytest
from test_http_api import Service
from test_http_dashboard import browser, expect  # noqa: F401 - a fixture
from test_http_work_queue_browser import chromium, service, sign_in  # noqa: F401 - fixtures


@pytest.mark.slow
@pytest.mark.browser
def test_a_claimed_task_shows_who_claimed_it_in_the_queue(
    chromium: Any,  # noqa: F811
    service: Service,  # noqa: F811
) -> None:
    page = sign_in(chromium, service, "operations")
    row = page.locator("#queue tr", has=page.get_by_role("button", name="Claim")).first
    task_id = row.get_attribute("data-task")
    row.get_by_role("button", name="Claim").click()
    expect(page.locator("#announcer")).to_contain_text("accepted", timeout=10_000)
    claimed = page.locator(f'#queue tr[data-task="{task_id}"] .chip.status')
    expect(claimed).to_have_text("in progress — claimed by operations-key", timeout=10_000)
    assert not page.errors, page.errors
    page.context.close()

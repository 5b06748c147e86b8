"""Staff sign in to the dashboard with the clinic's identity provider (issue 18): the sign-in
page offers "Sign in with <provider>", the browser does the authorization-code flow with
PKCE against a real provider (panva's oidc-provider, its development login form) and comes
back signed in as that person; the queue, its actions and the live stream then run on the
person's token, and a task they claim reads "claimed by" them. Debian's chromium, via
Playwright, with the page's own Content-Security-Policy enforced (the token exchange is a
call from the page to the provider)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from oidc_fixtures import AUDIENCE, Provider, free_port, start_provider, stop_provider
from test_http_api import Service, start_service
from test_http_dashboard import browser, expect  # noqa: F401 - a fixture
from test_http_work_queue_browser import SHOTS, serious_violations

from kapflow.demo.clinic import run_clinic
from kapflow.service.ingest import IngestService
from kapflow.store import open_store

PROVIDER_NAME = "Clinic ID"


@pytest.fixture(scope="module")
def signed_in_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Service, Provider]]:
    """A demo clinic served with OpenID Connect sign-in, and the provider that knows the
    dashboard's URL as the redirect URI of its public client (hence: port first)."""
    folder = tmp_path_factory.mktemp("dashboard-sign-in")
    db = f"sqlite:///{folder / 'kapflow.db'}"
    store = open_store(db)
    # Dated to the wall clock, as `kapflow demo` does: the browser judges "overdue" by it.
    run_clinic(IngestService(store), datetime.now(UTC), clients=12, seed=7)
    store.close()
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_OIDC_ISSUER", f"http://127.0.0.1:{port}")
        env.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
        env.setenv("KAPFLOW_OIDC_CLIENT_ID", "kapflow-dashboard")
        env.setenv("KAPFLOW_OIDC_SCOPES", "openid kapflow")
        env.setenv("KAPFLOW_OIDC_PROVIDER_NAME", PROVIDER_NAME)
        server, secrets = start_service(db, poll_interval=0.3)
        try:
            provider = start_provider(
                folder / "signing-key.json",
                port=port,
                dashboard_redirect_uri=f"{server.url}/dashboard",
            )
            try:
                yield Service(server.url, db, secrets), provider
            finally:
                stop_provider(provider)
        finally:
            server.stop()


def _sign_in_page(chromium: Any, service: Service, *, bypass_csp: bool = False) -> Any:
    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=bypass_csp)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{service.url}/dashboard")
    page.wait_for_selector("#login:not([hidden])")
    return page


def _through_the_providers_login_form(page: Any, login: str) -> None:
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "any")
    page.click('button[type="submit"]')
    page.wait_for_selector('button:has-text("Continue")')  # the consent prompt
    page.click('button[type="submit"]')


@pytest.mark.slow
@pytest.mark.browser
def test_a_clinician_signs_in_with_the_clinics_provider_and_claims_a_task(
    browser: Any,  # noqa: F811
    signed_in_setup: tuple[Service, Provider],
) -> None:
    service, provider = signed_in_setup
    page = _sign_in_page(browser, service)
    offer = page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}")
    expect(offer).to_be_visible()
    expect(page.locator("#login-key")).to_be_visible()  # API keys stay, for services and dev
    page.screenshot(path=str(SHOTS / "kapflow-sign-in.png"))
    offer.click()
    page.wait_for_url(f"{provider.issuer}/**")
    _through_the_providers_login_form(page, "ana")

    page.wait_for_url(f"{service.url}/dashboard", timeout=15_000)  # the code is off the URL
    page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
    page.wait_for_selector("#queue tbody tr", timeout=15_000)
    expect(page.locator("#queue-role")).to_have_text("signed in as ana (operations)")
    assert page.evaluate("sessionStorage.getItem('kapflow.oidcPending')") is None

    row = page.locator("#queue tr", has=page.get_by_role("button", name="Claim")).first
    task_id = row.get_attribute("data-task")
    row.get_by_role("button", name="Claim").click()
    expect(page.locator("#announcer")).to_contain_text("accepted", timeout=10_000)
    claimed = page.locator(f'#queue tr[data-task="{task_id}"] .chip.status')
    expect(claimed).to_have_text("in progress — claimed by ana", timeout=10_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    page.screenshot(path=str(SHOTS / "kapflow-signed-in.png"))
    assert not page.errors, page.errors
    page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_the_sign_in_page_has_no_serious_accessibility_issues(
    browser: Any,  # noqa: F811
    signed_in_setup: tuple[Service, Provider],
) -> None:
    service, _ = signed_in_setup
    # axe is injected as a script: only the test's own injection bypasses the page's CSP.
    page = _sign_in_page(browser, service, bypass_csp=True)
    expect(page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}")).to_be_visible()
    assert serious_violations(page) == []
    page.context.close()


def test_the_dashboards_policy_lets_it_reach_the_provider_and_nothing_else(
    signed_in_setup: tuple[Service, Provider],
) -> None:
    service, provider = signed_in_setup
    policy = httpx.get(f"{service.url}/dashboard").headers["content-security-policy"]
    assert f"connect-src 'self' {provider.issuer};" in policy
    assert "script-src 'self';" in policy and "form-action 'none'" in policy
    options = httpx.get(f"{service.url}/dashboard/sign-in.json").json()["oidc"]
    assert options == {
        "issuer": provider.issuer,
        "client_id": "kapflow-dashboard",
        "redirect_path": "/dashboard",
        "scope": "openid kapflow",
        "resource": AUDIENCE,
        "provider": PROVIDER_NAME,
    }


def test_without_a_client_id_the_dashboard_offers_api_keys_only(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAPFLOW_OIDC_ISSUER", "https://idp.example/realms/kap")
        env.setenv("KAPFLOW_OIDC_AUDIENCE", AUDIENCE)
        for name in ("CLIENT_ID", "SCOPES", "PROVIDER_NAME"):
            env.delenv(f"KAPFLOW_OIDC_{name}", raising=False)
        server, _ = start_service(f"sqlite:///{tmp_path / 'kapflow.db'}")
        try:
            assert httpx.get(f"{server.url}/dashboard/sign-in.json").json()["oidc"] is None
            policy = httpx.get(f"{server.url}/dashboard").headers["content-security-policy"]
            assert "connect-src 'self';" in policy
        finally:
            server.stop()


def test_the_redirect_path_is_a_plain_path_on_this_origin() -> None:
    from kapflow.settings import OidcSettings

    assert OidcSettings(redirect_path="/kapflow/dashboard").redirect_path == "/kapflow/dashboard"
    for elsewhere in ("//evil.example/cb", "https://evil.example/cb", "/dashboard?next=x", "/"):
        with pytest.raises(ValueError):
            OidcSettings(redirect_path=elsewhere)

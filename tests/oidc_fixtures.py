"""A real OpenID provider for the tests: panva's certified `oidc-provider` (Node), on loopback.

Never a mock: kapflow must accept what a real provider signs and refuse what it does not.
People sign in as they would in a browser, with the authorization-code flow and PKCE
(`sign_in`, driven with httpx through the provider's development login form); the access
token is the provider's RS256-signed JWT for kapflow's resource indicator, with a `roles`
claim (tests/oidc/provider.mjs says how).

Without Node or `npm ci`'s node_modules the tests are skipped, unless KAPFLOW_TEST_STRICT=1
(CI), where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "oidc" / "provider.mjs"
AUDIENCE = "https://kapflow.test/api"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never fetched: the code is read off the redirect
# Who may sign in, and the roles their provider gives them.
ROLES = {"ana": ["clinician"], "ola": ["auditor"], "nobody": []}


@dataclass(frozen=True)
class Provider:
    issuer: str
    process: subprocess.Popen[bytes]

    def sign_in(
        self, login: str, *, client_id: str = "kapflow-dashboard", resource: str = AUDIENCE
    ) -> str:
        """`login`'s access token, through the authorization-code flow with PKCE."""
        return sign_in(self.issuer, login, client_id=client_id, resource=resource)


def free_port() -> int:
    """A loopback port free now (a provider's, chosen before the service that trusts it)."""
    return _free_port()


def _prerequisites() -> str | None:
    if shutil.which("node") is None:
        return "Node.js not installed"
    if not (ROOT / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider not installed (npm ci)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_provider(
    key_file: Path, *, port: int | None = None, dashboard_redirect_uri: str | None = None
) -> Provider:
    """A provider on `port` (default: a free one); `dashboard_redirect_uri`: also a redirect
    URI of the "kapflow-dashboard" client (the dashboard's own sign-in, in a browser)."""
    missing = _prerequisites()
    if missing is not None:
        if os.environ.get("KAPFLOW_TEST_STRICT") == "1":
            pytest.fail(f"{missing} and KAPFLOW_TEST_STRICT=1", pytrace=False)
        pytest.skip(missing)
    port = port or _free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PORT": str(port),
        "ISSUER": issuer,
        "KEY_FILE": str(key_file),
        "ROLES_JSON": json.dumps(ROLES),
        "REDIRECT_URI": REDIRECT_URI,
    }
    if dashboard_redirect_uri is not None:
        env["DASHBOARD_REDIRECT_URI"] = dashboard_redirect_uri
    process = subprocess.Popen(
        ["node", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"oidc-provider exited: {error[-2000:]}", pytrace=False)
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                return Provider(issuer, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("oidc-provider did not start within 30 s", pytrace=False)


def stop_provider(provider: Provider) -> None:
    provider.process.terminate()
    try:
        provider.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        provider.process.kill()


@pytest.fixture(scope="module")
def oidc_providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provider, Provider]]:
    """kapflow's provider, and a foreign one signing with the same key (so a refusal of its
    tokens is the issuer check, not an unknown key)."""
    key_file = tmp_path_factory.mktemp("oidc") / "signing-key.json"
    ours = start_provider(key_file)
    try:
        foreign = start_provider(key_file)
    except BaseException:
        stop_provider(ours)
        raise
    yield ours, foreign
    stop_provider(foreign)
    stop_provider(ours)


def _form(page: str) -> tuple[str, str]:
    """The development interaction's form: its action and its `prompt` (login | consent)."""
    action = re.search(r'<form[^>]*action="([^"]+)"', page)
    prompt = re.search(r'name="prompt" value="([a-z]+)"', page)
    assert action and prompt, page[:500]
    return action.group(1), prompt.group(1)


def sign_in(issuer: str, login: str, *, client_id: str, resource: str) -> str:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid kapflow",
        "resource": resource,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "state": secrets.token_urlsafe(16),
    }
    with httpx.Client(base_url=issuer, timeout=10) as http:
        response = http.get("/auth", params=params)
        for _ in range(12):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(REDIRECT_URI):
                    query = parse_qs(urlsplit(location).query)
                    assert "code" in query, query
                    return _token(http, query["code"][0], verifier, client_id, resource)
                response = http.get(location)
                continue
            assert response.status_code == 200, response.text[:500]
            action, prompt = _form(response.text)
            fields = {"prompt": prompt}
            if prompt == "login":
                fields |= {"login": login, "password": "any"}
            response = http.post(urljoin(str(response.url), action), data=fields)
    raise AssertionError("the sign-in did not come back to the redirect URI")


def _token(http: httpx.Client, code: str, verifier: str, client_id: str, resource: str) -> str:
    response = http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token

"""API keys change without a restart of `kapflow serve`: a revoked or expired key is refused
at once, a new key works within a second, and an administrator sees when each was last used.
Every test runs a real `kapflow serve` process on a keys file written by `kapflow keys`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
from kafka_harness import wait_until
from serve_harness import KAPFLOW, ServeProcess

AUDIT_READ = "/v1/access-log"


def keys(*arguments: str) -> str:
    result = subprocess.run(
        [KAPFLOW, "keys", *arguments], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def new_key(keys_file: Path, role: str, name: str, *extra: str) -> str:
    """Create a key with `kapflow keys create --keys-file`; its secret."""
    created = json.loads(
        keys(
            "create",
            "--role",
            role,
            "--name",
            name,
            "--keys-file",
            str(keys_file),
            "--json",
            *extra,
        )
    )
    return str(created["secret"])


def status(serve: ServeProcess, secret: str) -> int:
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.get(serve.url + AUDIT_READ, headers=headers, timeout=15).status_code


def refusal(serve: ServeProcess, secret: str) -> str:
    headers = {"Authorization": f"Bearer {secret}"}
    response = httpx.get(serve.url + AUDIT_READ, headers=headers, timeout=15)
    assert response.status_code == 401
    return str(response.json()["detail"])


def test_a_revoked_key_is_refused_within_a_second_and_a_new_one_works_without_a_restart(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.json"
    auditor = new_key(keys_file, "auditor", "audit-team")
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    options = (
        "--keys-file",
        str(keys_file),
        "--keys-poll-interval",
        "0.2",
        "--clock-interval",
        "0",
    )
    with ServeProcess(db, tmp_path / "serve.log", *options) as serve:
        assert serve.process is not None
        pid = serve.process.pid
        assert status(serve, auditor) == 200

        keys("revoke", "--name", "audit-team", "--keys-file", str(keys_file))
        revoked_at = time.monotonic()
        wait_until(lambda: status(serve, auditor) == 401, 5, "the revoked key to be refused")
        refused_after = time.monotonic() - revoked_at
        assert refusal(serve, auditor) == "revoked API key"

        successor = new_key(keys_file, "auditor", "audit-team-2")
        created_at = time.monotonic()
        wait_until(lambda: status(serve, successor) == 200, 5, "the new key to be accepted")
        accepted_after = time.monotonic() - created_at
        assert serve.process.pid == pid and serve.process.poll() is None  # never restarted
        log = (tmp_path / "serve.log").read_text()
        assert "API keys reloaded (file changed): 2 keys, 1 of them revoked or expired" in log
        assert auditor not in log and successor not in log  # secrets never logged
    print(
        f"\nrevoked key refused after {refused_after:.2f}s;"
        f" new key accepted after {accepted_after:.2f}s"
    )


def test_sighup_reloads_the_keys_file_at_once(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    admin = new_key(keys_file, "admin", "ops")
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    # Checks of the file are an hour apart: only the signal can explain a reload.
    options = (
        "--keys-file",
        str(keys_file),
        "--keys-poll-interval",
        "3600",
        "--clock-interval",
        "0",
    )
    with ServeProcess(db, tmp_path / "serve.log", *options) as serve:
        assert status(serve, admin) == 200
        keys("revoke", "--name", "ops", "--keys-file", str(keys_file))
        assert status(serve, admin) == 200  # not yet: nobody told serve
        serve.signal(signal.SIGHUP)
        wait_until(lambda: status(serve, admin) == 401, 2, "SIGHUP to apply the revocation")
        assert serve.process is not None and serve.process.poll() is None  # SIGHUP did not end it
        assert "API keys reloaded (SIGHUP)" in (tmp_path / "serve.log").read_text()


def test_an_expired_key_is_refused_at_once_without_any_reload(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    new_key(keys_file, "admin", "ops")
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    log = tmp_path / "serve.log"
    options = (
        "--keys-file",
        str(keys_file),
        "--keys-poll-interval",
        "0.2",
        "--clock-interval",
        "0",
    )
    with ServeProcess(db, log, *options) as serve:
        short_lived = new_key(keys_file, "auditor", "contractor", "--expires", "5s")
        wait_until(lambda: status(serve, short_lived) == 200, 5, "the new key to be accepted")
        reloads = log.read_text().count("API keys reloaded")
        wait_until(lambda: status(serve, short_lived) == 401, 10, "the key to expire")
        assert refusal(serve, short_lived) == "expired API key"
        assert log.read_text().count("API keys reloaded") == reloads  # no reload needed
        expires = json.loads(keys_file.read_text())["keys"][1]["expires"]
        assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) >= expires


def test_a_broken_keys_file_keeps_the_keys_in_force_and_says_why(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    admin = new_key(keys_file, "admin", "ops")
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    options = (
        "--keys-file",
        str(keys_file),
        "--keys-poll-interval",
        "0.2",
        "--clock-interval",
        "0",
    )
    with ServeProcess(db, tmp_path / "serve.log", *options) as serve:
        keys_file.write_text('{"keys": [{"name": "ops", "role": "admin"')  # a half-edited file
        wait_until(
            lambda: "API keys NOT reloaded" in (tmp_path / "serve.log").read_text(),
            5,
            "the failed reload to be logged",
        )
        assert status(serve, admin) == 200
        assert "the 1 keys in force stay" in (tmp_path / "serve.log").read_text()


def test_keys_list_shows_status_expiry_and_when_each_key_was_last_used(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    used = new_key(keys_file, "auditor", "audit-team", "--expires", "90d")
    new_key(keys_file, "dashboard", "ops-wall")
    new_key(keys_file, "admin", "former-admin")
    keys("revoke", "--name", "former-admin", "--keys-file", str(keys_file))
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    options = ("--keys-file", str(keys_file), "--clock-interval", "0")
    with ServeProcess(db, tmp_path / "serve.log", *options) as serve:
        assert status(serve, used) == 200

        def listing() -> dict[str, dict[str, str | None]]:
            rows = json.loads(keys("list", "--keys-file", str(keys_file), "--db", db, "--json"))
            return {row["name"]: row for row in rows}

        wait_until(lambda: listing()["audit-team"]["last_used"] is not None, 5, "last use")
    rows = listing()
    assert {name: row["status"] for name, row in rows.items()} == {
        "audit-team": "active",
        "ops-wall": "active",
        "former-admin": "revoked",
    }
    assert rows["ops-wall"]["last_used"] is None
    assert rows["audit-team"]["expires"] is not None
    assert "sha256" in rows["audit-team"] and used not in json.dumps(rows)

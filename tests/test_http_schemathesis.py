"""The OpenAPI document against the real server, with schemathesis: no 5xx, every response
conforms (status codes, content types, schemas, headers), invalid input is refused and valid
input accepted.

Bounded: about a minute (`--max-time`). /v1/stream is left out: an endless response cannot
be checked by a request/response fuzzer (tests/test_http_stream.py covers it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builders import Journey
from test_http_api import Service, start_service

STRICT = os.environ.get("KAPFLOW_TEST_STRICT") == "1"
ST = shutil.which("st", path=str(Path(sys.executable).parent))


def _require_schemathesis() -> str:
    if ST is None:
        message = "schemathesis is not installed (pip install -e '.[dev]')"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return ST


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    db = f"sqlite:///{tmp_path_factory.mktemp('http-st') / 'kapflow.db'}"
    server, secrets = start_service(db)
    headers = {"Authorization": f"Bearer {secrets['admin']}"}
    events = [e for n in range(3) for e in Journey(f"c-{n:06d}").to_prepared()]
    assert httpx.post(f"{server.url}/v1/events", json=events, headers=headers).status_code == 200
    yield Service(server.url, db, secrets)
    server.stop()


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_document(service: Service, tmp_path: Path) -> None:
    st = _require_schemathesis()
    result = subprocess.run(
        [
            st,
            "run",
            f"{service.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {service.secrets['admin']}",
            "--exclude-path",
            "/v1/stream",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--max-time",
            "55",
            "--request-timeout",
            "20",
            "--seed",
            "20261126",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout

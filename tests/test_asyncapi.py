"""The AsyncAPI document is current, valid (official AsyncAPI CLI), and describes exactly the
messages kapflow publishes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from builders import Journey
from conftest import Clinic

from events.outputs import OUTPUT_MODELS, OutgoingCloudEvent
from kapflow.publishers.asyncapi import asyncapi_document
from kapflow.service.outbox import as_cloudevent, render

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"


def test_the_committed_document_is_generated_from_the_current_contracts() -> None:
    assert yaml.safe_load(DOCUMENT.read_text()) == json.loads(json.dumps(asyncapi_document()))


def test_every_published_message_matches_its_documented_schema(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), "{not json", j.dosing_started("s-2"))
    topics = set()
    for _, ref, record in clinic.store.outbox_after(0, limit=1000):
        for message in render(ref, record):
            OUTPUT_MODELS[message.topic].model_validate(message.payload)
            OutgoingCloudEvent.model_validate(as_cloudevent(message))
            topics.add(message.topic)
    assert topics == {"state-changes", "tasks", "rejected"}


def test_the_asyncapi_cli_validates_the_document(tmp_path: Path) -> None:
    cli = ROOT / "node_modules" / ".bin" / "asyncapi"
    if not cli.exists():
        if os.environ.get("KAPFLOW_TEST_STRICT") == "1":
            pytest.fail("AsyncAPI CLI missing: run `npm ci` in the repository")
        pytest.skip("AsyncAPI CLI not installed (npm ci)")
    metrics = tmp_path / "asyncapi-analytics.json"
    metrics.write_text('{"analyticsEnabled": "false", "infoMessageShown": "true"}')
    env = {
        **os.environ,
        "ASYNCAPI_METRICS_CONFIG_PATH": str(metrics),
        "SUPPRESS_NO_CONFIG_WARNING": "1",
    }
    result = subprocess.run(
        [str(cli), "validate", str(DOCUMENT)], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr

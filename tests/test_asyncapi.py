"""The AsyncAPI document is current, valid (official AsyncAPI CLI), and describes exactly the
messages kapflow publishes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
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
    # The second dosing, before any integration, is a deviation (R8).
    clinic.send(*j.to_prepared(), *j.dosing("s-1"), "{not json", j.dosing_started("s-2"))
    # A clearance expired before the dosing; its renewal, issued before it, arrives late
    # and resolves the dosing's R5 deviation.
    late = Journey("c-late")
    prepared = late.to_prepared(valid_until="2026-01-06")
    renewal = late.renewal(valid_until="2026-06-30")
    late.now += timedelta(days=2)
    clinic.send(*prepared, late.dosing_started("s-1"), renewal)
    topics = set()
    deviations = []
    for _, ref, record in clinic.store.outbox_after(0, limit=1000):
        for message in render(ref, record):
            OUTPUT_MODELS[message.topic].model_validate(message.payload)
            event = OutgoingCloudEvent.model_validate(as_cloudevent(message))
            topics.add(message.topic)
            if message.topic == "deviations":
                assert event.type == "kapflow.protocol_deviation"
                deviations.append((event.id, message.payload["status"], message.payload["rules"]))
    assert topics == {"state-changes", "tasks", "rejected", "deviations"}
    assert [(status, rules) for _, status, rules in deviations] == [
        ("recorded", ["R8"]),
        ("recorded", ["R5"]),
        ("resolved", []),
    ]
    assert deviations[0][0].endswith(":deviation")
    assert deviations[2][0].startswith("c-late:")


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

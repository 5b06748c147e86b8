"""Fast hand-over: when a worker is killed, another takes over its partitions within
about ten seconds, with kapflow's default group settings (measured in full by
benchmarks/handover.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kapflow.entrypoints.broker import LocalBroker
from kapflow.settings import KafkaSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from handover import trial  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_killed_workers_partitions_are_taken_over_within_seconds(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    defaults = KafkaSettings(kafka="127.0.0.1:9092")
    group = {
        "KAPFLOW_SESSION_TIMEOUT_SECONDS": str(defaults.session_timeout_seconds),
        "KAPFLOW_HEARTBEAT_INTERVAL_SECONDS": str(defaults.heartbeat_interval_seconds),
    }
    seconds = trial(
        kafka_broker.bootstrap,
        f"sqlite:///{tmp_path / 'handover.db'}",
        tmp_path,
        partitions=4,
        clients=100,
        group=group,
    )
    # The session timeout (6 s) to notice the death, then the rebalance and the catch-up;
    # 9.7 s measured on this machine, the margin is for a loaded CI runner.
    assert seconds < 15

"""Pytest fixtures for tests that need a real Kafka-compatible broker.

Import from a conftest::

    from kafka_fixtures import create_topics, kafka_broker  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from kapflow.entrypoints.broker import BrokerUnavailable, LocalBroker

__all__ = ["create_topics", "kafka_broker"]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalBroker]:
    """A local in-memory broker on a free loopback port, shared by the whole session."""
    broker = LocalBroker(host="127.0.0.1", port=0)
    try:
        broker.start(timeout=30.0)
    except BrokerUnavailable as exc:
        pytest.fail(f"local Kafka broker unavailable: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    """Create ``names`` with ``partitions`` partitions each; existing topics are fine."""
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="kapflow-tests")
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()
    # aiokafka returns per-topic error codes instead of raising.
    for topic, code, *rest in response.topic_errors:
        if code == 0 or code == TopicAlreadyExistsError.errno:
            continue
        message = rest[0] if rest else None
        raise for_code(code)(f"creating topic {topic!r}: {message or 'failed'}")

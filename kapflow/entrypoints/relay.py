"""`kapflow relay`: the outbox relay in its own process.

By default each `kapflow worker` also runs the relay (publishers/kafka.py), and the relay
lease lets one of them publish at a time. A deployment that wants the workers' interpreters
to do nothing but consume and record runs this process instead and sets
`KAPFLOW_EMBEDDED_RELAY=false` on the workers. Any number of relays may run: the lease
keeps one publishing and the others standing by to take over.

Not woken by the workers (they are other processes), it looks for new rows every
`relay_idle_seconds` while the outbox is empty and publishes back to back while it is not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiokafka.errors import KafkaError

from kapflow.bootstrap import Runtime
from kapflow.entrypoints.kafka_start import open_kafka_runtime
from kapflow.publishers.kafka import MAX_BACKOFF_S, KafkaOutboxRelay
from kapflow.settings import KafkaSettings

log = logging.getLogger("kapflow.relay")


async def relay_until_stopped(
    runtime: Runtime, settings: KafkaSettings, stop: asyncio.Event
) -> None:
    """Publish the outbox until `stop` is set; wait for the broker if it is not up yet."""
    relay = KafkaOutboxRelay(runtime.store, settings, runtime.relay_lease())
    backoff = 0.5
    try:
        while not stop.is_set():
            try:
                await relay.start()
            except (KafkaError, OSError) as error:  # down, unreachable, or refusing us
                log.warning(
                    "cannot start publishing to the broker (%s); retrying in %.1fs",
                    type(error).__name__,
                    backoff,
                )
                await relay.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            await relay.run(stop)
    finally:
        await relay.stop()


async def _main(runtime: Runtime, settings: KafkaSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await relay_until_stopped(runtime, settings, stop)


def run(args: argparse.Namespace) -> int:
    opened = open_kafka_runtime(args, "relay")
    if isinstance(opened, int):
        return opened
    settings, runtime = opened
    print(
        f"kapflow relay: publishing the outbox of {settings.db.split('@')[-1]} to {settings.kafka}",
        file=sys.stderr,
    )
    try:
        asyncio.run(_main(runtime, settings))
    finally:
        runtime.close()
    return 0

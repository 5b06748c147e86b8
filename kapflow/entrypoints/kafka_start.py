"""Start-up shared by the Kafka processes (`kapflow worker`, `kapflow relay`)."""

from __future__ import annotations

import argparse
import sys

from kapflow.bootstrap import Runtime, bootstrap
from kapflow.settings import KafkaSettings, SettingsError, load_kafka_settings
from kapflow.store import StoreError


def open_kafka_runtime(
    args: argparse.Namespace, program: str
) -> tuple[KafkaSettings, Runtime] | int:
    """The settings, then the runtime they name; on failure one line on stderr naming the
    setting or the database error, and the exit status (2 settings, 3 database)."""
    try:
        settings = load_kafka_settings(getattr(args, "config", None), kafka=args.kafka, db=args.db)
    except SettingsError as error:
        print(f"kapflow {program}: {error}", file=sys.stderr)
        return 2
    try:
        runtime = bootstrap(settings.db, batch_size=settings.batch_size)
    except StoreError as error:
        print(f"kapflow {program}: database error: {error}", file=sys.stderr)
        return 3
    return settings, runtime

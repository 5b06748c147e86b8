"""Runtime settings of the distributed shape, from the environment or a TOML file.

Validated at start-up: a wrong or missing value stops the process with one clear line
naming the setting, before anything connects. Defaults are production-safe for Apache
Kafka; tests shorten timeouts through the same settings, never through code paths.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from workflow.timers import CLOCK_SOURCE

# A CloudEvents `source` (a URI-reference): visible ASCII, no space, as long as an event's.
_SOURCE = re.compile(r"^[!-~]{1,512}$")
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9.\-\[\]:]+:\d{1,5})*$")


class SettingsError(Exception):
    """A setting is wrong or missing; the message names it, never a secret's value."""


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAPFLOW_", extra="forbid")

    kafka: str = Field(description="bootstrap servers, HOST:PORT[,HOST:PORT…]")
    db: str = "sqlite:///./kapflow.db"

    events_topic: str = "kapflow.events"
    state_changes_topic: str = "kapflow.state-changes"
    tasks_topic: str = "kapflow.tasks"
    rejected_topic: str = "kapflow.rejected"
    deviations_topic: str = "kapflow.deviations"
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=3, ge=1, le=7)
    group_id: str = Field(default="kapflow-worker", pattern=r"^[A-Za-z0-9._\-]{1,128}$")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    batch_size: int = Field(default=500, ge=1, le=50_000)
    batch_wait_seconds: float = Field(default=0.2, gt=0, le=60)
    relay_batch_size: int = Field(default=1000, ge=1, le=50_000)
    # Whether `kapflow worker` publishes the outbox itself (one worker of the group at a
    # time, under the relay lease). False when `kapflow relay` runs as its own process:
    # the worker's interpreter then only consumes and records.
    embedded_relay: bool = True
    relay_idle_seconds: float = Field(default=0.5, gt=0, le=60)
    # Published outbox rows are deleted this long after publication (`kapflow prune`).
    outbox_retention_days: float = Field(default=7.0, gt=0, le=3650)
    pg_pool_size: int = Field(default=4, ge=1, le=64)
    # Group membership: a worker that dies (SIGKILL, a lost node) is noticed after the
    # session timeout and its partitions handed over. 6 s is the least a stock Apache Kafka
    # broker accepts (group.min.session.timeout.ms); heartbeats at a twelfth of it let the
    # survivors hear of the rebalance at once. Measured by benchmarks/handover.py.
    session_timeout_seconds: float = Field(default=6.0, ge=1, le=600)
    heartbeat_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    store_retry_max_seconds: float = Field(default=30.0, gt=0, le=600)
    clock_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # The CloudEvents sources the input topic accepts, comma-separated (KAPFLOW_KAFKA_SOURCES);
    # empty: any. Who may write the topic at all is the broker's ACLs (the production
    # control: Kafka authenticates the producer, kapflow cannot); this narrows what a
    # writer may claim, as an API key does over HTTP. A record under another source is
    # dead-lettered (`SOURCE_NOT_ALLOWED`), never recorded (service/identity.py).
    kafka_sources: str = ""

    @field_validator("kafka")
    @classmethod
    def _bootstrap_format(cls, value: str) -> str:
        if not _BOOTSTRAP.match(value):
            raise ValueError("must be HOST:PORT[,HOST:PORT…]")
        return value

    @field_validator("kafka_sources")
    @classmethod
    def _source_list(cls, value: str) -> str:
        sources = [source.strip() for source in value.split(",") if source.strip()]
        if not all(_SOURCE.match(source) for source in sources):
            raise ValueError("must be CloudEvents source URIs, comma-separated")
        return ",".join(sources)

    @field_validator("db")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://…")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError("sasl_mechanism is required with a SASL security_protocol")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("sasl_username and sasl_password are required for SASL")
        if self.ssl_cafile is not None and not self.ssl_cafile.is_file():
            raise ValueError("ssl_cafile does not exist")
        if self.heartbeat_interval_seconds >= self.session_timeout_seconds:
            raise ValueError("heartbeat_interval_seconds must be below session_timeout_seconds")
        return self

    @property
    def allowed_sources(self) -> frozenset[str]:
        """The sources the input topic accepts; empty: any. When it is restricted,
        kapflow's own clock is allowed too: the workers publish its deadline events to
        the same topic."""
        listed = frozenset(source for source in self.kafka_sources.split(",") if source)
        return listed | {CLOCK_SOURCE} if listed else frozenset()

    @property
    def topics(self) -> dict[str, str]:
        """Outbox topic (state-changes | tasks | rejected | deviations) → Kafka topic name."""
        return {
            "state-changes": self.state_changes_topic,
            "tasks": self.tasks_topic,
            "rejected": self.rejected_topic,
            "deviations": self.deviations_topic,
        }

    def client_options(self) -> dict[str, object]:
        """Security options for aiokafka clients."""
        options: dict[str, object] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            options["ssl_context"] = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options


def load_kafka_settings(config_file: str | None = None, **overrides: object) -> KafkaSettings:
    """Settings from (lowest first) a TOML file, the environment, then explicit overrides."""
    settings_class: type[KafkaSettings] = KafkaSettings
    if config_file:
        path = Path(config_file)
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise SettingsError(
                f"cannot read config file {config_file}: {error.strerror}"
            ) from error
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"config file {config_file} is not valid TOML: {error}") from error

        class FileSettings(KafkaSettings):
            model_config = SettingsConfigDict(env_prefix="KAPFLOW_", extra="forbid", toml_file=path)

            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

        settings_class = FileSettings
    try:
        return settings_class(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from error


class StreamSettings(BaseSettings):
    """Limits of the live stream `GET /v1/stream` (`kapflow serve`), from `KAPFLOW_STREAM_*`.

    Why limits at all: every open stream holds a connection, a place in the key-revocation
    watch and, while it replays the backlog, a page of rows; one key (a leaked one, a
    dashboard stuck reconnecting) must not be able to take the server's memory or CPU.
    """

    model_config = SettingsConfigDict(env_prefix="KAPFLOW_STREAM_", extra="forbid")

    # Concurrent streams per API key; the next one gets 429 with Retry-After.
    max_per_key: int = Field(default=4, ge=1, le=1000)
    # Outbox rows read (and rendered) per page of a backlog replay: the most one stream
    # holds in memory at a time, beside what the socket buffers.
    page_rows: int = Field(default=100, ge=1, le=5000)
    # Threads (hence SQLite connections, each with its own page cache) for backlog reads:
    # many replays share them instead of each taking a thread of the default pool.
    backlog_readers: int = Field(default=2, ge=1, le=32)
    # Lifetime of a stream ticket (`POST /v1/stream/ticket`): single use, within seconds.
    ticket_seconds: float = Field(default=30.0, gt=0, le=300)
    # How often open streams are checked against the keys in force (revoked, expired,
    # removed): a stream outlives its key by at most about this long.
    key_check_seconds: float = Field(default=0.25, gt=0, le=10)
    # Deprecated: the key itself as `?access_token=` (it lands in proxy logs and browser
    # history). Kept for existing EventSource clients; set false to refuse it.
    allow_query_key: bool = True


def load_stream_settings() -> StreamSettings:
    """Stream limits from the environment; one clear line naming a wrong setting."""
    try:
        return StreamSettings()
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = "KAPFLOW_STREAM_" + ".".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from error

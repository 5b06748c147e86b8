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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
# The kapflow roles a person may hold (never `publisher`: that is a system).
_PERSON_ROLES = ("dashboard", "operations", "auditor", "admin")
_LOOPBACK_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?(/|$)")
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


class OidcSettings(BaseSettings):
    """People sign in with OpenID Connect (`kapflow serve`), from `KAPFLOW_OIDC_*`.

    Unset issuer: OpenID Connect is off and only API keys are accepted. Services keep API
    keys; people present the provider's access token (a signed JWT) as `Authorization:
    Bearer`. The token must be issued by `issuer`, for `audience`, unexpired, and signed with
    a key of the provider's JWKS (`jwks_url`, default: from the issuer's discovery document)
    by one of `algorithms`.
    """

    model_config = SettingsConfigDict(env_prefix="KAPFLOW_OIDC_", extra="forbid")

    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    algorithms: str = "RS256,ES256"
    # Where the person's roles are in the token: a claim name, or a dotted path into nested
    # claims (Keycloak: `realm_access.roles`); a list or a space-separated string.
    roles_claim: str = "roles"
    # The provider's role names → kapflow's (`role=kapflow_role`, comma-separated), on top
    # of kapflow's own names (dashboard, operations, auditor, admin) and the task owners
    # (scheduler, clinician, billing, prescriber_liaison: operations).
    role_map: str = ""
    # The claim that names the person in histories and the access log (a short token).
    actor_claim: str = "sub"
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_seconds: int = Field(default=300, ge=0, le=86_400)
    http_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # The dashboard signs people in itself (authorization code + PKCE, from the browser) when
    # a client id is set: the provider must know it as a public client (no secret) whose
    # redirect URI is the dashboard's origin + `redirect_path` (the path the browser sees,
    # behind a proxy that may add a prefix). The token is asked for `audience` as its
    # resource indicator (RFC 8707), with `scopes`.
    client_id: str | None = Field(default=None, min_length=1, max_length=200)
    redirect_path: str = Field(default="/dashboard", pattern=r"^(/[A-Za-z0-9._~-]+)+/?$")
    scopes: str = Field(default="openid", min_length=1, max_length=500)
    # "Sign in with <provider_name>" (default: the issuer's host).
    provider_name: str | None = Field(default=None, min_length=1, max_length=60)

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Kept exactly as given: the token's `iss` must equal it (some add a final `/`).
        if not (value.startswith("https://") or _LOOPBACK_HTTP.match(value)):
            raise ValueError("must be an https:// URL (http:// only on loopback)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        allowed = {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
        if not names or not set(names) <= allowed:
            raise ValueError(f"must be some of {', '.join(sorted(allowed))} (never HS*, none)")
        return ",".join(names)

    @field_validator("role_map")
    @classmethod
    def _pairs_of_known_roles(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            name, _, role = item.partition("=")
            if not name.strip() or role.strip() not in _PERSON_ROLES:
                raise ValueError(
                    f"`{item}` must be NAME=ROLE, ROLE one of {', '.join(_PERSON_ROLES)}"
                )
        return ",".join(items)

    @model_validator(mode="after")
    def _audience_with_issuer(self) -> OidcSettings:
        if self.issuer and not self.audience:
            raise ValueError("audience is required with an issuer (KAPFLOW_OIDC_AUDIENCE)")
        return self

    @property
    def enabled(self) -> bool:
        return self.issuer is not None

    @property
    def browser_sign_in(self) -> bool:
        """Whether the dashboard offers "Sign in with <provider>"."""
        return self.issuer is not None and self.client_id is not None

    @property
    def role_names(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.role_map.split(",") if "=" in item)
        return {name.strip(): role.strip() for name, role in pairs}


def load_oidc_settings() -> OidcSettings:
    """OpenID Connect settings from the environment; one clear line naming a wrong one."""
    try:
        return OidcSettings()
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = "KAPFLOW_OIDC_" + ".".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from error


class BreakGlassSettings(BaseSettings):
    """Break-glass (issue 18), from `KAPFLOW_BREAK_GLASS_*`: how long an emergency read of
    one client lasts. Short on purpose: the person asks again (and is reviewed again) if
    the emergency goes on."""

    model_config = SettingsConfigDict(env_prefix="KAPFLOW_BREAK_GLASS_", extra="forbid")

    minutes: int = Field(default=30, ge=1, le=24 * 60)


def load_break_glass_settings() -> BreakGlassSettings:
    """Break-glass settings from the environment; one clear line naming a wrong one."""
    try:
        return BreakGlassSettings()
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = "KAPFLOW_BREAK_GLASS_" + ".".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from error


class ClinicSettings(BaseSettings):
    """The clinic itself, from `KAPFLOW_CLINIC_*`: its time zone (IANA), in which the
    dashboard shows every time, naming the zone (issue 20: staff read "due 09:00" as
    the clinic's morning, not the server's)."""

    model_config = SettingsConfigDict(env_prefix="KAPFLOW_CLINIC_", extra="ignore")

    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"{value!r} is not an IANA time zone") from error
        return value


def load_clinic_settings() -> ClinicSettings:
    """Clinic settings from the environment; one clear line naming a wrong one."""
    try:
        return ClinicSettings()
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = "KAPFLOW_CLINIC_" + ".".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from error

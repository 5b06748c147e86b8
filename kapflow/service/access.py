"""Who may do what: API keys, roles and the permissions behind every read and write.

Why it sits in the service layer: the HTTP service enforces it today, and any other runtime
that takes requests from people or services (a future admin CLI over the network, a Kafka
gateway) must apply the same roles, not a second copy of them.

Keys are random 256-bit secrets shown once by `kapflow keys create`; kapflow keeps only their
SHA-256. A fast hash is enough here (and keeps every request cheap) because the secrets are
machine-generated, not passwords: there is no dictionary to try. Checking a presented secret
compares its digest with every configured digest in constant time, so timing tells nothing
about which key, or how much of one, matched.

Roles (SPEC §7 users): `publisher` posts events of its own type prefixes, under its own
sources, only (see `ApiKey.may_publish_source`); `dashboard`
reads what an operations screen shows (states, counts, tasks, the live stream, FHIR tasks)
but no event payloads; `operations` (the clinic's staff) reads the same plus a client's
history and replay (to look a client up; both recorded in the access log) and acts on the
work queue (completes, claims, cancels and reassigns tasks, each recorded as an
`operations.*` event); `auditor` reads everything, including histories, replays, exports,
verification, rejections, parked events and the access log, and writes nothing; `admin`
may do everything. Break-glass (`kapflow/service/break_glass.py`): a dashboard-role person,
or operations and admin, may record an emergency read of one client, which then lets that
person read that client's history and replay for a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kapflow.store.access_log import AccessLog

log = logging.getLogger("kapflow.keys")


class Role:
    PUBLISHER = "publisher"
    DASHBOARD = "dashboard"
    OPERATIONS = "operations"
    AUDITOR = "auditor"
    ADMIN = "admin"


ROLES: tuple[str, ...] = (
    Role.PUBLISHER,
    Role.DASHBOARD,
    Role.OPERATIONS,
    Role.AUDITOR,
    Role.ADMIN,
)


class Permission:
    """One name per kind of access; endpoints ask for exactly one of these."""

    PUBLISH = "publish"
    READ_CLIENTS = "read_clients"  # client views (state, pathway, open tasks; codes only)
    READ_TASKS = "read_tasks"
    READ_STATS = "read_stats"
    STREAM = "stream"
    FHIR = "fhir"
    METRICS = "metrics"
    READ_HISTORY = "read_history"  # recorded events: payloads
    REPLAY = "replay"
    EXPORT = "export"
    VERIFY = "verify"
    READ_REJECTIONS = "read_rejections"  # dead letters: original messages
    READ_PARKED = "read_parked"  # parked events: payloads
    READ_ACCESS_LOG = "read_access_log"
    ACT_ON_TASKS = "act_on_tasks"  # complete, claim, cancel, reassign (recorded as events)
    # An emergency read of one client beyond the role (recorded as an event, reviewed).
    BREAK_GLASS = "break_glass"


_SCREEN = frozenset(
    {
        Permission.READ_CLIENTS,
        Permission.READ_TASKS,
        Permission.READ_STATS,
        Permission.STREAM,
        Permission.FHIR,
        Permission.METRICS,
    }
)
_AUDIT = frozenset(
    {
        Permission.READ_HISTORY,
        Permission.REPLAY,
        Permission.EXPORT,
        Permission.VERIFY,
        Permission.READ_REJECTIONS,
        Permission.READ_PARKED,
        Permission.READ_ACCESS_LOG,
    }
)
# Break-glass (issue 18) is held by the roles whose people may need a record in an emergency
# (a dashboard-role person reads no history otherwise); the endpoint admits a dashboard role
# only for a person, never a screen's key. Auditors write nothing; publishers are systems.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.PUBLISHER: frozenset({Permission.PUBLISH}),
    Role.DASHBOARD: _SCREEN | {Permission.BREAK_GLASS},
    Role.OPERATIONS: _SCREEN
    | {Permission.READ_HISTORY, Permission.REPLAY, Permission.ACT_ON_TASKS, Permission.BREAK_GLASS},
    Role.AUDITOR: _SCREEN | _AUDIT,
    Role.ADMIN: _SCREEN
    | _AUDIT
    | {Permission.PUBLISH, Permission.ACT_ON_TASKS, Permission.BREAK_GLASS},
}

# Which roles hold a permission: named in 403 bodies so the caller knows what to ask for.
ROLES_WITH: dict[str, tuple[str, ...]] = {
    permission: tuple(role for role in ROLES if permission in ROLE_PERMISSIONS[role])
    for permission in set().union(*ROLE_PERMISSIONS.values())
}

# An event-type prefix: `scheduling` allows `scheduling.*`; `clinician.dosing_started` one type.
_PREFIX = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
# A CloudEvents `source` (a URI-reference): visible ASCII, no space, as long as an event's.
_SOURCE = re.compile(r"^[!-~]{1,512}$")
# kapflow's own sources (its clock, its staff's task actions, its outputs): it records
# those events itself, so no publisher key may claim them.
_KAPFLOW_SOURCES = "urn:kapflow"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = frozenset({"name", "role", "prefixes", "sources", "sha256", "expires", "revoked"})
SECRET_PREFIX = "kfk_"


class KeyConfigError(ValueError):
    """The keys file or KAPFLOW_API_KEYS is unusable; the message names the entry, never a
    secret."""


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: who (`name`, recorded in the access log), its role, and for a
    publisher the event-type prefixes it may post and the sources it may post under."""

    name: str
    role: str
    digest: str
    prefixes: tuple[str, ...] = ()
    expires: str | None = None  # RFC 3339 (UTC, `Z`): refused from this instant on
    revoked: str | None = None  # when `kapflow keys revoke` withdrew it: refused at once
    sources: tuple[str, ...] = ()  # CloudEvents `source` URIs, compared exactly

    def refusal(self, now: datetime) -> str | None:
        """Why this key is no longer honoured at `now` (revoked, expired), or None."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and _utc_text(now) >= self.expires:
            return "expired"
        return None

    def may(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def may_publish_type(self, event_type: str) -> bool:
        """Admins publish anything; a publisher only types under one of its prefixes."""
        if self.role == Role.ADMIN:
            return True
        if self.role != Role.PUBLISHER:
            return False
        return any(
            event_type == prefix or event_type.startswith(prefix + ".") for prefix in self.prefixes
        )

    def may_publish_source(self, source: str) -> bool:
        """Admins publish under any source; a publisher only under one its entry names.

        (`source`, `id`) is an event's identity (SPEC §3): a key that could post under
        another system's source could take the ids that system will use. A publisher entry
        written before keys named sources names none, and so publishes nothing until a
        `sources` list is added to it: the safe reading of a key that does not say.
        """
        if self.role == Role.ADMIN:
            return True
        return self.role == Role.PUBLISHER and source in self.sources

    def as_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "role": self.role}
        if self.prefixes:
            entry["prefixes"] = list(self.prefixes)
        if self.sources:
            entry["sources"] = list(self.sources)
        entry["sha256"] = self.digest
        if self.expires is not None:
            entry["expires"] = self.expires
        if self.revoked is not None:
            entry["revoked"] = self.revoked
        return entry


# The principal of `kapflow serve --insecure-dev`: every permission, named in the access log.
INSECURE_DEV_KEY = ApiKey("insecure-dev", Role.ADMIN, "0" * 64)


class KeyRing:
    """The configured keys, looked up by presented secret in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys: tuple[ApiKey, ...] = tuple(keys)
        names = [key.name for key in self.keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise KeyConfigError(f"duplicate key names: {', '.join(duplicates)}")

    def __len__(self) -> int:
        return len(self.keys)

    def authenticate(self, secret: str) -> ApiKey | None:
        presented = digest_of(secret).encode()
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, key.digest.encode()):
                found = key
        return found


def _parse_entry(raw: Any, where: str) -> ApiKey:
    if not isinstance(raw, Mapping):
        raise KeyConfigError(f"{where}: each key must be an object/table")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise KeyConfigError(f"{where}: unknown fields {', '.join(unknown)}")
    name, role, digest = raw.get("name"), raw.get("role"), raw.get("sha256")
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeyConfigError(f"{where}: `name` must be a short token (letters, digits, ._-)")
    where = f"{where} ({name})"
    if role not in ROLES:
        raise KeyConfigError(f"{where}: `role` must be one of {', '.join(ROLES)}")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise KeyConfigError(
            f"{where}: `sha256` must be 64 lowercase hex digits (the hash, never the secret)"
        )
    prefixes = raw.get("prefixes", [])
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if not isinstance(prefixes, list) or not all(
        isinstance(p, str) and _PREFIX.match(p) for p in prefixes
    ):
        raise KeyConfigError(f"{where}: `prefixes` must be event-type prefixes like `scheduling`")
    if role == Role.PUBLISHER and not prefixes:
        raise KeyConfigError(f"{where}: a publisher key needs at least one prefix")
    if role != Role.PUBLISHER and prefixes:
        raise KeyConfigError(f"{where}: only publisher keys take prefixes")
    sources = _entry_sources(raw.get("sources", []), where)
    if role != Role.PUBLISHER and sources:
        raise KeyConfigError(f"{where}: only publisher keys take sources")
    expires, revoked = (
        _entry_time(raw.get(field), where, field) for field in ("expires", "revoked")
    )
    return ApiKey(name, role, digest, tuple(prefixes), expires, revoked, sources)


def _entry_sources(value: Any, where: str) -> tuple[str, ...]:
    """The `sources` of an entry: CloudEvents source URIs, none of them kapflow's own."""
    sources = [value] if isinstance(value, str) else value
    if not isinstance(sources, list) or not all(
        isinstance(s, str) and _SOURCE.match(s) for s in sources
    ):
        raise KeyConfigError(
            f"{where}: `sources` must be CloudEvents source URIs like `urn:qmts:scheduling`"
        )
    own = [
        s
        for s in sources
        if s.lower() == _KAPFLOW_SOURCES or s.lower().startswith(_KAPFLOW_SOURCES + ":")
    ]
    if own:
        raise KeyConfigError(
            f"{where}: `{own[0]}` is kapflow's own source (its clock, task actions and"
            " outputs are recorded by kapflow itself); no publisher key may claim it"
        )
    return tuple(dict.fromkeys(sources))


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_time(value: Any, where: str, field: str) -> str | None:
    """An RFC 3339 time (a TOML datetime or a string), kept as UTC text with `Z`."""
    if value is None:
        return None
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise KeyConfigError(f"{where}: `{field}` must be an RFC 3339 time with a timezone")
    return _utc_text(moment)


def parse_keys(document: Any, origin: str) -> KeyRing:
    """`{"keys": [entry, …]}` (JSON or TOML `[[keys]]`), or a bare JSON list of entries."""
    entries = document.get("keys") if isinstance(document, Mapping) else document
    if not isinstance(entries, list):
        raise KeyConfigError(f"{origin}: expected a `keys` list")
    ring = KeyRing(_parse_entry(entry, f"{origin} key #{i + 1}") for i, entry in enumerate(entries))
    for key in ring.keys:
        if key.role == Role.PUBLISHER and not key.sources and key.revoked is None:
            log.warning(
                "%s: publisher key %s names no sources, so it may publish nothing: add a"
                " `sources` list to its entry (the source URIs its system posts under)",
                origin,
                key.name,
            )
    return ring


def load_keys(path: str | None = None, env_value: str | None = None) -> KeyRing:
    """Keys from `--keys-file` (JSON, or TOML when it ends in .toml), else KAPFLOW_API_KEYS
    (JSON text of the same document). No source gives an empty ring."""
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise KeyConfigError(f"cannot read keys file {path}: {error.strerror}") from error
        try:
            document = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as error:
            kind = "TOML" if file.suffix == ".toml" else "JSON"
            raise KeyConfigError(f"keys file {path} is not valid {kind}: {error}") from error
        return parse_keys(document, path)
    if env_value and env_value.strip():
        try:
            document = json.loads(env_value)
        except ValueError as error:
            raise KeyConfigError("KAPFLOW_API_KEYS is not valid JSON") from error
        return parse_keys(document, "KAPFLOW_API_KEYS")
    return KeyRing(())


@dataclass(frozen=True, slots=True)
class NewKey:
    secret: str
    key: ApiKey

    def json_line(self) -> str:
        return json.dumps(self.key.as_entry())

    def toml_block(self) -> str:
        lines = ["[[keys]]", f'name = "{self.key.name}"', f'role = "{self.key.role}"']
        if self.key.prefixes:
            lines.append("prefixes = [" + ", ".join(f'"{p}"' for p in self.key.prefixes) + "]")
        if self.key.sources:
            lines.append("sources = [" + ", ".join(json.dumps(s) for s in self.key.sources) + "]")
        lines.append(f'sha256 = "{self.key.digest}"')
        if self.key.expires:
            lines.append(f'expires = "{self.key.expires}"')
        return "\n".join(lines)


def create_key(
    role: str,
    name: str,
    prefixes: Iterable[str] = (),
    expires: datetime | None = None,
    sources: Iterable[str] = (),
) -> NewKey:
    """A new random secret and the entry (hash only) that configures it. A publisher key
    without `sources` publishes nothing (`ApiKey.may_publish_source`); `kapflow keys
    create` refuses to make one."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {
        "name": name,
        "role": role,
        "prefixes": list(prefixes),
        "sources": list(sources),
        "sha256": digest_of(secret),
    }
    if expires is not None:
        entry["expires"] = _utc_text(expires)
    return NewKey(secret, _parse_entry(entry, "new key"))


# --- reads from the command line ---------------------------------------------------------
# The role a command-line read is logged under: whoever can run `kapflow` on a host with the
# database URL reads with the database's own rights, not through a key's role.
CLI_ROLE = "cli"


def os_user() -> str:
    """Who runs this command (SPEC §6: every read of clinical data names who read it)."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name, no passwd entry (a bare container)
        return f"uid-{os.getuid()}"


def record_cli_read(
    access_log: AccessLog,
    action: str,
    client_id: str | None = None,
    detail: str | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """Record a command-line read in the access log BEFORE it is printed, as the HTTP
    service does (`record_access`): if it cannot be recorded, it is not served."""
    from kapflow.store.access_log import AccessRecord

    at = _utc_text(now or datetime.now(UTC))
    access_log.record(AccessRecord(at, os_user(), CLI_ROLE, action, client_id, detail))


# --- people (OpenID Connect) -------------------------------------------------------------
# What an identity provider calls a person's role → kapflow's role. Task owners are the
# clinic's staff (`operations`); a publisher is a system, never a person.
PERSON_ROLES: dict[str, str] = {
    Role.DASHBOARD: Role.DASHBOARD,
    Role.OPERATIONS: Role.OPERATIONS,
    Role.AUDITOR: Role.AUDITOR,
    Role.ADMIN: Role.ADMIN,
    "scheduler": Role.OPERATIONS,
    "clinician": Role.OPERATIONS,
    "billing": Role.OPERATIONS,
    "prescriber_liaison": Role.OPERATIONS,
}
# A person who holds several roles acts in the first of these they hold: one role per
# request, as for a key (the access log names it).
_PERSON_PRECEDENCE = (Role.ADMIN, Role.OPERATIONS, Role.AUDITOR, Role.DASHBOARD)
# A person has no key: their principal's digest is this marker, which no key's hex matches.
PERSON_DIGEST = "person"


def person_role(claimed: Iterable[str], extra: Mapping[str, str] | None = None) -> str | None:
    """kapflow's role for a person whose identity provider names `claimed` roles (with the
    deployment's own names `extra`, e.g. {"kap-nurse": "operations"}), or None."""
    names = {**PERSON_ROLES, **(extra or {})}
    held = {names[name] for name in claimed if names.get(name) in _PERSON_PRECEDENCE}
    return next((role for role in _PERSON_PRECEDENCE if role in held), None)


def person_principal(actor: str, role: str, expires: datetime) -> ApiKey:
    """A signed-in person as the principal of a request: `actor` (their subject, a short
    token) is who the access log and the history name; refused from `expires` on."""
    return ApiKey(actor, role, PERSON_DIGEST, expires=_utc_text(expires))


def is_person(principal: ApiKey) -> bool:
    return principal.digest == PERSON_DIGEST

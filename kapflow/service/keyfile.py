"""The keys file as `kapflow keys create|revoke|list` edit it, and `kapflow serve` reloads it.

The file holds hashes, never secrets (see `access.py`). It is rewritten whole, to a temporary
file in the same folder and renamed over the old one, so a serve watching it never reads a
half-written file. A revoked key stays in the file with the time it was revoked: the file
then says who had access until when, and the name cannot be reused by mistake.

JSON (`{"keys": [...]}`) or TOML (`[[keys]]` tables, a name ending in `.toml`), as read by
`load_keys`. Rewriting a TOML file keeps its keys but not its comments.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from kapflow.service.access import (
    ApiKey,
    KeyConfigError,
    KeyRing,
    NewKey,
    load_keys,
    parse_keys,
)
from workflow.tasks import iso


def read_keys(path: str) -> KeyRing:
    """The keys in `path`; a file that does not exist yet holds none."""
    if not Path(path).exists():
        return KeyRing(())
    return load_keys(path)


def _document(path: str) -> dict[str, Any]:
    if not Path(path).exists():
        return {"keys": []}
    text = Path(path).read_text(encoding="utf-8")
    try:
        document = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise KeyConfigError(f"keys file {path} is not readable: {error}") from error
    if isinstance(document, list):
        document = {"keys": document}
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeyConfigError(f"{path}: expected a `keys` list")
    return dict(document)


def _toml(keys: list[dict[str, Any]]) -> str:
    blocks = []
    for entry in keys:
        lines = ["[[keys]]"]
        for field, value in entry.items():
            if isinstance(value, list):
                rendered = "[" + ", ".join(json.dumps(str(item)) for item in value) + "]"
            else:
                rendered = json.dumps(str(value))  # a TOML basic string for these values
            lines.append(f"{field} = {rendered}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _write(path: str, document: dict[str, Any]) -> None:
    parse_keys(document, path)  # never write a file serve would refuse
    target = Path(path)
    text = (
        _toml(document["keys"]) if path.endswith(".toml") else json.dumps(document, indent=2) + "\n"
    )
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def _editing(path: str) -> Iterator[None]:
    """One `kapflow keys` edit at a time: two at once must not lose one of them."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_key(path: str, new: NewKey) -> None:
    """Append the new key's entry (hash only); a name already in the file is refused."""
    with _editing(path):
        document = _document(path)
        names = {entry.get("name") for entry in document["keys"] if isinstance(entry, Mapping)}
        if new.key.name in names:
            raise KeyConfigError(f"{path} already has a key named {new.key.name}")
        document["keys"] = [*document["keys"], new.key.as_entry()]
        _write(path, document)


def revoke_key(path: str, name: str, at: datetime) -> ApiKey:
    """Mark the key `name` revoked at `at`; the revoked key as now configured."""
    with _editing(path):
        document = _document(path)
        for index, entry in enumerate(document["keys"]):
            if isinstance(entry, Mapping) and entry.get("name") == name:
                if entry.get("revoked"):
                    raise KeyConfigError(f"key {name} was already revoked at {entry['revoked']}")
                revoked = {**entry, "revoked": iso(at)}
                document["keys"][index] = revoked
                _write(path, document)
                [key] = parse_keys([revoked], path).keys
                return key
    raise KeyConfigError(f"{path} has no key named {name}")


def key_status(key: ApiKey, now: datetime) -> str:
    return key.refusal(now) or "active"

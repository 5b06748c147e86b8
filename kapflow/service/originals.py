"""An input as the rejected log keeps it: text every store can hold, whatever arrived.

A dead letter must show what was sent, but PostgreSQL text cannot hold a NUL character
and no store takes text that is not valid Unicode. So the original is kept as it came
when it can be, and otherwise escaped where it could not be stored: a NUL as `\\u0000`,
a byte that is not UTF-8 as `\\xNN`, a lone surrogate as `\\uXXXX`. A message over the
size limit keeps only its beginning (`ORIGINAL_KEPT_CHARS`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson

from events import CloudEvent

ORIGINAL_KEPT_CHARS = 64 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by `surrogateescape`
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


class Original(str):
    """The storable text of an input, remembering the digest of the input as received.

    Escaping can make two inputs read alike (a NUL byte and the six characters `\\u0000`),
    so their rejected-log keys come from what was received, not from the stored text.
    """

    received_sha256: str


def storable(text: str) -> Original:
    """`text` with what no store can hold escaped, and cut to `ORIGINAL_KEPT_CHARS`."""
    received = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    if len(text) > ORIGINAL_KEPT_CHARS:
        dropped = len(text) - ORIGINAL_KEPT_CHARS
        text = f"{text[:ORIGINAL_KEPT_CHARS]}…[{dropped} more characters not kept]"
    original = Original(_SURROGATE.sub(_escape_surrogate, text.replace("\x00", "\\u0000")))
    original.received_sha256 = received
    return original


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, ValueError):
        pass  # lone surrogates, integers beyond 64 bits: the standard library takes both
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)
    except (RecursionError, ValueError):
        return "[an input nested too deeply to keep]"


def original_text(raw: str | bytes | dict[str, Any] | CloudEvent) -> str:
    """The input as text; line endings of a JSON-lines file are not part of the message."""
    if isinstance(raw, bytes):
        return storable(raw.decode("utf-8", errors="surrogateescape").strip())
    if isinstance(raw, str):
        return storable(raw.strip())
    if isinstance(raw, CloudEvent):
        return raw.model_dump_json(exclude_none=True)
    return storable(_json_text(raw))


def fingerprint(text: str) -> str:
    """The rejected log's key for an input that has no CloudEvent identity: the SHA-256 of
    the input as received (of the text itself for an input that needed no escaping)."""
    if isinstance(text, Original):
        return text.received_sha256
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()

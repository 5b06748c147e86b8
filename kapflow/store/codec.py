"""How the bulky JSON columns are stored: compressed, and encrypted at rest when asked.

The store adapters apply this codec where rows become objects and back, so nothing above
the store sees it: a `HistoryEntry`'s `event` and `outcome` are the logical JSON text,
and the history hash chain is computed, and verified, over that text exactly as before.

A stored value starts with its format byte:

- a `str` (a SQLite row written before schema version 3), or bytes starting with `{` or
  `[`: plain legacy text, read as is;
- 0x00: plain UTF-8 text follows (a value deflate would not shrink; a PostgreSQL row
  migrated from a text column);
- 0x01: raw deflate with the frozen preset dictionary `DICTIONARY_1` (written by schema
  version 3; read, never written, since version 4);
- 0x03: a zstd frame made with the frozen dictionary `codec_dictionary_3.zdict` (no
  dictionary id or checksum in the frame: the format byte names the dictionary); what
  kapflow writes since schema version 4, five to eight times faster than 0x01 for
  about the same size;
- 0x02: AES-GCM (`cryptography`), the header being 0x02 and the 8-byte id of the key, then
  a 12-byte nonce, then the sealed 0x00/0x01/0x03 value; the header is authenticated too.
  Written before issue 18; read only until the store is resealed (below);
- 0x04: AES-GCM bound to its row: laid out as 0x02, but the associated data is the header
  and the value's place (`row_context`: table, row key, column), so a sealed value moved
  to another row or column (two clients' snapshots swapped) fails authentication. What
  kapflow writes with a key since issue 18.

A format byte is never reused: a new dictionary or cipher gets a new byte, and the old
ones stay readable for as long as a store may hold them.

Sealed means sealed. A store is encrypted when its `meta` holds a key check (a value sealed
with its key, so a missing or wrong key is refused before anything is read). The key check
also says whether every value is bound: one written by this release (a new encrypted store,
or the end of `kapflow rotate-key`) does, and from then on the codec refuses every value
that is not in format 0x04 under a loaded key, in clear or 0x02 alike: a row written by
someone with database access but without the key is an error, never read. A store
encrypted by an earlier release keeps reading its 0x02 (and not yet encrypted) values until
`kapflow rotate-key` has rewritten them all; the key check it then writes is sealed, so it
cannot be forged back to the lenient kind without the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kapflow.store.base import StoreError
from kapflow.store.codec_dictionary import DICTIONARY_1

if TYPE_CHECKING:
    from kapflow.store.base import EventStore

PLAIN = 0x00
DEFLATE_1 = 0x01
SEALED = 0x02
ZSTD_3 = 0x03
SEALED_BOUND = 0x04

KEY_BYTES = 32  # AES-256
KEY_ID_BYTES = 8
NONCE_BYTES = 12
_SEALED_HEADER_BYTES = 1 + KEY_ID_BYTES
_LEGACY_STARTS = (ord("{"), ord("["))
_SEALED_FORMS = frozenset((SEALED, SEALED_BOUND))

ENCRYPTION_KEY_ENV = "KAPFLOW_ENCRYPTION_KEY"
ENCRYPTION_KEY_FILE_ENV = "KAPFLOW_ENCRYPTION_KEY_FILE"
# The meta row holding a value sealed with the store's current key: opening an encrypted
# store without the key, or with another one, is refused before anything is read.
KEY_CHECK_META = "encryption_key_check"
# The key check of an earlier release (values may be unbound, or not yet encrypted) and
# the one written once every value is sealed and bound (store/codec.py docstring).
_KEY_CHECK_TEXT = "kapflow storage key check"
_KEY_CHECK_BOUND_TEXT = "kapflow storage key check; every value sealed and bound to its row"

# How a store is opened. Only a writer may mark a store encrypted: a read never changes a
# store's mode (a reader with a key once marked a plain store encrypted while the keyless
# server went on writing clear values into it). `reseal` is `kapflow rotate-key`.
StoreAccess = Literal["read", "write", "reseal"]


def row_context(table: str, column: str, *key: object) -> bytes:
    """Where a value is stored, as the associated data its seal is bound to.

    Each part of the row key is prefixed by its length, so no two rows share a context
    whatever characters their ids hold.
    """
    parts = [table]
    for part in key:
        text = str(part)
        parts.append(f"{len(text)}:{text}")
    parts.append(column)
    return "\x1f".join(parts).encode()


KEY_CHECK_CONTEXT = row_context("meta", "value", KEY_CHECK_META)

# zstd at level 3 with the frozen dictionary. zstandard's (de)compressors are not safe to
# share between threads (serve reads in many), so each thread gets its own pair.
ZSTD_LEVEL = 3
DICTIONARY_3 = files("kapflow.store").joinpath("codec_dictionary_3.zdict").read_bytes()
_ZSTD_DICTIONARY = zstandard.ZstdCompressionDict(DICTIONARY_3)
_zstd = threading.local()


def _zstd_pair() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(
        _zstd, "pair", None
    )
    if pair is None:
        pair = _zstd.pair = (
            zstandard.ZstdCompressor(
                level=ZSTD_LEVEL,
                dict_data=_ZSTD_DICTIONARY,
                write_checksum=False,
                write_content_size=True,
                write_dict_id=False,
            ),
            zstandard.ZstdDecompressor(dict_data=_ZSTD_DICTIONARY),
        )
    return pair


class EncryptionKeyError(StoreError):
    """The store is encrypted and the key to read it is missing or wrong."""


def key_id(key: bytes) -> bytes:
    """A short public name for a key, stored with every value sealed by it."""
    return hashlib.sha256(b"kapflow storage key id\x00" + key).digest()[:KEY_ID_BYTES]


class StorageCipher:
    """AES-GCM over stored values. The first key seals new values; every key opens."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a storage cipher needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"an encryption key is {KEY_BYTES} bytes (base64 in the file)")
        self.keys = tuple(keys)
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self.write_key_id = key_id(keys[0])
        self._header = bytes([SEALED_BOUND]) + self.write_key_id
        self._sealer = self._ciphers[self.write_key_id]

    @property
    def key_ids(self) -> frozenset[bytes]:
        return frozenset(self._ciphers)

    def seal(self, inner: bytes, context: bytes) -> bytes:
        """Format 0x04: `inner` sealed with the write key, bound to `context`."""
        nonce = os.urandom(NONCE_BYTES)  # random per value: never reused under one key
        header = self._header
        return header + nonce + self._sealer.encrypt(nonce, inner, header + context)

    def open(self, value: bytes, context: bytes) -> bytes:
        """The inner value of a 0x04 value bound to `context`, or of a 0x02 value."""
        header = value[:_SEALED_HEADER_BYTES]
        cipher = self._ciphers.get(header[1:])
        if cipher is None:
            raise EncryptionKeyError(
                f"a stored value is encrypted with key {header[1:].hex()}, which is not loaded"
                f" ({ENCRYPTION_KEY_ENV} / {ENCRYPTION_KEY_FILE_ENV})"
            )
        nonce = value[_SEALED_HEADER_BYTES : _SEALED_HEADER_BYTES + NONCE_BYTES]
        bound = header + context if header[0] == SEALED_BOUND else header
        try:
            return cipher.decrypt(nonce, value[_SEALED_HEADER_BYTES + NONCE_BYTES :], bound)
        except InvalidTag:
            raise EncryptionKeyError(
                f"a stored value ({_place(context)}) failed authentication: altered, moved"
                " from another row, or sealed by another key"
            ) from None

    def sealed_with_write_key(self, value: bytes | str) -> bool:
        return isinstance(value, bytes) and value[:_SEALED_HEADER_BYTES] == self._header


def _place(context: bytes) -> str:
    """A context as errors name it: table, row key, column (ids only, never values)."""
    return context.decode(errors="replace").replace("\x1f", " ") or "unbound"


_ZSTD_HEADER = bytes([ZSTD_3])
_PLAIN_HEADER = bytes([PLAIN])


def compress(text: str) -> bytes:
    """Format 0x03, or 0x00 when zstd would not make the value smaller."""
    raw = text.encode()
    packed = _zstd_pair()[0].compress(raw)
    if len(packed) < len(raw):
        return _ZSTD_HEADER + packed
    return _PLAIN_HEADER + raw


def _unzstd(packed: bytes) -> str:
    try:
        return _zstd_pair()[1].decompress(packed).decode()
    except (zstandard.ZstdError, UnicodeDecodeError) as error:
        raise StoreError(f"a stored value is damaged (format 0x03): {error}") from None


def _inflate(packed: bytes | memoryview) -> str:
    inflater = zlib.decompressobj(-15, zdict=DICTIONARY_1)
    try:
        raw = inflater.decompress(packed) + inflater.flush()
        if not inflater.eof:
            raise StoreError("a stored value is truncated (format 0x01)")
        return raw.decode()
    except (zlib.error, UnicodeDecodeError) as error:
        raise StoreError(f"a stored value is damaged (format 0x01): {error}") from None


class StorageCodec:
    """Encode the logical text of a bulky column for storage, and decode it back.

    `context` is where the value is stored (`row_context`): with a key, the seal is bound
    to it; without one it is not used. `bound_only` is set from the store's key check
    (`check_key`): then only values sealed and bound under a loaded key are read.
    """

    def __init__(self, cipher: StorageCipher | None = None) -> None:
        self.cipher = cipher
        self.bound_only = False

    def encode(self, text: str, context: bytes = b"") -> bytes:
        packed = compress(text)
        return self.cipher.seal(packed, context) if self.cipher is not None else packed

    def decode(self, value: bytes | memoryview | str, context: bytes = b"") -> str:
        if isinstance(value, memoryview):
            value = bytes(value)
        form = value[0] if value and isinstance(value, bytes) else None
        if form in _SEALED_FORMS:
            assert isinstance(value, bytes)
            if self.cipher is None:
                raise EncryptionKeyError(
                    "this store holds encrypted values: set"
                    f" {ENCRYPTION_KEY_ENV} or {ENCRYPTION_KEY_FILE_ENV}"
                )
            if form == SEALED and self.bound_only:
                raise EncryptionKeyError(
                    f"a stored value ({_place(context)}) is sealed without its row binding"
                    " in a store resealed with binding: refused (an older value put back?)"
                )
            return _unpack(self.cipher.open(value, context))
        if self.bound_only:
            # Written without the key by someone with access to the database: never read.
            raise EncryptionKeyError(
                f"a stored value ({_place(context)}) is not encrypted in a store encrypted"
                " at rest: refused (written without the key?)"
            )
        return _unpack(value)

    def needs_reseal(self, value: bytes | memoryview | str) -> bool:
        """Whether `rotate-key` must rewrite this value: not sealed and bound with the
        write key (in clear, format 0x02, or another key)."""
        if self.cipher is None:
            return False
        return not self.cipher.sealed_with_write_key(
            bytes(value) if isinstance(value, memoryview) else value
        )

    # The key check in `meta` -----------------------------------------------------------
    def key_check(self) -> str | None:
        """The value to keep in meta: this codec's key, sealed, or None when not encrypted.

        It says that every value is sealed and bound: write it only to a store that holds
        no value yet, or once `reseal` has rewritten them all.
        """
        if self.cipher is None:
            return None
        return base64.b64encode(self.encode(_KEY_CHECK_BOUND_TEXT, KEY_CHECK_CONTEXT)).decode()

    def key_check_to_write(
        self, stored: str | None, access: StoreAccess, holds_values: Callable[[], bool]
    ) -> str | None:
        """The key check a store opened with `access` should get now, if any.

        Only a writer marks a store encrypted, and only a store holding no value yet: the
        values of a plain store are encrypted, and the store marked, by `kapflow rotate-key`
        alone, so that no clear value is ever left behind in an encrypted store.
        """
        if stored is not None or self.cipher is None or access != "write":
            return None
        if holds_values():
            raise EncryptionKeyError(
                "this store is not encrypted at rest and holds values: encrypt them with"
                " `kapflow rotate-key --new-key-file FILE` (writers stopped), then start"
                f" kapflow with that key; or unset {ENCRYPTION_KEY_ENV}/_FILE"
            )
        return self.key_check()

    def check_key(self, stored: str | None, access: StoreAccess = "write") -> None:
        """Refuse an encrypted store without its key, with one clear line; learn from the
        key check whether only bound values may be read."""
        if stored is None:
            if self.cipher is not None and access == "read":
                raise EncryptionKeyError(
                    "this store is not encrypted at rest, but an encryption key is set: a"
                    f" read never encrypts a store; unset {ENCRYPTION_KEY_ENV}/_FILE to read"
                    " it, or encrypt it with `kapflow rotate-key`"
                )
            return
        if self.cipher is None:
            raise EncryptionKeyError(
                "this store is encrypted at rest: set "
                f"{ENCRYPTION_KEY_ENV} or {ENCRYPTION_KEY_FILE_ENV} to its key"
            )
        raw = base64.b64decode(stored)
        if raw[:1] not in (bytes([SEALED]), bytes([SEALED_BOUND])):
            # A check in clear would say nothing about the key, and could claim leniency.
            raise EncryptionKeyError("this store's encryption key check is damaged")
        self.bound_only = False
        try:
            opened = self.decode(raw, KEY_CHECK_CONTEXT)
        except EncryptionKeyError:
            raise EncryptionKeyError(
                "the encryption key given does not open this store (key id"
                f" {raw[1:_SEALED_HEADER_BYTES].hex()} expected)"
            ) from None
        if opened not in (_KEY_CHECK_TEXT, _KEY_CHECK_BOUND_TEXT):
            raise EncryptionKeyError("this store's encryption key check is damaged")
        self.bound_only = opened == _KEY_CHECK_BOUND_TEXT


def _unpack(value: bytes | str) -> str:
    """An unsealed value's text: format 0x03, 0x01, 0x00 or legacy text."""
    if isinstance(value, str):
        return value  # a SQLite TEXT value written before schema version 3
    if not value:
        return ""
    form = value[0]
    if form == ZSTD_3:
        return _unzstd(value[1:])
    if form == DEFLATE_1:
        return _inflate(memoryview(value)[1:])
    if form == PLAIN:
        return value[1:].decode()
    if form in _LEGACY_STARTS:
        return value.decode()
    raise StoreError(f"a stored value has an unknown format byte 0x{form:02x}")


# Hashes: 32 bytes stored, hex everywhere above the store --------------------------------
def pack_hash(hex_digest: str) -> bytes:
    """A SHA-256 hex digest as its 32 bytes (any other text as its UTF-8, kept exact)."""
    if len(hex_digest) == 64:
        try:
            packed = bytes.fromhex(hex_digest)
        except ValueError:
            packed = b""
        if packed.hex() == hex_digest:
            return packed
    return hex_digest.encode()


def unpack_hash(value: bytes | memoryview | str) -> str:
    if isinstance(value, str):
        return value
    value = bytes(value)
    return value.hex() if len(value) == 32 else value.decode()


# Keys from the environment ---------------------------------------------------------------
def parse_keys(text: str) -> list[bytes]:
    """Base64 keys, one a line: the first seals new values, the others only open old ones."""
    keys: list[bytes] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "an encryption key is base64 (e.g. `openssl rand -base64 32`)"
            ) from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"an encryption key is {KEY_BYTES} bytes, base64-encoded")
        keys.append(key)
    if not keys:
        raise ValueError("no encryption key found")
    return keys


def read_key_file(path: str | Path) -> list[bytes]:
    try:
        return parse_keys(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read the encryption key file: {error.strerror}") from None


def cipher_from_environment(environ: Mapping[str, str] | None = None) -> StorageCipher | None:
    """The cipher `KAPFLOW_ENCRYPTION_KEY` or `KAPFLOW_ENCRYPTION_KEY_FILE` names, or None.

    A key file may hold older keys on later lines, read-only, for values not yet moved to
    the first key by `kapflow rotate-key`.
    """
    env = os.environ if environ is None else environ
    inline, path = env.get(ENCRYPTION_KEY_ENV), env.get(ENCRYPTION_KEY_FILE_ENV)
    if inline and path:
        raise ValueError(f"set {ENCRYPTION_KEY_ENV} or {ENCRYPTION_KEY_FILE_ENV}, not both")
    if inline:
        return StorageCipher(parse_keys(inline))
    if path:
        return StorageCipher(read_key_file(path))
    return None


def generate_key() -> str:
    """A new random key, base64, for a key file."""
    return base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()


def rotation_store(url: str, new_key_file: str | Path) -> EventStore:
    """The store at `url` opened to move every value to the first key of `new_key_file`.

    The keys `KAPFLOW_ENCRYPTION_KEY[_FILE]` names still open the values not moved yet;
    a store not encrypted so far is encrypted by the move. Run `reseal()` on it.
    """
    from kapflow.store import open_store

    new_keys = read_key_file(new_key_file)
    current = cipher_from_environment()
    old_keys = list(current.keys) if current is not None else []
    cipher = StorageCipher([new_keys[0], *old_keys, *new_keys[1:]])
    return open_store(url, cipher=cipher, access="reseal")

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
  a 12-byte nonce, then the sealed 0x00/0x01 value; the header is authenticated too.

A format byte is never reused: a new dictionary or cipher gets a new byte, and the old
ones stay readable for as long as a store may hold them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import zlib
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

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

KEY_BYTES = 32  # AES-256
KEY_ID_BYTES = 8
NONCE_BYTES = 12
_SEALED_HEADER_BYTES = 1 + KEY_ID_BYTES
_LEGACY_STARTS = (ord("{"), ord("["))

ENCRYPTION_KEY_ENV = "KAPFLOW_ENCRYPTION_KEY"
ENCRYPTION_KEY_FILE_ENV = "KAPFLOW_ENCRYPTION_KEY_FILE"
# The meta row holding a value sealed with the store's current key: opening an encrypted
# store without the key, or with another one, is refused before anything is read.
KEY_CHECK_META = "encryption_key_check"
_KEY_CHECK_TEXT = "kapflow storage key check"

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
        self._header = bytes([SEALED]) + self.write_key_id

    @property
    def key_ids(self) -> frozenset[bytes]:
        return frozenset(self._ciphers)

    def seal(self, inner: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # random per value: never reused under one key
        sealed = self._ciphers[self.write_key_id].encrypt(nonce, inner, self._header)
        return self._header + nonce + sealed

    def open(self, value: bytes) -> bytes:
        header = value[:_SEALED_HEADER_BYTES]
        cipher = self._ciphers.get(header[1:])
        if cipher is None:
            raise EncryptionKeyError(
                f"a stored value is encrypted with key {header[1:].hex()}, which is not loaded"
                f" ({ENCRYPTION_KEY_ENV} / {ENCRYPTION_KEY_FILE_ENV})"
            )
        nonce = value[_SEALED_HEADER_BYTES : _SEALED_HEADER_BYTES + NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, value[_SEALED_HEADER_BYTES + NONCE_BYTES :], header)
        except InvalidTag:
            raise EncryptionKeyError(
                "a stored value failed authentication: altered, or sealed by another key"
            ) from None

    def sealed_with_write_key(self, value: bytes | str) -> bool:
        return isinstance(value, bytes) and value[:_SEALED_HEADER_BYTES] == self._header


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
    """Encode the logical text of a bulky column for storage, and decode it back."""

    def __init__(self, cipher: StorageCipher | None = None) -> None:
        self.cipher = cipher

    def encode(self, text: str) -> bytes:
        packed = compress(text)
        return self.cipher.seal(packed) if self.cipher is not None else packed

    def decode(self, value: bytes | memoryview | str) -> str:
        if isinstance(value, str):
            return value  # a SQLite TEXT value written before schema version 3
        if isinstance(value, memoryview):
            value = bytes(value)
        if not value:
            return ""
        form = value[0]
        if form == SEALED:
            if self.cipher is None:
                raise EncryptionKeyError(
                    "this store holds encrypted values: set"
                    f" {ENCRYPTION_KEY_ENV} or {ENCRYPTION_KEY_FILE_ENV}"
                )
            value = self.cipher.open(value)
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

    def needs_reseal(self, value: bytes | memoryview | str) -> bool:
        """Whether `rotate-key` must rewrite this value: not sealed with the write key."""
        if self.cipher is None:
            return False
        return not self.cipher.sealed_with_write_key(
            bytes(value) if isinstance(value, memoryview) else value
        )

    # The key check in `meta` -----------------------------------------------------------
    def key_check(self) -> str | None:
        """The value to keep in meta: this codec's key, sealed, or None when not encrypted."""
        if self.cipher is None:
            return None
        return base64.b64encode(self.encode(_KEY_CHECK_TEXT)).decode()

    def check_key(self, stored: str | None) -> None:
        """Refuse an encrypted store without its key, with one clear line."""
        if stored is None:
            return
        if self.cipher is None:
            raise EncryptionKeyError(
                "this store is encrypted at rest: set "
                f"{ENCRYPTION_KEY_ENV} or {ENCRYPTION_KEY_FILE_ENV} to its key"
            )
        try:
            opened = self.decode(base64.b64decode(stored))
        except EncryptionKeyError:
            raise EncryptionKeyError(
                "the encryption key given does not open this store (key id"
                f" {base64.b64decode(stored)[1:_SEALED_HEADER_BYTES].hex()} expected)"
            ) from None
        if opened != _KEY_CHECK_TEXT:
            raise EncryptionKeyError("this store's encryption key check is damaged")


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
    return open_store(url, cipher=StorageCipher([new_keys[0], *old_keys, *new_keys[1:]]))

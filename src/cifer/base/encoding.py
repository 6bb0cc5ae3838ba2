"""Canonical binary encoding for everything that is signed or hashed.

Objects are msgspec Structs encoded as MessagePack arrays (field order is the declaration
order, so the bytes never depend on dict ordering). Decoding is typed, so a float where an
int belongs, a missing field or an unknown tag is rejected before any state is touched.
MessagePack allows several encodings of one integer; we accept only the one msgspec writes
(the shortest), so one object has exactly one byte string and one hash.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

#: Hard ceiling on any single decoded object; callers may pass a lower one.
MAX_OBJECT_BYTES = 8 * 1024 * 1024


class EncodingError(ValueError):
    """Input bytes are not a canonical encoding of the expected type."""


class Canonical(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base class for hashed/signed objects: array layout, immutable, strict decoding."""


# "deterministic" sorts dict keys and set members, so equal values encode identically and
# decode() can reject the other orders as non-canonical (struct field order is unaffected).
_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(obj: Any) -> bytes:
    """Canonical bytes of ``obj`` (no Canonical struct declares a float field; a test checks)."""
    return _encoder.encode(obj)


def decode(data: bytes, typ: type[T], *, max_bytes: int = MAX_OBJECT_BYTES) -> T:
    """Decode ``data`` as ``typ``; raise :class:`EncodingError` naming the problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError(f"expected bytes for {_name(typ)}, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise EncodingError(f"{_name(typ)} is {len(data)} bytes, limit is {max_bytes}")
    dec = _decoders.get(typ)
    if dec is None:
        dec = msgspec.msgpack.Decoder(typ)
        _decoders[typ] = dec
    try:
        obj: T = dec.decode(data)
    except msgspec.ValidationError as exc:
        raise EncodingError(f"invalid {_name(typ)}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec raises UnicodeDecodeError for a str that is not UTF-8 and RecursionError
        # for over-deep nesting; both are malformed input, not crashes.
        raise EncodingError(f"malformed {_name(typ)}: {exc}") from None
    if _encoder.encode(obj) != bytes(data):
        raise EncodingError(f"non-canonical encoding of {_name(typ)}")
    return obj


def decode_trusted(data: bytes, typ: type[T]) -> T:
    """Typed decode of bytes this node wrote itself (its state store), without the canonical
    re-encoding check: that check guards hashes at trust boundaries, and state values never
    cross one. Still typed, so a corrupted store fails loudly rather than silently."""
    dec = _decoders.get(typ)
    if dec is None:
        dec = msgspec.msgpack.Decoder(typ)
        _decoders[typ] = dec
    try:
        out: T = dec.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise EncodingError(f"corrupt stored {_name(typ)}: {exc}") from None
    return out


def digest(obj: Any) -> bytes:
    """SHA-256 of the canonical encoding."""
    return hashlib.sha256(encode(obj)).digest()


def _name(typ: Any) -> str:
    return getattr(typ, "__name__", repr(typ))

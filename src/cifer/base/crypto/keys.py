"""Ed25519 keys (PyNaCl) and ``cif1...`` addresses.

Address = bech32("cif", first 20 bytes of SHA-256(pubkey)), as in DESIGN.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import bech32
import nacl.exceptions
import nacl.signing

ADDRESS_HRP = "cif"
PUBKEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32
ADDRESS_LEN = 20


class CryptoError(ValueError):
    """A key, signature or address is malformed or does not verify."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_bytes(pubkey: bytes) -> bytes:
    """The 20-byte account id of a public key."""
    if len(pubkey) != PUBKEY_LEN:
        raise CryptoError(f"public key must be {PUBKEY_LEN} bytes, got {len(pubkey)}")
    return sha256(pubkey)[:ADDRESS_LEN]


def to_bech32(raw: bytes, hrp: str = ADDRESS_HRP) -> str:
    if len(raw) != ADDRESS_LEN:
        raise CryptoError(f"address must be {ADDRESS_LEN} bytes, got {len(raw)}")
    data = bech32.convertbits(raw, 8, 5)
    if data is None:
        raise CryptoError("address bytes could not be converted to bech32")
    out: str = bech32.bech32_encode(hrp, data)
    return out


def from_bech32(text: str, hrp: str = ADDRESS_HRP) -> bytes:
    """Parse a ``cif1...`` address; reject a wrong prefix, checksum or length."""
    got_hrp, data = bech32.bech32_decode(text)
    if got_hrp is None or data is None:
        raise CryptoError(f"invalid bech32 address {text!r} (bad checksum or characters)")
    if got_hrp != hrp:
        raise CryptoError(f"address {text!r} has prefix {got_hrp!r}, expected {hrp!r}")
    raw = bech32.convertbits(data, 5, 8, False)
    if raw is None or len(raw) != ADDRESS_LEN:
        raise CryptoError(f"address {text!r} does not hold {ADDRESS_LEN} bytes")
    return bytes(raw)


def verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` by ``pubkey``."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.signing.VerifyKey(pubkey).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBKEY_LEN:
            raise CryptoError(f"public key must be {PUBKEY_LEN} bytes, got {len(self.raw)}")

    @property
    def address(self) -> bytes:
        return address_bytes(self.raw)

    @property
    def bech32(self) -> str:
        return to_bech32(self.address)

    def verify(self, message: bytes, signature: bytes) -> bool:
        return verify(self.raw, message, signature)


class PrivateKey:
    """An Ed25519 signing key. The seed never leaves this object except via :meth:`seed`."""

    __slots__ = ("_sk", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise CryptoError(f"Ed25519 seed must be {SEED_LEN} bytes, got {len(seed)}")
        self._sk = nacl.signing.SigningKey(seed)
        self.public = PublicKey(bytes(self._sk.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_secret(cls, secret: bytes | str) -> PrivateKey:
        """Deterministic key from a secret (tests, simulations, localnets). Not for real funds."""
        data = secret.encode() if isinstance(secret, str) else secret
        return cls(sha256(b"cifer/derive-key/v1" + data))

    def seed(self) -> bytes:
        return bytes(self._sk)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._sk.sign(message).signature)

    @property
    def address(self) -> bytes:
        return self.public.address

    def __repr__(self) -> str:
        return f"PrivateKey(address={self.public.bech32})"

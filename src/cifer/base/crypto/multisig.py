"""k-of-n Ed25519 multisig: a threshold over an ordered set of public keys.

The multisig account's address commits to the threshold and the sorted key set, so the same
members with a different threshold are a different account.
"""

from __future__ import annotations

import hashlib

import msgspec

from cifer.base.crypto.keys import ADDRESS_LEN, PUBKEY_LEN, CryptoError, verify

MAX_MULTISIG_KEYS = 16


class MultisigPolicy(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    threshold: int
    pubkeys: list[bytes]

    def validate(self) -> None:
        n = len(self.pubkeys)
        if not 1 <= n <= MAX_MULTISIG_KEYS:
            raise CryptoError(f"multisig needs 1..{MAX_MULTISIG_KEYS} keys, got {n}")
        if not 1 <= self.threshold <= n:
            raise CryptoError(f"multisig threshold {self.threshold} must be in 1..{n}")
        if any(len(k) != PUBKEY_LEN for k in self.pubkeys):
            raise CryptoError("multisig keys must be 32-byte Ed25519 public keys")
        if list(self.pubkeys) != sorted(set(self.pubkeys)):
            raise CryptoError("multisig keys must be sorted and distinct")

    @property
    def address(self) -> bytes:
        h = hashlib.sha256(b"cifer/multisig/v1" + bytes([self.threshold]))
        for k in self.pubkeys:
            h.update(k)
        return h.digest()[:ADDRESS_LEN]


def make_policy(threshold: int, pubkeys: list[bytes]) -> MultisigPolicy:
    policy = MultisigPolicy(threshold=threshold, pubkeys=sorted(set(pubkeys)))
    if len(policy.pubkeys) != len(pubkeys):
        raise CryptoError("multisig keys must be distinct")
    policy.validate()
    return policy


def verify_multisig(
    policy: MultisigPolicy, message: bytes, signatures: list[tuple[bytes, bytes]]
) -> None:
    """Check that at least ``threshold`` distinct members signed ``message``.

    ``signatures`` is a list of (pubkey, signature). Raises :class:`CryptoError` naming
    what is wrong; a signature by a non-member or a duplicate signer is an error, not ignored.
    """
    policy.validate()
    members = set(policy.pubkeys)
    seen: set[bytes] = set()
    for pubkey, sig in signatures:
        if pubkey not in members:
            raise CryptoError(f"signer {pubkey.hex()[:16]}... is not a member of the multisig")
        if pubkey in seen:
            raise CryptoError(f"signer {pubkey.hex()[:16]}... signed twice")
        if not verify(pubkey, message, sig):
            raise CryptoError(f"bad signature from multisig member {pubkey.hex()[:16]}...")
        seen.add(pubkey)
    if len(seen) < policy.threshold:
        raise CryptoError(f"multisig needs {policy.threshold} signatures, got {len(seen)}")

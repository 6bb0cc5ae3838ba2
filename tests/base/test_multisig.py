"""k-of-n Ed25519 multisig policies."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from cifer.base import encoding
from cifer.base.crypto.keys import CryptoError, PrivateKey, address_bytes
from cifer.base.crypto.multisig import (
    MAX_MULTISIG_KEYS,
    MultisigPolicy,
    make_policy,
    verify_multisig,
)

MSG = b"cifer/tx/v1 some body"
KEYS = [PrivateKey.from_secret(f"member-{i}") for i in range(5)]
PUBS = [k.public.raw for k in KEYS]
OUTSIDER = PrivateKey.from_secret("outsider")


def sigs(members: list[int], msg: bytes = MSG) -> list[tuple[bytes, bytes]]:
    return [(KEYS[i].public.raw, KEYS[i].sign(msg)) for i in members]


@pytest.fixture(scope="module")
def policy() -> MultisigPolicy:
    return make_policy(3, PUBS)


def test_exactly_threshold_signers_in_any_combination_ok(policy: MultisigPolicy) -> None:
    for combo in itertools.combinations(range(5), 3):
        verify_multisig(policy, MSG, sigs(list(combo)))
    verify_multisig(policy, MSG, sigs([4, 0, 2]))  # order does not matter
    verify_multisig(policy, MSG, sigs([0, 1, 2, 3]))
    verify_multisig(policy, MSG, sigs([0, 1, 2, 3, 4]))


def test_threshold_minus_one_fails_in_every_combination(policy: MultisigPolicy) -> None:
    for combo in itertools.combinations(range(5), 2):
        with pytest.raises(CryptoError, match="needs 3 signatures, got 2"):
            verify_multisig(policy, MSG, sigs(list(combo)))
    with pytest.raises(CryptoError, match="got 0"):
        verify_multisig(policy, MSG, [])


def test_non_member_rejected_even_with_enough_members(policy: MultisigPolicy) -> None:
    outsider = (OUTSIDER.public.raw, OUTSIDER.sign(MSG))
    with pytest.raises(CryptoError, match="not a member"):
        verify_multisig(policy, MSG, [*sigs([0, 1]), outsider])
    with pytest.raises(CryptoError, match="not a member"):
        verify_multisig(policy, MSG, [*sigs([0, 1, 2]), outsider])


def test_duplicate_signer_rejected(policy: MultisigPolicy) -> None:
    # Counting a duplicate would let 2 members reach a threshold of 3.
    with pytest.raises(CryptoError, match="signed twice"):
        verify_multisig(policy, MSG, [*sigs([0, 1]), *sigs([1])])
    with pytest.raises(CryptoError, match="signed twice"):
        verify_multisig(policy, MSG, [*sigs([0, 1, 2]), *sigs([0])])


def test_bad_signature_rejected_even_if_threshold_met(policy: MultisigPolicy) -> None:
    good = sigs([0, 1, 2])
    bad_sig = bytearray(KEYS[3].sign(MSG))
    bad_sig[10] ^= 1
    with pytest.raises(CryptoError, match="bad signature"):
        verify_multisig(policy, MSG, [*good, (PUBS[3], bytes(bad_sig))])
    # A member's valid signature over another message is also bad.
    with pytest.raises(CryptoError, match="bad signature"):
        verify_multisig(policy, MSG, [*sigs([0, 1]), *sigs([2], msg=b"other")])
    # A member's key paired with another member's signature.
    with pytest.raises(CryptoError, match="bad signature"):
        verify_multisig(policy, MSG, [*sigs([0, 1]), (PUBS[2], KEYS[3].sign(MSG))])


def test_signatures_bind_the_message(policy: MultisigPolicy) -> None:
    with pytest.raises(CryptoError):
        verify_multisig(policy, MSG + b"!", sigs([0, 1, 2]))


def test_one_of_one_and_n_of_n() -> None:
    p1 = make_policy(1, PUBS[:1])
    verify_multisig(p1, MSG, sigs([0]))
    with pytest.raises(CryptoError):
        verify_multisig(p1, MSG, [])
    p5 = make_policy(5, PUBS)
    verify_multisig(p5, MSG, sigs([0, 1, 2, 3, 4]))
    with pytest.raises(CryptoError):
        verify_multisig(p5, MSG, sigs([0, 1, 2, 3]))


# ---------------------------------------------------------------- policy validation


def test_make_policy_sorts_keys() -> None:
    p = make_policy(2, list(reversed(PUBS)))
    assert p.pubkeys == sorted(PUBS)
    assert p == make_policy(2, PUBS)


@pytest.mark.parametrize(
    "threshold,pubkeys,match",
    [
        (1, [], "needs 1..16 keys"),
        (1, [bytes([i]) * 32 for i in range(MAX_MULTISIG_KEYS + 1)], "needs 1..16 keys"),
        (0, PUBS, "threshold 0"),
        (-1, PUBS, "threshold -1"),
        (6, PUBS, "threshold 6"),
        (1, [PUBS[0][:31]], "32-byte"),
        (1, [PUBS[0] + b"\x00"], "32-byte"),
        (2, [PUBS[0], PUBS[0]], "distinct"),
    ],
)
def test_make_policy_rejects(threshold: int, pubkeys: list[bytes], match: str) -> None:
    with pytest.raises(CryptoError, match=match):
        make_policy(threshold, pubkeys)


def test_sixteen_keys_allowed() -> None:
    keys = [bytes([i]) * 32 for i in range(MAX_MULTISIG_KEYS)]
    make_policy(MAX_MULTISIG_KEYS, keys).validate()


def test_validate_rejects_unsorted_or_duplicate_direct_construction() -> None:
    unsorted = MultisigPolicy(2, sorted(PUBS, reverse=True))
    with pytest.raises(CryptoError, match="sorted and distinct"):
        unsorted.validate()
    dup = MultisigPolicy(2, sorted([PUBS[0], PUBS[0], PUBS[1]]))
    with pytest.raises(CryptoError, match="sorted and distinct"):
        dup.validate()


def test_verify_validates_the_policy() -> None:
    # An unsorted policy is never valid, even with enough good signatures.
    bad = MultisigPolicy(2, sorted(PUBS[:3], reverse=True))
    with pytest.raises(CryptoError, match="sorted"):
        verify_multisig(bad, MSG, sigs([0, 1, 2]))
    bad_threshold = MultisigPolicy(0, sorted(PUBS[:3]))
    with pytest.raises(CryptoError, match="threshold"):
        verify_multisig(bad_threshold, MSG, [])


# ---------------------------------------------------------------- addresses


def test_address_depends_on_threshold_and_members() -> None:
    addrs = {make_policy(t, PUBS).address for t in range(1, 6)}
    assert len(addrs) == 5
    assert make_policy(2, PUBS[:3]).address != make_policy(2, PUBS[1:4]).address
    assert make_policy(2, PUBS[:3]).address != make_policy(2, PUBS[:4]).address
    assert make_policy(2, PUBS[:3]).address == make_policy(2, PUBS[2::-1]).address


def test_address_known_formula() -> None:
    p = make_policy(2, PUBS[:3])
    h = hashlib.sha256(b"cifer/multisig/v1" + b"\x02" + b"".join(sorted(PUBS[:3]))).digest()
    assert p.address == h[:20]
    assert len(p.address) == 20


def test_address_differs_from_single_key_address() -> None:
    assert make_policy(1, PUBS[:1]).address != address_bytes(PUBS[0])


def test_policy_encoding_round_trip() -> None:
    p = make_policy(2, PUBS[:3])
    assert encoding.decode(encoding.encode(p), MultisigPolicy) == p

"""Ed25519 keys, signatures and bech32 ``cif1`` addresses."""

from __future__ import annotations

import hashlib

import bech32
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer.base.crypto import keys
from cifer.base.crypto.keys import (
    ADDRESS_LEN,
    CryptoError,
    PrivateKey,
    PublicKey,
    address_bytes,
    from_bech32,
    to_bech32,
    verify,
)

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

# RFC 8032, section 7.1, TEST 1 (empty message).
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b4"
    "6bd25bf5f0595bbe24655141438e7a100b"
)
# Order of the Ed25519 base point.
L = 2**252 + 27742317777372353535851937790883648493


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.from_secret("alice")


def flip_bit(data: bytes, i: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[i] ^= 1 << bit
    return bytes(b)


# ---------------------------------------------------------------- keys and signatures


def test_rfc8032_known_answer() -> None:
    k = PrivateKey(RFC_SEED)
    assert k.public.raw == RFC_PUB
    assert k.sign(b"") == RFC_SIG
    assert verify(RFC_PUB, b"", RFC_SIG)
    assert k.seed() == RFC_SEED


def test_address_is_first_20_bytes_of_sha256_of_pubkey() -> None:
    k = PrivateKey(RFC_SEED)
    expected = hashlib.sha256(RFC_PUB).digest()[:20]
    assert k.address == expected == k.public.address == address_bytes(RFC_PUB)
    assert len(k.address) == ADDRESS_LEN


def test_from_secret_is_deterministic_and_domain_separated() -> None:
    a1, a2 = PrivateKey.from_secret("alice"), PrivateKey.from_secret(b"alice")
    assert a1.seed() == a2.seed()
    assert a1.seed() == hashlib.sha256(b"cifer/derive-key/v1alice").digest()
    assert PrivateKey.from_secret("bob").seed() != a1.seed()
    # Not the raw secret hashed without the domain tag.
    assert a1.seed() != hashlib.sha256(b"alice").digest()


def test_generate_gives_fresh_keys_and_seed_round_trips() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert a.seed() != b.seed()
    assert len(a.seed()) == 32
    again = PrivateKey(a.seed())
    assert again.public == a.public
    assert again.sign(b"m") == a.sign(b"m")  # Ed25519 is deterministic


def test_repr_does_not_leak_seed(key: PrivateKey) -> None:
    text = repr(key)
    assert key.seed().hex() not in text
    assert key.public.bech32 in text


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_wrong_lengths_rejected(n: int) -> None:
    with pytest.raises(CryptoError):
        PrivateKey(b"\x01" * n)
    with pytest.raises(CryptoError):
        PublicKey(b"\x01" * n)
    with pytest.raises(CryptoError):
        address_bytes(b"\x01" * n)


def test_sign_verify(key: PrivateKey) -> None:
    msg = b"transfer 10 ucif"
    sig = key.sign(msg)
    assert len(sig) == 64
    assert key.public.verify(msg, sig)
    assert verify(key.public.raw, msg, sig)


def test_tampered_message_fails(key: PrivateKey) -> None:
    msg = b"transfer 10 ucif"
    sig = key.sign(msg)
    for i in range(len(msg)):
        assert not verify(key.public.raw, flip_bit(msg, i), sig)
    assert not verify(key.public.raw, msg + b"\x00", sig)
    assert not verify(key.public.raw, msg[:-1], sig)
    assert not verify(key.public.raw, b"", sig)


def test_tampered_signature_fails(key: PrivateKey) -> None:
    msg = b"hello"
    sig = key.sign(msg)
    for i in range(64):
        for bit in (0, 7):
            assert not verify(key.public.raw, msg, flip_bit(sig, i, bit)), (i, bit)
    assert not verify(key.public.raw, msg, sig[:-1])
    assert not verify(key.public.raw, msg, sig + b"\x00")
    assert not verify(key.public.raw, msg, b"")


def test_non_canonical_s_is_rejected(key: PrivateKey) -> None:
    # S + L is the same scalar mod L; a strict verifier must refuse it (malleability).
    msg = b"hello"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    s_plus_l = (s + L).to_bytes(32, "little")
    assert not verify(key.public.raw, msg, sig[:32] + s_plus_l)


def test_tampered_or_wrong_key_fails(key: PrivateKey) -> None:
    msg = b"hello"
    sig = key.sign(msg)
    other = PrivateKey.from_secret("bob")
    assert not verify(other.public.raw, msg, sig)
    for i in (0, 15, 31):
        assert not verify(flip_bit(key.public.raw, i), msg, sig)
    assert not verify(key.public.raw[:31], msg, sig)
    assert not verify(key.public.raw + b"\x00", msg, sig)


def test_invalid_points_and_small_order_keys_do_not_raise() -> None:
    # Identity point as public key with the trivial (R = identity, S = 0) signature: a
    # verifier that allows small-order keys would accept it for every message.
    identity = b"\x01" + b"\x00" * 31
    trivial_sig = identity + b"\x00" * 32
    assert not verify(identity, b"any message", trivial_sig)
    assert not verify(b"\x00" * 32, b"m", b"\x00" * 64)
    assert not verify(b"\xff" * 32, b"m", b"\xff" * 64)  # not a curve point


# ---------------------------------------------------------------- bech32 addresses


def test_bech32_shape(key: PrivateKey) -> None:
    text = key.public.bech32
    assert text.startswith("cif1")
    assert len(text) == 3 + 1 + 32 + 6  # hrp, separator, 160 bits / 5, checksum
    assert text == text.lower()
    assert set(text[4:]) <= set(CHARSET)
    assert from_bech32(text) == key.address


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_bech32_round_trip(raw: bytes) -> None:
    text = to_bech32(raw)
    assert from_bech32(text) == raw
    assert to_bech32(from_bech32(text)) == text


def test_bech32_known_answer() -> None:
    # Independent 8->5 bit regrouping of 20 zero bytes: 32 'q's, then the checksum.
    text = to_bech32(b"\x00" * 20)
    assert text[:36] == "cif1" + "q" * 32
    assert from_bech32(text) == b"\x00" * 20


def test_uppercase_is_accepted_mixed_case_is_not(key: PrivateKey) -> None:
    text = key.public.bech32
    assert from_bech32(text.upper()) == key.address  # BIP-173: all-uppercase is valid
    mixed = text[:6] + text[6].upper() + text[7:]
    if mixed != text:
        with pytest.raises(CryptoError):
            from_bech32(mixed)


@pytest.mark.parametrize("hrp", ["cosmos", "ci", "cifx", "cif2", "bc"])
def test_wrong_prefix_rejected(hrp: str, key: PrivateKey) -> None:
    text = to_bech32(key.address, hrp=hrp)
    with pytest.raises(CryptoError, match="prefix"):
        from_bech32(text)
    # ... but that prefix is accepted when asked for.
    assert from_bech32(text, hrp=hrp) == key.address


def test_every_single_character_substitution_fails_checksum(key: PrivateKey) -> None:
    text = key.public.bech32
    for i in range(4, len(text)):
        for c in CHARSET:
            if c == text[i]:
                continue
            bad = text[:i] + c + text[i + 1 :]
            with pytest.raises(CryptoError):
                from_bech32(bad)


def test_hrp_change_without_new_checksum_fails(key: PrivateKey) -> None:
    text = key.public.bech32
    with pytest.raises(CryptoError, match="checksum"):
        from_bech32("cix" + text[3:])


def test_adjacent_swap_fails(key: PrivateKey) -> None:
    text = key.public.bech32
    for i in range(4, len(text) - 1):
        if text[i] == text[i + 1]:
            continue
        bad = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        with pytest.raises(CryptoError):
            from_bech32(bad)


@pytest.mark.parametrize("n", [0, 1, 19, 21, 32])
def test_wrong_payload_length_rejected(n: int) -> None:
    text = bech32.bech32_encode("cif", bech32.convertbits(b"\x07" * n, 8, 5))
    with pytest.raises(CryptoError):
        from_bech32(text)
    with pytest.raises(CryptoError):
        to_bech32(b"\x07" * n)


def test_non_zero_padding_rejected() -> None:
    # 33 five-bit groups = 165 bits: 20 bytes plus 5 padding bits, which must not be accepted.
    data = [*bech32.convertbits(b"\x07" * 20, 8, 5), 0]
    with pytest.raises(CryptoError):
        from_bech32(bech32.bech32_encode("cif", data))


@pytest.mark.parametrize(
    "text", ["", "cif1", "cif", "1qqqqqq", "cif1 qqqq", "cif1bbbbbbbbbbbbbbbb", "ciƒ1qqqqqqqq"]
)
def test_garbage_addresses_rejected(text: str) -> None:
    with pytest.raises(CryptoError):
        from_bech32(text)


def test_address_helpers_agree(key: PrivateKey) -> None:
    assert keys.to_bech32(key.address) == key.public.bech32
    assert keys.sha256(b"x") == hashlib.sha256(b"x").digest()

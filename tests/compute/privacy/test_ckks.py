"""CKKS aggregation: validators cannot decrypt, aggregates are exact and deterministic, bad
or tampered uploads are refused or attributed to their sender, and FedAvg accuracy matches
plaintext."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from safetensors.numpy import save as st_save

from cifer.base.encoding import decode, encode
from cifer.compute.fl.data.datasets import load_dataset
from cifer.compute.fl.data.partition import partition
from cifer.compute.fl.trainers.numpy_models import NumpyLogReg
from cifer.compute.privacy.ckks import (
    FLOOD_STD,
    UPLOAD_MAGIC,
    AggregateHeader,
    CkksAccumulator,
    CkksError,
    CkksKeys,
    CkksParams,
    ContextInfo,
    KeyCheck,
    PublicContext,
    canary_values,
    check_keys,
    decrypt_aggregate,
    encrypt_update,
    read_upload_header,
)

JOB, ROUND = 7, 3
D = 2 * 4095 + 10  # three chunks, the last one short
ALICE, BOB, CAROL, MALLORY = (bytes([i]) * 20 for i in (1, 2, 3, 9))


@pytest.fixture(scope="module")
def keys() -> CkksKeys:
    return CkksKeys.generate()


@pytest.fixture(scope="module")
def public(keys: CkksKeys) -> PublicContext:
    return PublicContext(keys.info, keys.public_context)


@pytest.fixture(scope="module")
def updates() -> dict[bytes, np.ndarray[Any, np.dtype[np.float32]]]:
    rng = np.random.default_rng(0)
    return {s: (rng.standard_normal(D) * 0.05).astype(np.float32) for s in (ALICE, BOB, CAROL)}


@pytest.fixture(scope="module")
def blobs(keys: CkksKeys, updates: dict[bytes, Any]) -> dict[bytes, bytes]:
    return {
        s: encrypt_update(keys, x, job_id=JOB, round_=ROUND, sender=s) for s, x in updates.items()
    }


def _acc(public: PublicContext, **kw: Any) -> CkksAccumulator:
    return CkksAccumulator(public, job_id=JOB, round_=ROUND, n_params=D, **kw)


def _reframe(blob: bytes, chunks: bytes | None = None, **changes: Any) -> bytes:
    """Rewrite an upload's header (and optionally its ciphertext bytes), as a forger would."""
    h = read_upload_header(blob)
    body = blob[12 + len(encode(h)) :] if chunks is None else chunks
    new = encode(msgspec.structs.replace(h, **changes))
    return UPLOAD_MAGIC + struct.pack(">I", len(new)) + new + body


# --- parameters and contexts -----------------------------------------------------------


def test_default_params_are_valid_and_insecure_ones_refused() -> None:
    CkksParams().validate()
    bad = [
        (CkksParams(8192, (60, 60, 60, 60)), "128-bit"),
        (CkksParams(8192, (60, 40, 60), 30), "middle primes"),
        (CkksParams(6000, (60, 40, 60)), "poly_modulus_degree"),
        (CkksParams(8192, (60, 60)), "at least 3"),
        (CkksParams(8192, (60, 40, 50)), "special"),
    ]
    for params, reason in bad:
        with pytest.raises(CkksError, match=reason):
            params.validate()


def test_context_id_is_the_digest_of_the_public_description(keys: CkksKeys) -> None:
    assert keys.context_id == hashlib.sha256(encode(keys.info)).digest()
    assert keys.info.public_context_sha256 == hashlib.sha256(keys.public_context).digest()
    assert CkksKeys.generate().context_id != keys.context_id  # the id names the key pair


def test_validator_holds_no_secret_key_and_cannot_decrypt(
    public: PublicContext, blobs: dict[bytes, bytes]
) -> None:
    """A validator holding every ciphertext of the round, and their sum, decrypts none."""
    assert public.context.is_private() is False
    assert public.context.has_secret_key() is False
    acc = _acc(public)
    for s, b in blobs.items():
        acc.add(s, b)
    assert acc.public.context.is_private() is False
    agg = acc.result()
    hlen = struct.unpack(">I", agg[8:12])[0]
    sizes = decode(agg[12 : 12 + hlen], AggregateHeader).chunk_sizes
    chunks = [agg[12 + hlen : 12 + hlen + sizes[0]]]
    for b in blobs.values():
        h = read_upload_header(b)
        chunks.append(_body(b)[: h.chunk_sizes[0]])
    for data in chunks:
        vec = ts.ckks_vector_from(public.context, data)
        with pytest.raises(ValueError, match="secret"):
            vec.decrypt()
    with pytest.raises(CkksError, match="secret key"):
        CkksKeys(public.params, public.context)


def test_public_context_checks(keys: CkksKeys) -> None:
    with pytest.raises(CkksError, match="do not match the hash"):
        PublicContext(keys.info, keys.public_context + b"x")
    secret = keys.context.serialize(save_secret_key=True)
    as_info = ContextInfo("ckks/1", keys.params, hashlib.sha256(secret).digest())
    with pytest.raises(CkksError, match="secret key"):
        PublicContext(as_info, secret)
    other = CkksKeys.generate(CkksParams(8192, (60, 30, 60), 30))
    lying = ContextInfo("ckks/1", CkksParams(), other.info.public_context_sha256)
    with pytest.raises(CkksError, match="other encryption parameters"):
        PublicContext(lying, other.public_context)


# --- key sharing -------------------------------------------------------------------------


def test_key_share_round_trip_and_refusals(keys: CkksKeys) -> None:
    bob = X25519PrivateKey.generate()
    bob_pub = bob.public_key().public_bytes_raw()
    share = keys.share(job_id=JOB, recipient=bob_pub)
    assert keys.public_context not in share.sealed  # sealed, not merely wrapped
    got = CkksKeys.open_share(share, job_id=JOB, private_key=bob, info=keys.info)
    assert got.context_id == keys.context_id and got.context.is_private()
    vec = ts.ckks_vector(keys.context, [1.25, -2.5])
    assert np.allclose(ts.ckks_vector_from(got.context, vec.serialize()).decrypt(), [1.25, -2.5])

    with pytest.raises(CkksError, match="another recipient"):
        CkksKeys.open_share(
            share, job_id=JOB, private_key=X25519PrivateKey.generate(), info=keys.info
        )
    with pytest.raises(CkksError, match="job 7, not job 8"):
        CkksKeys.open_share(share, job_id=8, private_key=bob, info=keys.info)
    tampered = msgspec.structs.replace(
        share, sealed=share.sealed[:-1] + bytes([share.sealed[-1] ^ 1])
    )
    with pytest.raises(CkksError, match="does not open"):
        CkksKeys.open_share(tampered, job_id=JOB, private_key=bob, info=keys.info)
    other = CkksKeys.generate()
    with pytest.raises(CkksError, match="key share is for context"):
        CkksKeys.open_share(share, job_id=JOB, private_key=bob, info=other.info)
    # a share re-labelled for another job does not open: the job is in the associated data
    relabelled = msgspec.structs.replace(share, job_id=8)
    with pytest.raises(CkksError, match="does not open"):
        CkksKeys.open_share(relabelled, job_id=8, private_key=bob, info=keys.info)


# --- aggregation ---------------------------------------------------------------------------


def test_weighted_aggregate_matches_plaintext(
    keys: CkksKeys, public: PublicContext, updates: dict[bytes, Any], blobs: dict[bytes, bytes]
) -> None:
    weights = {ALICE: 600, BOB: 1, CAROL: 123_457}
    acc = _acc(public)
    for s, b in blobs.items():
        acc.add(s, b, weight=weights[s], expected_sha256=hashlib.sha256(b).digest())
    res = decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=ROUND, n_params=D)
    want = sum(weights[s] * updates[s].astype(np.float64) for s in updates) / sum(weights.values())
    assert res.mean.dtype == np.float32 and res.mean.shape == (D,)
    assert np.abs(res.mean - want).max() < 1e-6
    assert res.total_weight == sum(weights.values())
    assert res.senders == (ALICE, BOB, CAROL) and res.weights == (600, 1, 123_457)
    assert check_keys(keys, acc.key_checks(), job_id=JOB, round_=ROUND, n_params=D) == []


def test_aggregate_bytes_do_not_depend_on_arrival_order(
    public: PublicContext, blobs: dict[bytes, bytes]
) -> None:
    weights = {ALICE: 3, BOB: 5, CAROL: 1}
    results = []
    for order in ([ALICE, BOB, CAROL], [CAROL, ALICE, BOB]):
        acc = _acc(public, key_checks=False)
        for s in order:
            acc.add(s, blobs[s], weight=weights[s])
        results.append(acc.result())
    assert results[0] == results[1]
    acc = _acc(public, key_checks=False)
    for s in (ALICE, BOB, CAROL):
        acc.add(s, blobs[s], weight=weights[s] + 1)
    assert acc.result() != results[0]


def test_refused_upload_leaves_the_sum_unchanged(
    keys: CkksKeys, public: PublicContext, updates: dict[bytes, Any], blobs: dict[bytes, bytes]
) -> None:
    acc = _acc(public)
    acc.add(ALICE, blobs[ALICE])
    sizes = read_upload_header(blobs[BOB]).chunk_sizes
    junk = np.random.default_rng(2).bytes(sizes[-1])  # chunks 0 and 1 parse, chunk 2 does not
    broken = _reframe(blobs[BOB], chunks=_body(blobs[BOB])[: -sizes[-1]] + junk)
    with pytest.raises(CkksError, match="chunk 2 is not a ciphertext") as err:
        acc.add(BOB, broken)
    assert err.value.sender == BOB
    acc.add(CAROL, blobs[CAROL])
    res = decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=ROUND)
    want = (updates[ALICE].astype(np.float64) + updates[CAROL]) / 2
    assert np.abs(res.mean - want).max() < 1e-6 and res.senders == (ALICE, CAROL)


def _body(blob: bytes) -> bytes:
    h = read_upload_header(blob)
    return blob[12 + len(encode(h)) :]


def _two_chunks(blob: bytes) -> tuple[int, int]:
    sizes = read_upload_header(blob).chunk_sizes
    return sizes[0], sum(sizes[1:])


# --- refusals with reasons ------------------------------------------------------------------


def test_bad_uploads_are_refused_with_a_reason_naming_the_sender(
    keys: CkksKeys, public: PublicContext, updates: dict[bytes, Any], blobs: dict[bytes, bytes]
) -> None:
    x = updates[ALICE]
    other_params = CkksKeys.generate(CkksParams(8192, (60, 40, 40, 60)))
    other_key = CkksKeys.generate()
    good = blobs[ALICE]
    agg_acc = _acc(public, key_checks=False)
    agg_acc.add(ALICE, good)
    cases: list[tuple[bytes, bytes, str, dict[str, Any]]] = [
        (ALICE, st_save({"w": x}), r"plaintext \(safetensors\) update", {}),
        (
            ALICE,
            encrypt_update(other_params, x, job_id=JOB, round_=ROUND, sender=ALICE),
            "encrypted under context .*, job uses",
            {},
        ),
        (
            ALICE,
            encrypt_update(other_key, x, job_id=JOB, round_=ROUND, sender=ALICE),
            "encrypted under context",
            {},
        ),
        (ALICE, encrypt_update(keys, x, job_id=JOB, round_=ROUND + 1, sender=ALICE), "round 4", {}),
        (
            ALICE,
            encrypt_update(keys, x[:-1], job_id=JOB, round_=ROUND, sender=ALICE),
            "parameters",
            {},
        ),
        (BOB, good, "header names sender", {}),
        (ALICE, good[:-5], "announces", {}),
        (ALICE, _reframe(good, chunk_sizes=_two_chunks(good)), "has 2 chunks, .* need 3", {}),
        (ALICE, agg_acc.result(), "got a ckks aggregate", {}),
        (ALICE, b"\x00" * 40, "unknown format", {}),
        (ALICE, good, "does not hash", {"expected_sha256": b"\x00" * 32}),
        (ALICE, good, "weight must be", {"weight": 0}),
    ]
    for sender, blob, reason, kw in cases:
        acc = _acc(public)
        with pytest.raises(CkksError, match=reason) as err:
            acc.add(sender, blob, **kw)
        assert err.value.sender == sender, reason
        assert sender.hex() in str(err.value)
    acc = _acc(public)
    acc.add(ALICE, good)
    with pytest.raises(CkksError, match="already added"):
        acc.add(ALICE, good)


def test_ciphertext_under_another_modulus_with_a_forged_header_is_refused(
    keys: CkksKeys, public: PublicContext, updates: dict[bytes, Any]
) -> None:
    # Same N, chunk length and byte size, other primes: only the ciphertext tells.
    other = CkksKeys.generate(CkksParams(8192, (60, 30, 60), 30))
    blob = encrypt_update(other, updates[ALICE], job_id=JOB, round_=ROUND, sender=ALICE)
    forged = _reframe(blob, context_id=keys.context_id, scale_bits=40)
    with pytest.raises(CkksError, match="wrong modulus") as err:
        _acc(public).add(ALICE, forged)
    assert err.value.sender == ALICE


def test_undeserializable_chunk_is_refused(
    public: PublicContext, blobs: dict[bytes, bytes]
) -> None:
    body = _body(blobs[ALICE])
    h = read_upload_header(blobs[ALICE])
    junk = np.random.default_rng(1).bytes(h.chunk_sizes[0])
    with pytest.raises(CkksError, match="chunk 0 is not a ciphertext"):
        _acc(public).add(ALICE, _reframe(blobs[ALICE], chunks=junk + body[h.chunk_sizes[0] :]))


def test_encrypt_refuses_bad_vectors(keys: CkksKeys) -> None:
    for bad, reason in [
        (np.zeros((2, 2), np.float32), "flat"),
        (np.array([1.0, np.nan], np.float32), "NaN"),
        (np.array([1e6], np.float32), "2\\^16"),
        (np.array([1, 2]), "float"),
    ]:
        with pytest.raises(CkksError, match=reason):
            encrypt_update(keys, bad, job_id=JOB, round_=ROUND, sender=ALICE)


# --- wrong keys and tampering: detected and attributed --------------------------------------


def test_wrong_key_upload_is_caught_and_attributed(
    keys: CkksKeys, public: PublicContext, updates: dict[bytes, Any], blobs: dict[bytes, bytes]
) -> None:
    stale = CkksKeys.generate()  # same parameters, another secret key
    bad = encrypt_update(stale, updates[ALICE], job_id=JOB, round_=ROUND, sender=MALLORY)
    acc = _acc(public)
    acc.add(ALICE, blobs[ALICE])
    acc.add(MALLORY, _reframe(bad, context_id=keys.context_id))  # validators cannot tell
    acc.add(BOB, blobs[BOB])
    with pytest.raises(CkksError, match="canary mismatch in chunks \\[0, 1, 2\\]"):
        decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=ROUND)
    assert check_keys(keys, acc.key_checks(), job_id=JOB, round_=ROUND, n_params=D) == [MALLORY]


def test_replayed_upload_is_caught_and_attributed(
    keys: CkksKeys, public: PublicContext, blobs: dict[bytes, bytes]
) -> None:
    """Mallory re-submits Alice's ciphertexts as her own: her canaries are Alice's."""
    acc = _acc(public)
    acc.add(ALICE, blobs[ALICE])
    acc.add(MALLORY, _reframe(blobs[ALICE], sender=MALLORY))
    with pytest.raises(CkksError, match="canary mismatch"):
        decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=ROUND)
    assert check_keys(keys, acc.key_checks(), job_id=JOB, round_=ROUND, n_params=D) == [MALLORY]


@pytest.mark.parametrize("where", [0.1, 0.5, 0.97])
def test_tampered_ciphertext_is_refused_or_attributed(
    keys: CkksKeys, public: PublicContext, blobs: dict[bytes, bytes], where: float
) -> None:
    body = bytearray(_body(blobs[BOB]))
    pos = int(len(body) * where)
    body[pos] ^= 0x10
    tampered = _reframe(blobs[BOB], chunks=bytes(body))
    acc = _acc(public)
    acc.add(ALICE, blobs[ALICE])
    try:
        acc.add(BOB, tampered)
    except CkksError as err:
        assert err.sender == BOB
        return
    with pytest.raises(CkksError, match="canary mismatch"):
        decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=ROUND)
    assert check_keys(keys, acc.key_checks(), job_id=JOB, round_=ROUND, n_params=D) == [BOB]


def test_key_check_reveals_the_canary_and_floods_the_rest(
    keys: CkksKeys, public: PublicContext
) -> None:
    x = np.linspace(-1000.0, 1000.0, D).astype(np.float32)  # large data, to be hidden
    acc = _acc(public)
    acc.add(ALICE, encrypt_update(keys, x, job_id=JOB, round_=ROUND, sender=ALICE))
    raw = acc.key_check(ALICE)
    assert acc.key_check(ALICE) == raw  # made once: fresh floods could be averaged away
    kc = decode(raw, KeyCheck)
    vals = np.asarray(ts.ckks_vector_from(keys.context, kc.ciphertext).decrypt())
    assert abs(vals[-1] - canary_values(JOB, ROUND, ALICE, 3).sum()) < 1e-3
    rest = vals[:-1]
    assert 0.9 * FLOOD_STD < rest.std() < 1.1 * FLOOD_STD
    assert abs(np.corrcoef(rest, x[:4095] + x[4095:8190])[0, 1]) < 0.1


def test_forged_key_checks_fail(
    keys: CkksKeys, public: PublicContext, blobs: dict[bytes, bytes]
) -> None:
    acc = _acc(public)
    acc.add(ALICE, blobs[ALICE])
    raw = acc.key_check(ALICE)
    # Alice's check presented as Bob's, a check for another round, and junk all fail
    checks = {BOB: raw, CAROL: b"junk", ALICE: raw}
    assert check_keys(keys, checks, job_id=JOB, round_=ROUND, n_params=D) == [BOB, CAROL]
    assert check_keys(keys, {ALICE: raw}, job_id=JOB, round_=ROUND + 1, n_params=D) == [ALICE]


# --- accuracy -----------------------------------------------------------------------------


def test_fedavg_with_ckks_matches_plaintext_accuracy(keys: CkksKeys, public: PublicContext) -> None:
    """Same seed, same data: CKKS FedAvg ends within 0.1 accuracy points of plaintext."""
    train, test = load_dataset("digits")
    parts = partition(train.y, 4, "iid", seed=0)
    senders = [bytes([i + 1]) * 20 for i in range(4)]

    def run(encrypted: bool) -> float:
        model = NumpyLogReg(train.input_shape, 10, seed=0)
        w = model.get_flat()
        for rnd in range(3):
            rng = np.random.default_rng(rnd)
            deltas, counts = [], []
            for idx in parts:
                model.set_flat(w)
                model.fit(train.x[idx], train.y[idx], epochs=1, batch_size=32, lr=0.3, rng=rng)
                deltas.append(model.get_flat() - w)
                counts.append(len(idx))
            if encrypted:
                acc = CkksAccumulator(public, job_id=JOB, round_=rnd, n_params=w.size)
                for s, dlt, n in zip(senders, deltas, counts, strict=True):
                    acc.add(
                        s, encrypt_update(keys, dlt, job_id=JOB, round_=rnd, sender=s), weight=n
                    )
                mean = decrypt_aggregate(keys, acc.result(), job_id=JOB, round_=rnd).mean
            else:
                stacked = np.stack(deltas).astype(np.float64)
                mean = (np.asarray(counts, np.float64) @ stacked / sum(counts)).astype(np.float32)
            w = (w + mean).astype(np.float32)
        model.set_flat(w)
        return float(model.evaluate(test.x, test.y)["accuracy"])

    plain, enc = run(False), run(True)
    assert plain > 0.8
    assert abs(plain - enc) <= 0.001

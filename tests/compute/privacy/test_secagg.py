"""Secure aggregation end to end: exact sums under dropouts, what a validator sees, attribution
of tampering, and refusal of bad input. Client randomness is seeded so every run is the same."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray
from scipy import stats

from cifer.base.encoding import EncodingError, decode, encode
from cifer.compute.privacy import shamir
from cifer.compute.privacy.prg import expand
from cifer.compute.privacy.quantize import from_group
from cifer.compute.privacy.secagg import (
    BAD_CIPHERTEXT,
    BAD_SHARE,
    FALSE_COMPLAINT,
    INCONSISTENT_DEALER,
    TAMPERED_SHARE,
    AdvertiseKeys,
    InsufficientShares,
    MaskedInput,
    MessageError,
    ParamsError,
    PrivacyRefusal,
    RevealedShare,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggRound,
    SecAggServer,
    ShareComplaint,
    ShareKeys,
    UnmaskFailed,
    UnmaskResult,
    UnmaskShares,
    aggregate,
    check_unmask,
    seed_commitment,
)

Levels = NDArray[np.int64]


def make_round(
    n: int = 8,
    degree: int = 4,
    threshold: int = 2,
    length: int = 64,
    *,
    modulus_bits: int = 32,
    value_bits: int = 16,
    seed: bytes = bytes(range(32)),
) -> SecAggRound:
    params = SecAggParams(threshold, degree, modulus_bits, value_bits)
    roster = [b"client-%02d" % i for i in range(n)]
    return SecAggRound(params, job_id=7, round=3, seed=seed, roster=roster, length=length)


class Session:
    """Drives one round phase by phase so a test can drop or tamper between phases."""

    def __init__(self, rnd: SecAggRound, rng_seed: int = 1) -> None:
        self.rnd = rnd
        r = random.Random(rng_seed)
        self.clients = [SecAggClient(rnd, c, randbytes=r.randbytes) for c in rnd.roster]
        gen = np.random.default_rng(rng_seed)
        lim = (1 << (rnd.params.value_bits - 1)) - 1
        self.levels: list[Levels] = [
            gen.integers(-lim, lim + 1, rnd.length, dtype=np.int64) for _ in rnd.roster
        ]
        self.adverts: list[AdvertiseKeys] = []
        self.share_keys: list[ShareKeys] = []
        self.complaints: list[ShareComplaint] = []
        self.masked: list[MaskedInput] = []
        self.reveals: list[UnmaskShares] = []

    def advertise(self) -> Session:
        self.adverts = [c.advertise() for c in self.clients]
        return self

    def share(self) -> Session:
        self.share_keys = [c.share_keys(self.adverts) for c in self.clients]
        return self

    def receive(self) -> Session:
        for c in self.clients:
            self.complaints += c.receive_shares(self.share_keys)
        return self

    def mask(self, drop: Iterable[int] = ()) -> Session:
        gone = set(drop)
        self.masked = [
            c.masked_input(self.levels[c.index]) for c in self.clients if c.index not in gone
        ]
        return self

    def unmask(self, drop: Iterable[int] = ()) -> Session:
        gone = set(drop)
        survivors = [m.sender for m in self.masked]
        self.reveals = [
            c.unmask(survivors)
            for c in self.clients
            if c.client_id in survivors and c.index not in gone
        ]
        return self

    def run(self, before_input: Iterable[int] = (), before_unmask: Iterable[int] = ()) -> Session:
        return self.advertise().share().receive().mask(before_input).unmask(before_unmask)

    def finish(self) -> UnmaskResult:
        return aggregate(self.rnd, self.adverts, self.share_keys, self.masked, self.reveals)

    def expected(self, dropped_before_input: Iterable[int] = ()) -> Levels:
        gone = set(dropped_before_input)
        return np.sum([lv for i, lv in enumerate(self.levels) if i not in gone], axis=0)


def concentrated(rnd: SecAggRound, count: int, around: int = 0) -> list[int]:
    """The worst dropouts for ``around``: ``count`` of its own neighbours."""
    return list(rnd.neighbours[around][:count])


# ---------------------------------------------------------------------------- exact sums


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "bits"),
    [(6, 5, 3, 32), (10, 4, 2, 32), (9, 4, 3, 64), (12, 6, 4, 24)],
    ids=["classic", "sparse", "modulus-2^64", "modulus-2^24"],
)
def test_exact_sum_without_dropouts(n: int, degree: int, threshold: int, bits: int) -> None:
    s = Session(make_round(n, degree, threshold, modulus_bits=bits)).run()
    res = s.finish()
    assert np.array_equal(res.levels, s.expected())
    assert res.survivors == s.rnd.roster and res.dropped == () and res.verdicts == ()


def test_exact_sum_with_one_dropout_before_masked_input() -> None:
    s = Session(make_round(10, 4, 2)).run(before_input=[3])
    res = s.finish()
    assert np.array_equal(res.levels, s.expected([3]))
    assert res.dropped == (s.rnd.roster[3],)
    # the neighbours of the dropped client revealed its mask key, everyone else seeds only
    kinds = {(u.sender, r.dealer): r.kind for u in s.reveals for r in u.shares}
    assert {k for (_, d), k in kinds.items() if d == s.rnd.roster[3]} == {"key"}
    assert {k for (_, d), k in kinds.items() if d != s.rnd.roster[3]} == {"seed"}


def test_exact_sum_with_one_dropout_after_masked_input() -> None:
    s = Session(make_round(10, 4, 2)).run(before_unmask=[5])
    res = s.finish()
    assert np.array_equal(res.levels, s.expected())  # its input counts: it was masked in
    assert res.dropped == ()


@pytest.mark.parametrize(("n", "degree", "threshold"), [(7, 6, 3), (12, 6, 3), (16, 8, 5)], ids=str)
def test_exact_sum_with_max_dropouts(n: int, degree: int, threshold: int) -> None:
    rnd = make_round(n, degree, threshold)
    drop = concentrated(rnd, rnd.max_dropouts())
    assert len(drop) == degree - threshold >= 2
    early, late = drop[: len(drop) // 2], drop[len(drop) // 2 :]
    s = Session(rnd).run(before_input=early, before_unmask=late)
    res = s.finish()
    assert np.array_equal(res.levels, s.expected(early))
    assert res.dropped == tuple(rnd.roster[i] for i in sorted(early))


@pytest.mark.parametrize("late", [False, True], ids=["before-input", "after-input"])
def test_one_more_dropout_fails_cleanly(late: bool) -> None:
    rnd = make_round(12, 6, 3)
    drop = concentrated(rnd, rnd.max_dropouts() + 1)
    s = Session(rnd)
    s.run(before_unmask=drop) if late else s.run(before_input=drop)
    with pytest.raises(InsufficientShares) as info:
        s.finish()
    err = info.value
    assert err.dealer == rnd.roster[0] and err.kind == "seed"
    assert (err.available, err.needed) == (rnd.threshold - 1, rnd.threshold)
    assert f"{rnd.threshold - 1} valid shares available, {rnd.threshold} needed" in str(err)


def test_float_updates_round_trip_through_quantization() -> None:
    rnd = make_round(6, 5, 3, length=500)
    s = Session(rnd)
    q = rnd.quantizer()
    gen = np.random.default_rng(5)
    xs = [gen.normal(0, 0.3, rnd.length).astype(np.float32) for _ in rnd.roster]
    s.levels = [q.quantize(x) for x in xs]
    res = s.run().finish()
    assert np.array_equal(res.levels, np.sum(s.levels, axis=0))
    mean = res.mean(q)
    clipped = np.clip(np.stack(xs).astype(np.float64), -q.clip, q.clip).mean(axis=0)
    assert np.max(np.abs(mean - clipped)) <= 0.5 / q.scale + 1e-12


def test_sum_does_not_depend_on_message_order() -> None:
    s = Session(make_round(10, 4, 2)).run(before_input=[1])
    a = aggregate(s.rnd, s.adverts, s.share_keys, s.masked, s.reveals)
    b = aggregate(s.rnd, s.adverts[::-1], s.share_keys[::-1], s.masked[::-1], s.reveals[::-1])
    assert np.array_equal(a.levels, b.levels)
    assert (a.survivors, a.dropped, a.verdicts) == (b.survivors, b.dropped, b.verdicts)


def test_messages_survive_canonical_encoding() -> None:
    s = Session(make_round(6, 5, 3)).run(before_input=[2])
    for msg in [*s.adverts, *s.share_keys, *s.masked, *s.reveals]:
        assert decode(encode(msg), type(msg)) == msg
    decoded = [decode(encode(m), MaskedInput) for m in s.masked]
    res = aggregate(s.rnd, s.adverts, s.share_keys, decoded, s.reveals)
    assert np.array_equal(res.levels, s.expected([2]))


# ---------------------------------------------------------------------------- what a validator sees


def byte_uniformity_p(vec: NDArray[Any]) -> float:
    counts = np.bincount(np.frombuffer(vec.tobytes(), dtype=np.uint8), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def masked_vector(msg: MaskedInput) -> NDArray[np.uint32]:
    return np.frombuffer(msg.data, dtype="<u4").astype(np.uint32)


def test_masked_input_is_uniform_even_after_the_self_mask_is_removed() -> None:
    """After unmasking a validator knows every survivor's self-mask seed; what is left of one
    client's vector is still covered by pairwise masks, and looks uniform."""
    rnd = make_round(5, 4, 2, length=1 << 14)
    s = Session(rnd)
    s.levels = [np.full(rnd.length, 1000, dtype=np.int64) for _ in rnd.roster]  # far from uniform
    s.run()
    assert byte_uniformity_p(s.levels[0].astype(np.uint32)) < 1e-12  # the control
    y0 = masked_vector(s.masked[0])
    assert byte_uniformity_p(y0) > 1e-4
    # the validator's view: reconstruct client 0's seed from the revealed shares
    pts = [
        (rnd.index[u.sender] + 1, shamir.share_from_bytes(r.share))
        for u in s.reveals
        for r in u.shares
        if r.dealer == rnd.roster[0]
    ]
    seed = shamir.reconstruct(pts[: rnd.threshold]).to_bytes(32, "big")
    assert seed_commitment(rnd, 0, seed) == s.share_keys[0].seed_commitment
    without_self_mask = y0 - expand(seed, rnd.length, 32)
    assert byte_uniformity_p(without_self_mask) > 1e-4
    # and nothing of the input shows through: residues mod 7 are uniform too
    residues = np.bincount(without_self_mask % 7, minlength=7)
    assert stats.chisquare(residues).pvalue > 1e-4
    assert np.array_equal(s.finish().levels, s.expected())


def test_masked_inputs_of_different_updates_are_indistinguishable() -> None:
    rnd = make_round(5, 4, 2, length=1 << 14)
    lim = (1 << (rnd.params.value_bits - 1)) - 1
    views = []
    for rng_seed, value in [(11, 0), (12, lim)]:
        s = Session(rnd, rng_seed)
        s.levels = [np.full(rnd.length, value, dtype=np.int64) for _ in rnd.roster]
        s.run()
        views.append(masked_vector(s.masked[0]))

    def table(vs: Sequence[NDArray[Any]]) -> NDArray[np.int64]:
        return np.stack(
            [np.bincount(np.frombuffer(v.tobytes(), np.uint8), minlength=256) for v in vs]
        )

    assert stats.chi2_contingency(table(views)).pvalue > 1e-4
    plain = [np.full(rnd.length, v, dtype=np.uint32) for v in (1, lim)]
    assert stats.chi2_contingency(table(plain) + 1).pvalue < 1e-12  # the control


# ---------------------------------------------------------------------------- attribution


def test_tampered_revealed_share_is_attributed_to_the_revealer() -> None:
    s = Session(make_round(7, 6, 3)).run()
    bad = s.reveals[2]
    share = bad.shares[0]
    forged = (shamir.share_from_bytes(share.share) + 1) % shamir.PRIME
    s.reveals[2] = msgspec.structs.replace(
        bad,
        shares=(
            msgspec.structs.replace(share, share=shamir.share_to_bytes(forged)),
            *bad.shares[1:],
        ),
    )
    res = s.finish()  # enough honest shares remain
    assert np.array_equal(res.levels, s.expected())
    assert [(v.client, v.offence) for v in res.verdicts] == [(bad.sender, TAMPERED_SHARE)]
    assert share.dealer.hex() in res.verdicts[0].detail


def test_tampering_that_leaves_too_few_shares_fails_and_names_the_revealer() -> None:
    rnd = make_round(8, 4, 4)  # threshold = degree: no spare shares
    s = Session(rnd).run()
    holder = rnd.neighbours[0][0]
    k = next(i for i, u in enumerate(s.reveals) if u.sender == rnd.roster[holder])
    u = s.reveals[k]
    shares = tuple(
        msgspec.structs.replace(r, share=shamir.share_to_bytes(7))
        if r.dealer == rnd.roster[0]
        else r
        for r in u.shares
    )
    s.reveals[k] = msgspec.structs.replace(u, shares=shares)
    with pytest.raises(InsufficientShares) as info:
        s.finish()
    assert info.value.dealer == rnd.roster[0] and info.value.available == 3
    assert [(v.client, v.offence) for v in info.value.verdicts] == [
        (rnd.roster[holder], TAMPERED_SHARE)
    ]


def test_dealer_whose_shares_do_not_match_its_seed_commitment_is_blamed() -> None:
    s = Session(make_round(7, 6, 3)).advertise().share()
    liar = s.clients[4]
    forged = msgspec.structs.replace(
        s.share_keys[4], seed_commitment=seed_commitment(s.rnd, 4, bytes(32))
    )
    s.share_keys[4] = forged
    liar._share_msg = forged  # the dealer itself publishes the forged commitment
    s.receive().mask().unmask()
    with pytest.raises(UnmaskFailed) as info:
        s.finish()
    assert [(v.client, v.offence) for v in info.value.verdicts] == [
        (s.rnd.roster[4], INCONSISTENT_DEALER)
    ]


def test_dealer_sharing_a_key_other_than_its_advertised_one_is_blamed() -> None:
    s = Session(make_round(7, 6, 3)).advertise()
    s.clients[2]._mask_sk = X25519PrivateKey.generate()  # shares a key it did not advertise
    s.share().receive().mask(drop=[2]).unmask()  # and drops, so its key is reconstructed
    with pytest.raises(UnmaskFailed) as info:
        s.finish()
    assert [(v.client, v.offence) for v in info.value.verdicts] == [
        (s.rnd.roster[2], INCONSISTENT_DEALER)
    ]
    assert "mask key" in info.value.verdicts[0].detail


def _tamper_dealt_share(s: Session, dealer: int, holder: int, **changes: Any) -> None:
    msg = s.share_keys[dealer]
    shares = tuple(
        msgspec.structs.replace(e, **changes) if e.holder == s.rnd.roster[holder] else e
        for e in msg.shares
    )
    s.share_keys[dealer] = msgspec.structs.replace(msg, shares=shares)
    s.clients[dealer]._share_msg = s.share_keys[dealer]  # signed on chain by the dealer


def test_undecryptable_share_is_provably_the_dealers_fault() -> None:
    rnd = make_round(7, 6, 3)
    s = Session(rnd).advertise().share()
    ct = bytearray(next(e.ciphertext for e in s.share_keys[1].shares if e.holder == rnd.roster[5]))
    ct[10] ^= 1
    _tamper_dealt_share(s, 1, 5, ciphertext=bytes(ct))
    s.receive()
    assert [(c.sender, c.dealer) for c in s.complaints] == [(rnd.roster[5], rnd.roster[1])]
    server = SecAggServer(rnd)
    for a in s.adverts:
        server.add_advertise(a)
    for m in s.share_keys:
        server.add_share_keys(m)
    verdict = server.judge(s.complaints[0])
    assert (verdict.client, verdict.offence) == (rnd.roster[1], BAD_CIPHERTEXT)
    # the round still completes: client 5 simply holds no share of client 1
    s.mask().unmask()
    assert all(r.dealer != rnd.roster[1] for r in s.reveals[5].shares)
    assert np.array_equal(s.finish().levels, s.expected())


def test_share_not_matching_its_commitment_is_the_dealers_fault() -> None:
    rnd = make_round(7, 6, 3)
    s = Session(rnd).advertise().share()
    _tamper_dealt_share(s, 0, 3, key_commitment=bytes(32))
    s.receive()
    assert len(s.complaints) == 1
    server = SecAggServer(rnd)
    for a in s.adverts:
        server.add_advertise(a)
    for m in s.share_keys:
        server.add_share_keys(m)
    verdict = server.judge(s.complaints[0])
    assert (verdict.client, verdict.offence) == (rnd.roster[0], BAD_SHARE)


def test_false_complaints_are_attributed_to_the_complainant() -> None:
    rnd = make_round(7, 6, 3)
    s = Session(rnd).run()
    server = SecAggServer(rnd)
    for a in s.adverts:
        server.add_advertise(a)
    for m in s.share_keys:
        server.add_share_keys(m)
    honest_key = s.clients[3]._recv_sk[2].private_bytes_raw()
    fine = ShareComplaint(7, 3, rnd.roster[3], rnd.roster[2], honest_key)
    v = server.judge(fine)
    assert (v.client, v.offence) == (rnd.roster[3], FALSE_COMPLAINT)
    assert "matches" in v.detail
    wrong = ShareComplaint(7, 3, rnd.roster[3], rnd.roster[2], bytes(range(32)))
    v = server.judge(wrong)
    assert (v.client, v.offence) == (rnd.roster[3], FALSE_COMPLAINT)
    assert "advertised" in v.detail


# ---------------------------------------------------------------------------- privacy guards


def test_a_client_reveals_once() -> None:
    s = Session(make_round(6, 5, 3)).run()
    with pytest.raises(SecAggError, match="already revealed"):
        s.clients[0].unmask([m.sender for m in s.masked])


def test_client_refuses_to_unmask_a_disconnected_survivor_set() -> None:
    rnd = make_round(10, 2, 2)  # a cycle: dropping two non-adjacent clients splits it
    a = 0
    b = next(
        j
        for j in range(1, rnd.n)
        if j not in rnd.neighbours[a] and not set(rnd.neighbours[a]) & set(rnd.neighbours[j])
    )
    s = Session(rnd).advertise().share().receive().mask(drop=[a, b])
    survivors = [m.sender for m in s.masked]
    with pytest.raises(PrivacyRefusal, match="connected"):
        s.clients[rnd.neighbours[a][0]].unmask(survivors)
    with pytest.raises(UnmaskFailed, match="connected"):
        aggregate(rnd, s.adverts, s.share_keys, s.masked, [])


def test_revealing_a_survivors_key_share_is_refused() -> None:
    s = Session(make_round(6, 5, 3)).run()
    u = s.reveals[0]
    r = u.shares[0]
    stolen = s.clients[0]._held[s.rnd.index[r.dealer]][1]
    bad = msgspec.structs.replace(u, shares=(RevealedShare(r.dealer, "key", stolen),))
    server = SecAggServer(s.rnd)
    for a in s.adverts:
        server.add_advertise(a)
    for m in s.share_keys:
        server.add_share_keys(m)
    for mi in s.masked:
        server.add_masked_input(mi)
    with pytest.raises(MessageError, match="must never be revealed") as info:
        server.add_unmask(bad)
    assert info.value.sender == u.sender


# ---------------------------------------------------------------------------- bad input


def _server_at_phase2(s: Session) -> SecAggServer:
    server = SecAggServer(s.rnd)
    for a in s.adverts:
        server.add_advertise(a)
    for m in s.share_keys:
        server.add_share_keys(m)
    return server


def test_masked_input_with_the_wrong_modulus_is_refused() -> None:
    s = Session(make_round(6, 5, 3)).run()
    server = _server_at_phase2(s)
    m = s.masked[0]
    wide = msgspec.structs.replace(m, modulus_bits=64, data=m.data + m.data)
    with pytest.raises(MessageError, match=r"modulo 2\^64, the job uses 2\^32"):
        server.add_masked_input(wide)


def test_masked_input_with_elements_outside_the_group_is_refused() -> None:
    s = Session(make_round(6, 5, 3, modulus_bits=24, value_bits=8)).run()
    server = _server_at_phase2(s)
    vec = np.frombuffer(s.masked[0].data, dtype="<u4").copy()
    vec[3] |= 1 << 30
    bad = msgspec.structs.replace(s.masked[0], data=vec.tobytes())
    with pytest.raises(MessageError, match="wrong modulus"):
        server.add_masked_input(bad)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"length": 63}, "vector length 63"),
        ({"data": b"\x00" * 12}, "holds 12 bytes"),
        ({"round": 4}, "expected job 7 round 3"),
        ({"sender": b"stranger"}, "not in the job's roster"),
    ],
)
def test_malformed_masked_input_is_refused(change: dict[str, Any], reason: str) -> None:
    s = Session(make_round(6, 5, 3)).run()
    server = _server_at_phase2(s)
    with pytest.raises(MessageError, match=reason):
        server.add_masked_input(msgspec.structs.replace(s.masked[0], **change))


def test_malformed_revealed_shares_are_refused() -> None:
    s = Session(make_round(6, 5, 3)).run()
    u = s.reveals[0]
    r = u.shares[0]
    dealt = {s.rnd.index[m.sender]: m for m in s.share_keys}
    alive = set(range(s.rnd.n))

    def check(*shares: RevealedShare) -> None:
        check_unmask(s.rnd, dealt, alive, msgspec.structs.replace(u, shares=shares))

    with pytest.raises(MessageError, match="not a field element"):
        check(RevealedShare(r.dealer, "seed", b"\xff" * shamir.SHARE_BYTES))
    with pytest.raises(MessageError, match="must be 66 bytes"):
        check(RevealedShare(r.dealer, "seed", b"\x01" * 65))
    with pytest.raises(MessageError, match="two shares"):
        check(r, r)
    with pytest.raises(MessageError, match="holds no share"):
        check(RevealedShare(u.sender, "seed", r.share))  # its own secret
    with pytest.raises(MessageError, match="not in the roster"):
        check(RevealedShare(b"nobody", "seed", r.share))
    # on the wire the typed decoder refuses a short share before any check runs
    short = msgspec.structs.replace(u, shares=(RevealedShare(r.dealer, "seed", b"\x01" * 65),))
    with pytest.raises(EncodingError):
        decode(encode(short), UnmaskShares)


def test_bad_adverts_and_share_messages_are_refused() -> None:
    s = Session(make_round(6, 5, 3)).advertise()
    server = SecAggServer(s.rnd)
    a = s.adverts[0]
    with pytest.raises(MessageError, match="low-order"):
        server.add_advertise(msgspec.structs.replace(a, mask_pk=bytes(32)))
    with pytest.raises(MessageError, match="receive keys"):
        server.add_advertise(msgspec.structs.replace(a, recv_pks=a.recv_pks[:-1]))
    with pytest.raises(MessageError, match="round 3"):
        server.add_advertise(msgspec.structs.replace(a, job_id=8))
    for adv in s.adverts:
        server.add_advertise(adv)
    with pytest.raises(MessageError, match="duplicate"):
        server.add_advertise(a)
    s.share()
    m = s.share_keys[0]
    with pytest.raises(MessageError, match="expected exactly"):
        server.add_share_keys(msgspec.structs.replace(m, shares=m.shares[:-1]))
    e = m.shares[0]
    with pytest.raises(MessageError, match="ciphertext"):
        server.add_share_keys(
            msgspec.structs.replace(
                m, shares=(msgspec.structs.replace(e, ciphertext=e.ciphertext[:-1]), *m.shares[1:])
            )
        )
    server.add_share_keys(m)
    with pytest.raises(MessageError, match="phase 0 is closed"):
        server.add_advertise(a)


@pytest.mark.parametrize(
    ("n", "params", "reason"),
    [
        (6, SecAggParams(1, 4), "threshold 1 gives every neighbour the secret"),
        (6, SecAggParams(5, 4), "threshold must be 2..4"),
        (6, SecAggParams(2, 6), "degree must be 1..5"),
        (7, SecAggParams(2, 3), "both odd"),
        (2, SecAggParams(2, 1), "at least 3 clients"),
        (6, SecAggParams(2, 4, modulus_bits=8), r"modulus must be 2\^16"),
        (6, SecAggParams(2, 4, modulus_bits=128), r"modulus must be 2\^16"),
        (6, SecAggParams(2, 4, modulus_bits=16, value_bits=14), "can wrap"),
        (600, SecAggParams(2, 4, modulus_bits=32, value_bits=24), "can wrap"),
        (6, SecAggParams(2, 4, value_bits=1), "value bits"),
        (6, SecAggParams(2, 4, clip_micros=0), "clip range"),
    ],
)
def test_bad_parameters_are_refused(n: int, params: SecAggParams, reason: str) -> None:
    with pytest.raises(ParamsError, match=reason):
        SecAggRound(
            params,
            job_id=1,
            round=0,
            seed=bytes(32),
            roster=[b"c%03d" % i for i in range(n)],
            length=10,
        )


def test_bad_round_configuration_is_refused() -> None:
    p = SecAggParams(2, 4)
    roster = [b"c%02d" % i for i in range(6)]
    with pytest.raises(ParamsError, match="strictly ascending"):
        SecAggRound(p, job_id=1, round=0, seed=bytes(32), roster=roster[::-1], length=4)
    with pytest.raises(ParamsError, match="seed must be 32 bytes"):
        SecAggRound(p, job_id=1, round=0, seed=bytes(31), roster=roster, length=4)
    with pytest.raises(ParamsError, match="length must be positive"):
        SecAggRound(p, job_id=1, round=0, seed=bytes(32), roster=roster, length=0)
    rnd = SecAggRound(p, job_id=1, round=0, seed=bytes(32), roster=roster, length=4)
    with pytest.raises(SecAggError, match="not in the job's roster"):
        SecAggClient(rnd, b"outsider")


def test_client_refuses_out_of_range_levels_and_phase_skips() -> None:
    s = Session(make_round(6, 5, 3))
    c = s.clients[0]
    with pytest.raises(SecAggError, match="advertise keys before"):
        c.share_keys([])
    s.advertise().share().receive()
    lim = (1 << 15) - 1
    with pytest.raises(SecAggError, match=rf"\[-{lim}, {lim}\]"):
        c.masked_input(np.full(s.rnd.length, lim + 1, dtype=np.int64))
    with pytest.raises(SecAggError, match="integer vector of length 64"):
        c.masked_input(np.zeros(s.rnd.length, dtype=np.float32))


def test_result_levels_are_signed_integers() -> None:
    """A negative sum comes back negative, not as a large residue."""
    rnd = make_round(6, 5, 3, length=4)
    s = Session(rnd)
    s.levels = [np.array([-5, 0, 5, -(1 << 15) + 1], dtype=np.int64) for _ in rnd.roster]
    res = s.run().finish()
    assert res.levels.tolist() == [-30, 0, 30, 6 * (-(1 << 15) + 1)]
    assert from_group(np.array([1 << 31], dtype=np.uint32), 32).tolist() == [-(1 << 31)]

"""Ledger types: transactions, sign bytes, validator sets, commits, evidence, block shape."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from cifer.base import encoding
from cifer.base.chain import types as t
from cifer.base.chain.types import (
    MAX_MEMO_BYTES,
    MAX_MSGS_PER_TX,
    MAX_TX_BYTES,
    NIL,
    PRECOMMIT,
    PREVOTE,
    AnyMsg,
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    SignedTx,
    TxBody,
    TxSignature,
    ValidationError,
    Validator,
    ValidatorSet,
    Vote,
    check_block_shape,
    decode_tx,
    make_evidence,
    proposal_sign_bytes,
    verify_tx_signatures,
    vote_sign_bytes,
)
from cifer.base.crypto.keys import PrivateKey
from cifer.base.crypto.multisig import make_policy
from cifer.base.encoding import EncodingError

CHAIN = "cifer-test"
ALICE = PrivateKey.from_secret("alice")
BOB = PrivateKey.from_secret("bob")
SEND = AnyMsg("bank/Send", b"\x01\x02")


def body(
    signer: bytes = ALICE.address,
    nonce: int = 0,
    fee: int = 10,
    msgs: list[AnyMsg] | None = None,
    memo: str = "",
    chain_id: str = CHAIN,
) -> TxBody:
    return TxBody(chain_id, signer, nonce, fee, [SEND] if msgs is None else msgs, memo)


def signed(b: TxBody, key: PrivateKey = ALICE) -> SignedTx:
    return SignedTx(b, [TxSignature(key.public.raw, key.sign(t.tx_sign_bytes(b)))])


def raw_tx(b: TxBody, key: PrivateKey = ALICE) -> bytes:
    return encoding.encode(signed(b, key))


# ---------------------------------------------------------------- decode_tx


def test_decode_tx_round_trip() -> None:
    tx = signed(body(memo="hello"))
    assert decode_tx(tx.to_bytes()) == tx
    assert tx.hash() == t.sha256(tx.to_bytes())
    verify_tx_signatures(decode_tx(tx.to_bytes()))


def test_decode_tx_rejects_garbage_and_non_canonical() -> None:
    good = raw_tx(body())
    for bad in [b"", b"\x00", b"\xc1", good[:-1], good + b"\x00", b"\x94" + good[1:]]:
        with pytest.raises(EncodingError, match="SignedTx"):
            decode_tx(bad)
    # fee written as uint16 instead of a positive fixint.
    as_list = msgspec.msgpack.decode(good)
    as_list[0][3] = 10
    enc = msgspec.msgpack.encode(as_list)
    assert enc == good
    # nonce 0, fee 10, then the one-element msgs array: rewrite the fee as uint16.
    assert enc.count(b"\x00\x0a\x91") == 1
    long_fee = enc.replace(b"\x00\x0a\x91", b"\x00\xcd\x00\x0a\x91")
    assert msgspec.msgpack.decode(long_fee) == as_list  # same value, longer form
    with pytest.raises(EncodingError, match="non-canonical"):
        decode_tx(long_fee)


def test_decode_tx_rejects_float_fee_and_wrong_types() -> None:
    as_list = msgspec.msgpack.decode(raw_tx(body()))
    as_list[0][3] = 10.0
    with pytest.raises(EncodingError, match="invalid SignedTx"):
        decode_tx(msgspec.msgpack.encode(as_list))
    as_list[0][3] = "10"
    with pytest.raises(EncodingError, match="invalid SignedTx"):
        decode_tx(msgspec.msgpack.encode(as_list))


def test_decode_tx_rejects_unknown_or_missing_fields() -> None:
    as_list = msgspec.msgpack.decode(raw_tx(body()))
    with pytest.raises(EncodingError):
        decode_tx(msgspec.msgpack.encode([*as_list, None, 1]))
    with pytest.raises(EncodingError):
        decode_tx(msgspec.msgpack.encode([as_list[0][:-1], as_list[1], None]))


def test_decode_tx_size_limit() -> None:
    # With an empty value the msg uses a 2-byte bin8 header; near 64 KiB it is 3-byte bin16.
    overhead = len(raw_tx(body(msgs=[AnyMsg("bank/Send", b"")]))) + 1
    fits = raw_tx(body(msgs=[AnyMsg("bank/Send", b"\x00" * (MAX_TX_BYTES - overhead))]))
    assert len(fits) == MAX_TX_BYTES
    decode_tx(fits)
    too_big = raw_tx(body(msgs=[AnyMsg("bank/Send", b"\x00" * (MAX_TX_BYTES - overhead + 1))]))
    assert len(too_big) == MAX_TX_BYTES + 1
    with pytest.raises(EncodingError, match="limit"):
        decode_tx(too_big)


@pytest.mark.parametrize(
    "b,match",
    [
        (body(msgs=[]), "no messages"),
        (body(fee=-1), "non-negative"),
        (body(nonce=-1), "non-negative"),
        (body(signer=ALICE.address[:19]), "20-byte"),
        (body(signer=ALICE.address + b"\x00"), "20-byte"),
        (body(signer=b""), "20-byte"),
        (body(msgs=[SEND] * (MAX_MSGS_PER_TX + 1)), "messages"),
        (body(memo="x" * (MAX_MEMO_BYTES + 1)), "memo"),
        (body(memo="€" * (MAX_MEMO_BYTES // 3 + 1)), "memo"),  # counted in bytes, not chars
    ],
)
def test_decode_tx_stateless_rules(b: TxBody, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        decode_tx(raw_tx(b))


def test_decode_tx_limits_are_inclusive() -> None:
    decode_tx(raw_tx(body(msgs=[SEND] * MAX_MSGS_PER_TX)))
    decode_tx(raw_tx(body(memo="x" * MAX_MEMO_BYTES)))
    decode_tx(raw_tx(body(fee=0, nonce=0)))
    decode_tx(raw_tx(body(fee=2**63 - 1, nonce=2**64 - 1)))


# ---------------------------------------------------------------- tx signatures


def test_single_key_signature_ok_and_bound_to_body() -> None:
    b = body()
    tx = signed(b)
    verify_tx_signatures(tx)
    for changed in [
        body(fee=11),
        body(nonce=1),
        body(memo="x"),
        body(chain_id="other-chain"),
        body(msgs=[AnyMsg("bank/Send", b"\x01\x03")]),
    ]:
        with pytest.raises(ValidationError, match="invalid tx signature"):
            verify_tx_signatures(SignedTx(changed, tx.signatures))


def test_wrong_signer_address_rejected() -> None:
    # Bob signs a tx that names Alice as the signer.
    with pytest.raises(ValidationError, match="does not match the signer"):
        verify_tx_signatures(signed(body(signer=ALICE.address), key=BOB))
    # Alice's pubkey attached to Bob's signature.
    b = body()
    tx = SignedTx(b, [TxSignature(ALICE.public.raw, BOB.sign(t.tx_sign_bytes(b)))])
    with pytest.raises(ValidationError, match="invalid tx signature"):
        verify_tx_signatures(tx)


def test_single_key_signature_count_and_shape() -> None:
    b = body()
    sig = signed(b).signatures[0]
    with pytest.raises(ValidationError, match="needs 1 signature, got 0"):
        verify_tx_signatures(SignedTx(b, []))
    with pytest.raises(ValidationError, match="got 2"):
        verify_tx_signatures(SignedTx(b, [sig, sig]))
    with pytest.raises(ValidationError):
        verify_tx_signatures(SignedTx(b, [TxSignature(sig.pubkey[:31], sig.signature)]))
    with pytest.raises(ValidationError):
        verify_tx_signatures(SignedTx(b, [TxSignature(sig.pubkey, sig.signature[:63])]))


def test_tx_signature_is_domain_separated() -> None:
    b = body()
    assert t.tx_sign_bytes(b) == b"cifer/tx/v1" + encoding.encode(b)
    # Signing the bare body encoding does not make a valid tx signature.
    bare = SignedTx(b, [TxSignature(ALICE.public.raw, ALICE.sign(encoding.encode(b)))])
    with pytest.raises(ValidationError):
        verify_tx_signatures(bare)


MS_KEYS = [PrivateKey.from_secret(f"ms-{i}") for i in range(3)]
POLICY = make_policy(2, [k.public.raw for k in MS_KEYS])


def ms_tx(signers: list[int], policy: object = POLICY, signer: bytes | None = None) -> SignedTx:
    b = body(signer=POLICY.address if signer is None else signer)
    msg = t.tx_sign_bytes(b)
    return SignedTx(
        b,
        [TxSignature(MS_KEYS[i].public.raw, MS_KEYS[i].sign(msg)) for i in signers],
        policy,  # type: ignore[arg-type]
    )


def test_multisig_tx() -> None:
    verify_tx_signatures(ms_tx([0, 1]))
    verify_tx_signatures(ms_tx([2, 0]))
    verify_tx_signatures(ms_tx([0, 1, 2]))
    tx = ms_tx([0, 2])
    assert decode_tx(tx.to_bytes()) == tx


@pytest.mark.parametrize(
    "tx,match",
    [
        (ms_tx([0]), "needs 2 signatures"),
        (ms_tx([]), "needs 2 signatures"),
        (ms_tx([0, 0]), "twice"),
        (ms_tx([0, 1], policy=make_policy(3, [k.public.raw for k in MS_KEYS])), "policy"),
        (ms_tx([0, 1], signer=ALICE.address), "policy does not match"),
    ],
)
def test_multisig_tx_failures_raise_validation_error(tx: SignedTx, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        verify_tx_signatures(tx)


def test_multisig_non_member_and_bad_signature() -> None:
    tx = ms_tx([0])
    msg = tx.sign_bytes()
    outsider = TxSignature(ALICE.public.raw, ALICE.sign(msg))
    with pytest.raises(ValidationError, match="not a member"):
        verify_tx_signatures(SignedTx(tx.body, [*tx.signatures, outsider], tx.multisig))
    forged = TxSignature(MS_KEYS[1].public.raw, MS_KEYS[2].sign(msg))
    with pytest.raises(ValidationError, match="bad signature"):
        verify_tx_signatures(SignedTx(tx.body, [*tx.signatures, forged], tx.multisig))


def test_single_key_tx_cannot_spend_from_multisig_account() -> None:
    b = body(signer=POLICY.address)
    tx = SignedTx(b, [TxSignature(MS_KEYS[0].public.raw, MS_KEYS[0].sign(t.tx_sign_bytes(b)))])
    with pytest.raises(ValidationError):
        verify_tx_signatures(tx)


@pytest.mark.parametrize("threshold", [256, -1])
def test_multisig_out_of_range_threshold_raises_validation_error(threshold: int) -> None:
    policy = msgspec.structs.replace(POLICY, threshold=threshold)
    tx = ms_tx([0, 1], policy=policy)
    with pytest.raises(ValidationError):  # currently a bare ValueError escapes
        verify_tx_signatures(tx)


# ---------------------------------------------------------------- vote / proposal sign bytes


def test_vote_sign_bytes_domain_separation() -> None:
    grid = itertools.product(
        ["cifer-test", "cifer-test2", ""],
        [PREVOTE, PRECOMMIT],
        [1, 2, 2**40],
        [0, 1],
        [NIL, b"\x11" * 32, b"\x22" * 32],
    )
    seen: dict[bytes, tuple[object, ...]] = {}
    for params in grid:
        sb = vote_sign_bytes(*params)
        assert sb.startswith(b"cifer/vote/v1")
        assert sb not in seen, (params, seen.get(sb))
        seen[sb] = params
    assert len(seen) == 3 * 2 * 3 * 2 * 3


def test_proposal_sign_bytes_domain_separation() -> None:
    grid = itertools.product(
        ["cifer-test", "cifer-test2"], [1, 2], [0, 1], [-1, 0], [b"\x11" * 32, b"\x22" * 32]
    )
    seen = set()
    for params in grid:
        sb = proposal_sign_bytes(*params)
        assert sb.startswith(b"cifer/proposal/v1")
        seen.add(sb)
    assert len(seen) == 2**5


def test_vote_and_proposal_sign_bytes_never_coincide() -> None:
    h = b"\x33" * 32
    votes = {vote_sign_bytes(CHAIN, typ, 5, 0, h) for typ in (PREVOTE, PRECOMMIT, t.PROPOSAL)}
    props = {proposal_sign_bytes(CHAIN, 5, 0, pol, h) for pol in (-1, 0)}
    assert not votes & props
    # Header and tx domains differ too.
    assert not any(v.startswith(b"cifer/tx/v1") or v.startswith(b"cifer/header/v1") for v in votes)


def test_signature_does_not_transfer_between_kinds() -> None:
    h = b"\x44" * 32
    prevote = ALICE.sign(vote_sign_bytes(CHAIN, PREVOTE, 5, 0, h))
    for other in [
        vote_sign_bytes(CHAIN, PRECOMMIT, 5, 0, h),
        vote_sign_bytes(CHAIN + "x", PREVOTE, 5, 0, h),
        vote_sign_bytes(CHAIN, PREVOTE, 6, 0, h),
        vote_sign_bytes(CHAIN, PREVOTE, 5, 1, h),
        vote_sign_bytes(CHAIN, PREVOTE, 5, 0, NIL),
        proposal_sign_bytes(CHAIN, 5, 0, -1, h),
    ]:
        assert not ALICE.public.verify(other, prevote)


def test_vote_and_proposal_methods_match_functions() -> None:
    v = Vote(PRECOMMIT, 7, 2, b"\x01" * 32, ALICE.address, b"")
    assert v.sign_bytes(CHAIN) == vote_sign_bytes(CHAIN, PRECOMMIT, 7, 2, b"\x01" * 32)
    assert not v.is_nil()
    assert Vote(PREVOTE, 7, 2, NIL, ALICE.address, b"").is_nil()
    p = Proposal(7, 2, 1, b"\x01" * 32, ALICE.address, b"")
    assert p.sign_bytes(CHAIN) == proposal_sign_bytes(CHAIN, 7, 2, 1, b"\x01" * 32)


# ---------------------------------------------------------------- validator sets

VKEYS = [PrivateKey.from_secret(f"val-{i}") for i in range(6)]
POWERS = [5, 7, 11, 13, 17, 22]  # total 75: 2/3 is exactly 50, quorum 51


def vset(powers: list[int] = POWERS) -> ValidatorSet:
    return ValidatorSet([Validator(k.public.raw, p) for k, p in zip(VKEYS, powers, strict=False)])


@pytest.mark.parametrize("total", range(1, 301))
def test_quorum_arithmetic_matches_definition(total: int) -> None:
    vs = ValidatorSet([Validator(ALICE.public.raw, total)])
    q, f1, f = vs.quorum(), vs.one_third_plus(), vs.max_faulty_power()
    assert 3 * q > 2 * total and 3 * (q - 1) <= 2 * total  # smallest strictly above 2/3
    assert 3 * f1 > total and 3 * (f1 - 1) <= total  # smallest strictly above 1/3
    assert total >= 3 * f + 1 and total < 3 * (f + 1) + 1  # largest f with N >= 3f+1


def test_quorum_with_unequal_powers() -> None:
    vs = vset()
    assert vs.total_power == 75
    assert vs.quorum() == 51  # 50 is exactly 2/3: not enough
    assert vs.one_third_plus() == 26  # 25 is exactly 1/3: not enough
    assert vs.max_faulty_power() == 24


def test_validator_set_basics() -> None:
    vs = vset()
    assert len(vs) == 6
    addrs = [v.address for v in vs.validators]
    assert addrs == sorted(addrs)
    for k, p in zip(VKEYS, POWERS, strict=True):
        assert k.address in vs
        assert vs.power(k.address) == p
        assert vs.get(k.address) == Validator(k.public.raw, p)
    assert ALICE.address not in vs
    assert vs.power(ALICE.address) == 0
    assert vs.get(ALICE.address) is None


def test_validator_set_hash_is_order_independent_and_content_dependent() -> None:
    vals = [Validator(k.public.raw, p) for k, p in zip(VKEYS, POWERS, strict=True)]
    assert ValidatorSet(vals).hash == ValidatorSet(list(reversed(vals))).hash
    assert ValidatorSet(vals).hash != vset([*POWERS[:-1], 23]).hash
    assert ValidatorSet(vals).hash != ValidatorSet(vals[:-1]).hash
    # Zero-power validators are not members and do not change the hash.
    zero = Validator(ALICE.public.raw, 0)
    assert ValidatorSet([*vals, zero]).hash == ValidatorSet(vals).hash
    assert ALICE.address not in ValidatorSet([*vals, zero])


def test_validator_set_rejects() -> None:
    with pytest.raises(ValidationError, match="empty"):
        ValidatorSet([])
    with pytest.raises(ValidationError, match="empty"):
        ValidatorSet([Validator(ALICE.public.raw, 0)])
    with pytest.raises(ValidationError, match="negative"):
        ValidatorSet([Validator(ALICE.public.raw, 1), Validator(BOB.public.raw, -5)])
    with pytest.raises(ValidationError, match="duplicate"):
        ValidatorSet([Validator(ALICE.public.raw, 1), Validator(ALICE.public.raw, 2)])


def test_validator_set_rejects_short_pubkey_with_validation_error() -> None:
    with pytest.raises(ValidationError):  # currently CryptoError escapes
        ValidatorSet([Validator(b"\x01" * 31, 1), Validator(ALICE.public.raw, 1)])


# ---------------------------------------------------------------- commits

BLOCK_HASH = b"\xab" * 32


def commit_for(
    signers: list[int],
    height: int = 10,
    round: int = 0,
    block_hash: bytes = BLOCK_HASH,
    chain_id: str = CHAIN,
    typ: int = PRECOMMIT,
) -> Commit:
    msg = vote_sign_bytes(chain_id, typ, height, round, block_hash)
    sigs = [CommitSig(VKEYS[i].address, VKEYS[i].sign(msg)) for i in signers]
    return Commit(height, round, block_hash, sigs)


def test_commit_accepted_iff_strictly_more_than_two_thirds() -> None:
    vs = vset()
    accepted = rejected = 0
    for r in range(len(POWERS) + 1):
        for combo in itertools.combinations(range(len(POWERS)), r):
            power = sum(POWERS[i] for i in combo)
            c = commit_for(list(combo))
            if 3 * power > 2 * vs.total_power:
                vs.verify_commit(CHAIN, BLOCK_HASH, c)
                accepted += 1
            else:
                with pytest.raises(ValidationError, match="power"):
                    vs.verify_commit(CHAIN, BLOCK_HASH, c)
                rejected += 1
    assert accepted and rejected


def test_commit_exactly_quorum_and_quorum_minus_one() -> None:
    vs = vset()
    exact = [0, 1, 4, 5]  # 5 + 7 + 17 + 22 = 51 = quorum
    assert sum(POWERS[i] for i in exact) == vs.quorum()
    vs.verify_commit(CHAIN, BLOCK_HASH, commit_for(exact))
    minus_one = [2, 4, 5]  # 11 + 17 + 22 = 50 = exactly 2/3
    assert sum(POWERS[i] for i in minus_one) == vs.quorum() - 1
    with pytest.raises(ValidationError, match="has 50 of 75 power, needs 51"):
        vs.verify_commit(CHAIN, BLOCK_HASH, commit_for(minus_one))


def test_commit_rejects_duplicate_signer() -> None:
    vs = vset()
    # 22 + 17 + 5 = 44, padded to 66 by repeating the 22-power validator.
    c = commit_for([5, 4, 0, 5])
    with pytest.raises(ValidationError, match="two signatures"):
        vs.verify_commit(CHAIN, BLOCK_HASH, c)
    # A duplicate is rejected even when the distinct signers already reach quorum.
    with pytest.raises(ValidationError, match="two signatures"):
        vs.verify_commit(CHAIN, BLOCK_HASH, commit_for([0, 1, 2, 3, 4, 5, 0]))


def test_commit_rejects_non_validator() -> None:
    vs = vset()
    c = commit_for([0, 1, 2, 3, 4, 5])
    msg = vote_sign_bytes(CHAIN, PRECOMMIT, 10, 0, BLOCK_HASH)
    extra = CommitSig(ALICE.address, ALICE.sign(msg))
    with pytest.raises(ValidationError, match="not a validator"):
        vs.verify_commit(CHAIN, BLOCK_HASH, Commit(10, 0, BLOCK_HASH, [*c.signatures, extra]))


def test_commit_rejects_bad_signatures() -> None:
    vs = vset()
    all_six = list(range(6))
    c = commit_for(all_six)
    sigs = list(c.signatures)
    bad = bytearray(sigs[2].signature)
    bad[0] ^= 1
    sigs[2] = CommitSig(sigs[2].validator, bytes(bad))
    with pytest.raises(ValidationError, match="invalid commit signature"):
        vs.verify_commit(CHAIN, BLOCK_HASH, Commit(10, 0, BLOCK_HASH, sigs))
    # Signatures over the wrong thing: other chain, height, round, block, or a prevote.
    for wrong in [
        commit_for(all_six, chain_id="other"),
        commit_for(all_six, typ=PREVOTE),
        commit_for(all_six, block_hash=b"\xcd" * 32),
    ]:
        forged = Commit(10, 0, BLOCK_HASH, wrong.signatures)
        with pytest.raises(ValidationError, match="invalid commit signature"):
            vs.verify_commit(CHAIN, BLOCK_HASH, forged)
    for relabeled in [
        Commit(11, 0, BLOCK_HASH, c.signatures),
        Commit(10, 1, BLOCK_HASH, c.signatures),
    ]:
        with pytest.raises(ValidationError, match="invalid commit signature"):
            vs.verify_commit(CHAIN, BLOCK_HASH, relabeled)
    with pytest.raises(ValidationError, match="invalid commit signature"):
        vs.verify_commit("other", BLOCK_HASH, c)


def test_commit_for_other_block_rejected() -> None:
    vs = vset()
    with pytest.raises(ValidationError, match="different block"):
        vs.verify_commit(CHAIN, b"\xcd" * 32, commit_for(list(range(6))))


def test_empty_commit_rejected() -> None:
    with pytest.raises(ValidationError):
        vset().verify_commit(CHAIN, BLOCK_HASH, Commit(10, 0, BLOCK_HASH, []))


def test_commit_signature_order_does_not_matter() -> None:
    vset().verify_commit(CHAIN, BLOCK_HASH, commit_for([5, 4, 1, 0]))  # 22+17+7+5 = 51


# ---------------------------------------------------------------- evidence


def vote(
    key_idx: int,
    block_hash: bytes,
    height: int = 10,
    round: int = 0,
    typ: int = PREVOTE,
    chain_id: str = CHAIN,
) -> Vote:
    k = VKEYS[key_idx]
    sig = k.sign(vote_sign_bytes(chain_id, typ, height, round, block_hash))
    return Vote(typ, height, round, block_hash, k.address, sig)


def test_duplicate_vote_evidence_verifies() -> None:
    vs = vset()
    a, b = vote(0, b"\x01" * 32), vote(0, b"\x02" * 32)
    ev = make_evidence(b, a)
    assert ev.vote_a == a and ev.vote_b == b  # ordered by block hash
    assert make_evidence(a, b) == ev
    ev.verify(CHAIN, vs)
    assert ev.validator == VKEYS[0].address and ev.height == 10
    assert ev.hash() == t.sha256(encoding.encode(ev))
    assert encoding.decode(encoding.encode(ev), DuplicateVoteEvidence) == ev
    # Nil vs a block in the same round is equivocation too.
    make_evidence(vote(1, NIL, typ=PRECOMMIT), vote(1, b"\x01" * 32, typ=PRECOMMIT)).verify(
        CHAIN, vs
    )


@pytest.mark.parametrize(
    "a,b,match",
    [
        (vote(0, b"\x01" * 32), vote(0, b"\x01" * 32), "differ"),
        (vote(0, b"\x02" * 32), vote(0, b"\x01" * 32), "ordered"),
        (vote(0, b"\x01" * 32), vote(0, b"\x02" * 32, height=11), "same height"),
        (vote(0, b"\x01" * 32), vote(0, b"\x02" * 32, round=1), "same height"),
        (vote(0, b"\x01" * 32), vote(0, b"\x02" * 32, typ=PRECOMMIT), "same height"),
        (vote(0, b"\x01" * 32), vote(1, b"\x02" * 32), "same height"),
    ],
)
def test_evidence_rejects_mismatched_votes(a: Vote, b: Vote, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DuplicateVoteEvidence(a, b).verify(CHAIN, vset())


def test_evidence_rejects_bad_signatures_and_outsiders() -> None:
    vs = vset()
    a, b = vote(0, b"\x01" * 32), vote(0, b"\x02" * 32)
    with pytest.raises(ValidationError, match="invalid vote signature"):
        make_evidence(a, b).verify("other-chain", vs)
    forged_b = msgspec.structs.replace(b, signature=a.signature)
    with pytest.raises(ValidationError, match="invalid vote signature"):
        DuplicateVoteEvidence(a, forged_b).verify(CHAIN, vs)
    forged_a = msgspec.structs.replace(a, signature=b.signature)
    with pytest.raises(ValidationError, match="invalid vote signature"):
        DuplicateVoteEvidence(forged_a, b).verify(CHAIN, vs)
    # Signed with the other chain's sign bytes.
    a2 = vote(0, b"\x01" * 32, chain_id="other-chain")
    with pytest.raises(ValidationError, match="invalid vote signature"):
        DuplicateVoteEvidence(a2, b).verify(CHAIN, vs)
    # A validator not in the set.
    without_0 = ValidatorSet([Validator(k.public.raw, 1) for k in VKEYS[1:]])
    with pytest.raises(ValidationError, match="not in the set"):
        make_evidence(a, b).verify(CHAIN, without_0)


# ---------------------------------------------------------------- blocks


def header(
    height: int,
    txs: list[bytes],
    last_commit: Commit | None,
    evidence: list[DuplicateVoteEvidence] | None = None,
    **kw: object,
) -> Header:
    fields = dict(
        chain_id=CHAIN,
        height=height,
        time_ms=1_700_000_000_000 + height,
        last_block_hash=b"" if height == 1 else b"\x01" * 32,
        last_commit_hash=t.commit_hash(last_commit),
        data_hash=t.data_hash(txs),
        app_hash=b"\x02" * 32,
        last_results_hash=b"\x03" * 32,
        validators_hash=vset().hash,
        next_validators_hash=vset().hash,
        evidence_hash=t.evidence_hash(evidence or []),
        proposer=VKEYS[0].address,
    )
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


def block(height: int = 2, txs: list[bytes] | None = None, **kw: object) -> Block:
    txs = [b"tx-a", b"tx-b"] if txs is None else txs
    lc = None if height == 1 else commit_for([0, 1, 4, 5], height=height - 1)
    ev: list[DuplicateVoteEvidence] = []
    return Block(header(height, txs, lc, ev, **kw), txs, lc, ev)


def test_valid_blocks_pass_shape_check() -> None:
    check_block_shape(block(1))
    check_block_shape(block(2))
    check_block_shape(block(2, txs=[]))
    ev = [make_evidence(vote(0, b"\x01" * 32), vote(0, b"\x02" * 32))]
    lc = commit_for([0, 1, 4, 5], height=4)
    check_block_shape(Block(header(5, [], lc, ev), [], lc, ev))


def test_block_shape_rejections() -> None:
    good = block(2)
    lc = good.last_commit
    assert lc is not None
    cases = [
        (msgspec.structs.replace(good, txs=[*good.txs, b"tx-c"]), "data hash"),
        (msgspec.structs.replace(good, txs=list(reversed(good.txs))), "data hash"),
        (
            msgspec.structs.replace(
                good, evidence=[make_evidence(vote(0, b"\x01" * 32), vote(0, b"\x02" * 32))]
            ),
            "evidence hash",
        ),
        (
            msgspec.structs.replace(good, last_commit=commit_for([0, 1, 2, 3], height=1)),
            "last-commit hash",
        ),
        (Block(header(0, [], None), [], None, []), "height"),
        (Block(header(-1, [], None), [], None, []), "height"),
        (Block(header(2, [], None), [], None, []), "only the first block"),
        (Block(header(1, [], lc), [], lc, []), "only the first block"),
        (Block(header(3, [], lc), [], lc, []), "previous height"),
    ]
    for blk, match in cases:
        with pytest.raises(ValidationError, match=match):
            check_block_shape(blk)


def test_block_encoding_and_header_hash() -> None:
    b = block(2)
    assert encoding.decode(b.to_bytes(), Block) == b
    assert b.hash() == b.header.hash()
    assert b.hash() == t.sha256(b"cifer/header/v1" + encoding.encode(b.header))
    for field, value in [
        ("chain_id", "x"),
        ("height", 3),
        ("time_ms", 0),
        ("app_hash", b""),
        ("proposer", b"\x00" * 20),
        ("next_validators_hash", b""),
    ]:
        assert msgspec.structs.replace(b.header, **{field: value}).hash() != b.hash()


def test_hash_helpers() -> None:
    assert t.commit_hash(None) == b""
    c = commit_for([0])
    assert t.commit_hash(c) == c.hash() == t.sha256(encoding.encode(c))
    assert t.data_hash([]) == t.merkle.EMPTY_ROOT

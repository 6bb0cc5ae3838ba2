"""Privacy modes of on-chain fl jobs (secagg, ckks, dp) over four in-process validators.

Clients run the real protocol libraries (:mod:`cifer.compute.privacy`) against what the
chain committed; every block goes through prepare_proposal on the proposer and
process_proposal on all four validators, and ``Net.step`` checks that their app hashes agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cifer.app.contracts.bank import BankModule
from cifer.app.contracts.fl import (
    ESCROW,
    Aggregate,
    FlModule,
    Job,
    JobStatus,
    create_job_msg,
    join_job_msg,
    submit_update_msg,
)
from cifer.app.contracts.fl_privacy import (
    ADVERTISE,
    INPUT,
    SHARE,
    UNMASK,
    KeyBundle,
    PublishContext,
    SecAggMsg,
    secagg_round,
)
from cifer.app.contracts.reputation import ReputationModule
from cifer.app.fl_engine import BlobEngine
from cifer.app.module import Code, pack
from cifer.app.node.api_fl import tamper_aggregates
from cifer.base.chain.abci import TxResult
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey, to_bech32
from cifer.base.encoding import decode, encode
from cifer.compute.fl.params import ParamSpec, from_bytes, to_bytes
from cifer.compute.privacy.ckks import CkksKeys, CkksParams, decrypt_aggregate, encrypt_update
from cifer.compute.privacy.dp import DpConfig, JobAccountant
from cifer.compute.privacy.secagg import (
    RevealedShare,
    SecAggClient,
    SecAggParams,
    SecAggRound,
    ShareKeys,
    UnmaskShares,
)

from .helpers import CHAIN_ID, FEE, KEYS, make_block
from .test_fl_contract import D, Net, job_fields, params_of

CLIENTS = KEYS[1:5]
SECAGG = SecAggParams(threshold=2, degree=3, clip_micros=1_000_000)
HOLDER = min(CLIENTS, key=lambda k: k.address)  # the ckks key holder: smallest address
#: Each client's X25519 key for ckks key sharing (JoinJob.enc_key is its public half).
ENC = {
    k.address: X25519PrivateKey.from_private_bytes(hashlib.sha256(b"enc" + k.address).digest())
    for k in KEYS
}


def enc_pub(k: PrivateKey) -> bytes:
    return ENC[k.address].public_key().public_bytes_raw()


def dp_config(rounds: int) -> DpConfig:
    return DpConfig.of(
        mode="distributed",
        noise_multiplier=1.0,
        clip_norm=1.0,
        sampling_rate=1.0,
        delta=1e-5,
        min_clients=4,
        rounds=rounds,
    )


@pytest.fixture(scope="module")
def ckks_keys() -> CkksKeys:
    return CkksKeys.generate()


@pytest.fixture(scope="module")
def other_keys() -> CkksKeys:
    return CkksKeys.generate()


# ------------------------------------------------------------------ driver


class PNet(Net):
    """Net with what privacy tests need: forced blocks, tx results and fl state views."""

    def ok(self, key: PrivateKey, msg: AnyMsg) -> None:
        code, log = self.submit(key, msg)
        assert code == 0, log

    def job(self, job_id: int) -> Job:
        job = FlModule.job(self.state(), job_id)
        assert job is not None
        return job

    def fl_state(self) -> dict[bytes, bytes]:
        return dict(self.state().iter_prefix(b"fl/"))

    def refused(self, key: PrivateKey, msg: AnyMsg, needle: str, code: int | None = None) -> str:
        """check_tx refuses ``msg`` with ``needle`` in its reason, leaving no trace."""
        app_hash = self.app.info().last_app_hash
        nonce = self.app.pending_nonce(key.address)
        before = self.fl_state()
        got, log = self.submit(key, msg)
        assert got != 0 and needle in log, (got, log)
        if code is not None:
            assert got == code, (got, log)
        assert self.app.info().last_app_hash == app_hash
        assert self.app.pending_nonce(key.address) == nonce  # the check state kept nothing
        assert self.fl_state() == before
        return log

    def propose_raw(self, key: PrivateKey, msg: AnyMsg) -> tuple[list[str], TxResult | None]:
        """A block holding ``msg`` after the due system txs, as a Byzantine proposer would
        build it (no mempool check). If every validator accepts it, it is committed and the
        tx's result returned; else nothing is committed and the reasons are returned."""
        raw = self.tx(key, msg)
        height = self.app.height + 1
        system = self.app.prepare_proposal(height, [], 4 << 20)
        block = make_block(height, [*system, raw], app_hash=self.app.info().last_app_hash)
        reasons = [a.process_proposal(block).reason for a in self.apps]
        if any(reasons):
            self.nonces[key.address] -= 1
            return reasons, None
        results = [a.finalize_block(block) for a in self.apps]
        for a in self.apps:
            a.commit()
        assert len({a.info().last_app_hash for a in self.apps}) == 1
        return reasons, results[0].tx_results[-1]

    def refused_in_block(self, key: PrivateKey, msg: AnyMsg, needle: str) -> None:
        """A block carrying ``msg`` is refused by every validator, for ``needle``."""
        height = self.app.height
        reasons, _ = self.propose_raw(key, msg)
        assert all(needle in r for r in reasons), reasons
        assert self.app.height == height

    def fails_in_block(self, key: PrivateKey, msg: AnyMsg, needle: str) -> None:
        """A block carrying ``msg`` is valid, but the tx fails and fl state is untouched
        (only end_block could move it, and the tests call this when nothing is due)."""
        before = self.fl_state()
        reasons, res = self.propose_raw(key, msg)
        assert res is not None, reasons
        assert res.code != 0 and needle in res.log, res
        assert self.fl_state() == before

    def step_until(self, done: Callable[[], bool], limit: int = 30) -> None:
        for _ in range(limit):
            if done():
                return
            self.step()
        raise AssertionError("condition never met")

    def model_vec(self, model: bytes) -> np.ndarray:
        blob = self.stores[0].get(model)
        assert blob is not None
        params = from_bytes(blob)
        return ParamSpec.of(params).flatten(params)


def start(net: PNet, *, privacy: str, enc: bool = False, **over: object) -> int:
    """Create a job over CLIENTS (fedavg, model_params D) and have all four join."""
    fields = job_fields(
        net,
        privacy=privacy,
        rule="fedavg",
        rule_params={},
        model_params=D,
        rounds=2,
        round_blocks=3,
        reward=4_000_000,
    )
    fields.update(over)
    net.ok(KEYS[0], create_job_msg(**fields))
    net.step()
    job_id = FlModule.jobs(net.state())[-1].id
    for k in CLIENTS:
        net.ok(k, join_job_msg(job_id, b"", enc_pub(k) if enc else b""))
    net.step()
    return job_id


def sa_msg(job_id: int, round_: int, phase: int, inner: msgspec.Struct | bytes) -> AnyMsg:
    payload = inner if isinstance(inner, bytes) else encode(inner)
    return pack("fl/SecAgg", SecAggMsg(job_id, round_, phase, payload))


class SecAggDriver:
    """The four clients' side of a secagg job, one phase at a time."""

    def __init__(self, net: PNet, job_id: int) -> None:
        self.net = net
        self.job_id = job_id
        self.clients: dict[bytes, SecAggClient] = {}
        self.rnd: SecAggRound | None = None

    @property
    def round(self) -> int:
        return self.net.job(self.job_id).round

    def new_round(self) -> SecAggRound:
        job = self.net.job(self.job_id)
        assert job.status == JobStatus.RUNNING and job.phase == ADVERTISE
        assert job.spec.secagg is not None
        rnd = secagg_round(
            CHAIN_ID,
            job_id=job.id,
            round_=job.round,
            model=job.model,
            params=job.spec.secagg,
            roster=FlModule.members(self.net.state(), job.id),
            length=job.spec.model_params,
        )
        self.rnd = rnd
        self.clients = {k.address: SecAggClient(rnd, k.address) for k in CLIENTS}
        return rnd

    def phase(self) -> int:
        return self.net.job(self.job_id).phase

    def committed(self, phase: int) -> list[Any]:
        job = self.net.job(self.job_id)
        return FlModule.secagg_phase(self.net.state(), job, phase)

    def advertise(self) -> None:
        if self.rnd is None or self.rnd.round != self.round:
            self.new_round()
        for k in CLIENTS:
            msg = self.clients[k.address].advertise()
            self.net.ok(k, sa_msg(self.job_id, self.round, ADVERTISE, msg))
        self.net.step()
        assert self.phase() == SHARE

    def share_msg(self, k: PrivateKey) -> ShareKeys:
        adverts = self.committed(ADVERTISE)
        return self.clients[k.address].share_keys(adverts)

    def share(self, keys: Iterable[PrivateKey] = CLIENTS) -> None:
        for k in keys:
            self.net.ok(k, sa_msg(self.job_id, self.round, SHARE, self.share_msg(k)))
        self.net.step()
        assert self.phase() == INPUT

    def receive(self) -> None:
        dealt = self.committed(SHARE)
        senders = FlModule.phase_senders(self.net.state(), self.job_id, self.round, SHARE)
        for a in senders:
            assert self.clients[a].receive_shares(dealt) == []

    def masked_blob(self, k: PrivateKey, update: np.ndarray) -> bytes:
        assert self.rnd is not None
        levels = self.rnd.quantizer().quantize(update)
        return encode(self.clients[k.address].masked_input(levels))

    def inputs(self, updates: dict[bytes, np.ndarray]) -> None:
        """Masked input from the clients in ``updates``; steps until the phase closes."""
        self.receive()
        for k in CLIENTS:
            if k.address in updates:
                h = self.net.upload(self.masked_blob(k, updates[k.address]))
                self.net.ok(k, submit_update_msg(self.job_id, self.round, h, 10))
        self.net.step_until(lambda: self.phase() == UNMASK)

    def unmask_msg(self, k: PrivateKey) -> UnmaskShares:
        survivors = FlModule.phase_senders(self.net.state(), self.job_id, self.round, INPUT)
        return self.clients[k.address].unmask(survivors)

    def unmask(self) -> None:
        r = self.round
        survivors = FlModule.phase_senders(self.net.state(), self.job_id, r, INPUT)
        by_addr = {k.address: k for k in CLIENTS}
        for a in survivors:
            self.net.ok(by_addr[a], sa_msg(self.job_id, r, UNMASK, self.unmask_msg(by_addr[a])))
        self.net.step()
        assert self.net.job(self.job_id).status == JobStatus.CLOSING

    def run_round(self, updates: dict[bytes, np.ndarray]) -> None:
        """All four advertise and share; those in ``updates`` send masked input; the
        round closes; the next block's aggregate is left to the caller."""
        self.advertise()
        self.share()
        self.inputs(updates)
        self.unmask()


def updates_for(keys: Sequence[PrivateKey], seed: int) -> dict[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k.address: (0.2 * rng.standard_normal(D)).astype(np.float32) for k in keys}


def expected_model(model: np.ndarray, updates: Iterable[np.ndarray]) -> np.ndarray:
    """What a secagg round must give: the model plus the mean of the quantized updates,
    computed from the exact integer sum of levels."""
    q = SECAGG.quantizer()
    levels = [q.quantize(u) for u in updates]
    total = np.sum(levels, axis=0)
    return (model.astype(np.float64) + q.dequantize(total) / len(levels)).astype(np.float32)


def edit_aggregates(**fields: object) -> Callable[[list[AnyMsg]], list[AnyMsg]]:
    """A Byzantine proposer's rewrite of its aggregates (values may be functions of it)."""

    def tamper(msgs: list[AnyMsg]) -> list[AnyMsg]:
        out = []
        for m in msgs:
            agg = decode(m.value, Aggregate)
            changes = {k: v(agg) if callable(v) else v for k, v in fields.items()}
            out.append(AnyMsg(m.type, encode(msgspec.structs.replace(agg, **changes))))
        return out

    return tamper


DIFFERS = "differs from this validator's recomputation"


# ------------------------------------------------------------------ secagg


def test_secagg_job_unmasks_the_exact_sum_with_a_dropout_and_pays_survivors() -> None:
    net = PNet()
    creator = BankModule.balance(net.state(), KEYS[0].address)
    job_id = start(net, privacy="secagg", secagg=SECAGG)
    drv = SecAggDriver(net, job_id)
    model = np.zeros(D, np.float32)

    # round 0: everyone
    ups = updates_for(CLIENTS, 0)
    drv.run_round(ups)
    # without dp the epsilon is 0 exactly: the accountant's slack does not apply
    net.apps[1].tamper_system = edit_aggregates(epsilon_micro=1)
    reasons = net.step(proposer=1, accept=False)
    assert all(DIFFERS in r for r in reasons), reasons
    net.step()  # the Aggregate, recomputed by every validator
    job = net.job(job_id)
    rec = FlModule.round_record(net.state(), job_id, 0)
    assert rec is not None and job.round == 1 and job.phase == ADVERTISE
    assert rec.clients == sorted(k.address for k in CLIENTS) and all(rec.accepted)
    assert rec.failure == "" and rec.blamed == [] and rec.stragglers == []
    new = net.model_vec(job.model)
    want = expected_model(model, ups.values())
    np.testing.assert_array_equal(new, want)
    # and that is the plain mean up to one quantization level
    plain = np.mean(list(ups.values()), axis=0)
    assert np.abs(new - plain).max() <= 1 / SECAGG.quantizer().scale
    assert not np.allclose(new, 0)
    model = new

    # round 1: KEYS[4] shares its keys but sends no masked input (a dropout after sharing)
    dropout = CLIENTS[3]
    ups = updates_for(CLIENTS[:3], 1)
    drv.advertise()
    drv.share()
    h0 = net.app.height
    drv.inputs(ups)
    assert net.app.height - h0 == 3  # the input phase waited for its deadline (3 blocks)
    assert FlModule.phase_senders(net.state(), job_id, 1, SHARE) == sorted(
        k.address for k in CLIENTS
    )
    drv.unmask()
    net.step()
    job = net.job(job_id)
    assert job.status == JobStatus.DONE
    rec = FlModule.round_record(net.state(), job_id, 1)
    assert rec is not None and rec.failure == ""
    assert rec.clients == sorted(k.address for k in CLIENTS[:3]) and all(rec.accepted)
    assert rec.stragglers == [dropout.address]
    # the dropout's pairwise masks were removed from its key shares: the sum is exact
    np.testing.assert_array_equal(net.model_vec(job.model), expected_model(model, ups.values()))
    # survivors are paid in both rounds, the dropout only in round 0
    assert all(p > 0 for p in rec.paid)
    state = net.state()
    r0 = FlModule.round_record(state, job_id, 0)
    assert r0 is not None
    paid = dict(zip(r0.clients, r0.paid, strict=True))
    for c, p in zip(rec.clients, rec.paid, strict=True):
        paid[c] += p
    assert paid[dropout.address] == r0.paid[r0.clients.index(dropout.address)]
    for k in CLIENTS[:3]:
        assert paid[k.address] > paid[dropout.address]
    assert BankModule.balance(state, ESCROW) == 0 and job.escrow_left == 0
    spent = sum(paid.values()) + r0.proposer_paid + rec.proposer_paid
    assert BankModule.balance(state, KEYS[0].address) == creator - FEE - spent
    prov = FlModule.provenance(state, job_id)
    assert prov is not None and prov.model == job.model and len(prov.round_models) == 2


def test_secagg_aggregate_is_recomputed_by_every_validator() -> None:
    net = PNet()
    job_id = start(net, privacy="secagg", secagg=SECAGG, rounds=1, dp=dp_config(1))
    drv = SecAggDriver(net, job_id)
    ups = updates_for(CLIENTS, 7)
    drv.run_round(ups)

    tampers = [
        tamper_aggregates,  # another model hash
        edit_aggregates(accepted=lambda a: [False, *a.accepted[1:]]),  # drop one survivor's reward
        edit_aggregates(blamed=lambda a: [a.clients[0]]),  # blame an honest client
        edit_aggregates(
            epsilon_micro=lambda a: a.epsilon_micro + 2
        ),  # beyond the 1 micro-eps slack
    ]
    for tamper in tampers:
        net.apps[1].tamper_system = tamper
        reasons = net.step(proposer=1, accept=False)
        assert all(DIFFERS in r for r in reasons[:1] + reasons[2:]), reasons
        assert net.job(job_id).status == JobStatus.CLOSING
    # within the accountant's floating-point slack the proposer's epsilon is taken
    net.apps[1].tamper_system = edit_aggregates(epsilon_micro=lambda a: a.epsilon_micro + 1)
    net.step(proposer=1)
    job = net.job(job_id)
    rec = FlModule.round_record(net.state(), job_id, 0)
    assert rec is not None and job.status == JobStatus.DONE
    acc = JobAccountant(dp_config(1))
    want = acc.record_round(0, survivors=4).epsilon_total_micro
    assert rec.epsilon_micro == job.epsilon_micro == want + 1
    q = SECAGG.quantizer()
    assert np.abs(net.model_vec(job.model) - np.mean(list(ups.values()), axis=0)).max() <= (
        1 / q.scale
    )


def test_a_reveal_that_does_not_match_its_commitment_blames_the_revealer() -> None:
    net = PNet()
    job_id = start(net, privacy="secagg", secagg=SECAGG, rounds=1)
    drv = SecAggDriver(net, job_id)
    ups = updates_for(CLIENTS, 9)
    drv.advertise()
    drv.share()
    drv.inputs(ups)
    liar = CLIENTS[1]
    reveal = drv.unmask_msg(liar)
    s0, s1 = reveal.shares[0], reveal.shares[1]
    assert s0.kind == s1.kind == "seed"
    # a well-formed share, but not the one the dealer committed to: admitted (only the
    # unmasking can tell), then blamed on the revealer; the dealer's other holders suffice
    wrong = msgspec.structs.replace(
        reveal, shares=(RevealedShare(s0.dealer, "seed", s1.share), *reveal.shares[1:])
    )
    net.ok(liar, sa_msg(job_id, 0, UNMASK, wrong))
    for k in CLIENTS:
        if k is not liar:
            net.ok(k, sa_msg(job_id, 0, UNMASK, drv.unmask_msg(k)))
    net.step()
    rep = net.app.modules.get(ReputationModule)
    before = {k.address: rep.score(net.state(), k.address) for k in CLIENTS}
    net.step()
    rec = FlModule.round_record(net.state(), job_id, 0)
    assert rec is not None and rec.failure == ""
    assert rec.blamed == [liar.address]
    ok = dict(zip(rec.clients, rec.accepted, strict=True))
    paid = dict(zip(rec.clients, rec.paid, strict=True))
    assert ok.pop(liar.address) is False and paid.pop(liar.address) == 0
    assert all(ok.values()) and all(p > 0 for p in paid.values())
    after = {k.address: rep.score(net.state(), k.address) for k in CLIENTS}
    assert after[liar.address] < before[liar.address]
    assert all(after[a] >= before[a] for a in paid)
    # its masked input was in the sum all the same: the unmasked total is exact
    job = net.job(job_id)
    np.testing.assert_array_equal(
        net.model_vec(job.model), expected_model(np.zeros(D, np.float32), ups.values())
    )


def test_secagg_with_dp_records_epsilon_per_round() -> None:
    net = PNet()
    dp = dp_config(2)
    job_id = start(net, privacy="secagg", secagg=SECAGG, dp=dp)
    drv = SecAggDriver(net, job_id)
    drv.run_round(updates_for(CLIENTS, 3))
    net.step()
    eps0 = net.job(job_id).epsilon_micro
    drv.run_round(updates_for(CLIENTS[:3], 4))  # 3 survivors: less noise in the sum
    net.step()
    job = net.job(job_id)
    recs = [FlModule.round_record(net.state(), job_id, r) for r in range(2)]
    assert recs[0] is not None and recs[1] is not None
    acc = JobAccountant(dp)
    want0 = acc.record_round(0, survivors=4).epsilon_total_micro
    want1 = acc.record_round(1, survivors=3).epsilon_total_micro
    assert abs(recs[0].epsilon_micro - want0) <= 1 and eps0 == recs[0].epsilon_micro
    assert abs(recs[1].epsilon_micro - want1) <= 1 and job.epsilon_micro == recs[1].epsilon_micro
    assert 0 < recs[0].epsilon_micro < recs[1].epsilon_micro
    # the dropout round costs more than a full one would have: fewer noise shares
    full = JobAccountant(dp)
    full.record_round(0, survivors=4)
    assert want1 > full.record_round(1, survivors=4).epsilon_total_micro


def test_secagg_bad_messages_are_refused_without_state_change() -> None:
    net = PNet()
    job_id = start(net, privacy="secagg", secagg=SECAGG, rounds=1, round_blocks=20)
    drv = SecAggDriver(net, job_id)
    a, b = CLIENTS[0], CLIENTS[1]
    drv.new_round()
    plain = net.upload(to_bytes(params_of(np.ones(D, np.float32))))

    # phase advertise
    net.refused(a, sa_msg(job_id, 0, ADVERTISE, b"garbage"), "malformed payload", Code.INVALID_MSG)
    net.fails_in_block(a, sa_msg(job_id, 0, ADVERTISE, b"garbage"), "malformed payload")
    advert_a = drv.clients[a.address].advertise()
    net.refused(
        b, sa_msg(job_id, 0, ADVERTISE, advert_a), "but " + to_bech32(b.address) + " signed it"
    )
    net.fails_in_block(b, sa_msg(job_id, 0, ADVERTISE, advert_a), "signed it")
    net.refused(
        a, sa_msg(job_id, 0, SHARE, b"\x90"), "phase share of job 1 round 0 is not open yet"
    )
    net.refused(a, sa_msg(job_id, 0, INPUT, b"\x90"), "masked input (2) is an update blob")
    net.refused(a, sa_msg(job_id, 1, ADVERTISE, advert_a), "is not in round 1")
    net.refused(KEYS[0], sa_msg(job_id, 0, ADVERTISE, advert_a), "has not joined job")
    net.refused(a, submit_update_msg(job_id, 0, plain, 10), "in secagg phase advertise")
    wrong_round = msgspec.structs.replace(advert_a, round=1)
    net.refused(a, sa_msg(job_id, 0, ADVERTISE, wrong_round), "expected job 1 round 0")
    short = msgspec.structs.replace(advert_a, recv_pks=advert_a.recv_pks[:-1])
    net.refused(a, sa_msg(job_id, 0, ADVERTISE, short), "advertises 2 receive keys")
    drv.advertise()

    # phase share
    net.refused(
        a, sa_msg(job_id, 0, ADVERTISE, advert_a), "phase advertise of job 1 round 0 is closed"
    )
    share_a = drv.share_msg(a)
    assert len(share_a.shares) == 3
    missing = msgspec.structs.replace(share_a, shares=share_a.shares[:-1])
    net.refused(a, sa_msg(job_id, 0, SHARE, missing), "shares go to 2 holders", Code.INVALID_MSG)
    net.fails_in_block(a, sa_msg(job_id, 0, SHARE, missing), "expected exactly the 3")
    cut = msgspec.structs.replace(share_a.shares[0], ciphertext=share_a.shares[0].ciphertext[:-1])
    tampered = msgspec.structs.replace(share_a, shares=(cut, *share_a.shares[1:]))
    net.refused(a, sa_msg(job_id, 0, SHARE, tampered), "ciphertext for")
    swapped = msgspec.structs.replace(share_a, shares=tuple(reversed(share_a.shares)))
    net.refused(a, sa_msg(job_id, 0, SHARE, swapped), "in roster order")
    net.ok(a, sa_msg(job_id, 0, SHARE, share_a))  # the honest one is still taken
    drv.share(CLIENTS[1:])

    # phase input
    net.refused(a, submit_update_msg(job_id, 0, plain, 10), "plaintext model", Code.UNAVAILABLE)
    net.refused_in_block(a, submit_update_msg(job_id, 0, plain, 10), "plaintext model")
    junk = net.upload(b"not a masked input")
    net.refused(a, submit_update_msg(job_id, 0, junk, 10), "not a MaskedInput")
    drv.receive()
    ups = updates_for(CLIENTS, 5)
    blob_b = net.upload(drv.masked_blob(b, ups[b.address]))
    net.refused(a, submit_update_msg(job_id, 0, blob_b, 10), "names another sender")
    net.refused_in_block(a, submit_update_msg(job_id, 0, blob_b, 10), "names another sender")
    net.refused(a, sa_msg(job_id, 0, UNMASK, b"\x90"), "phase unmask of job 1 round 0 is not open")
    net.ok(b, submit_update_msg(job_id, 0, blob_b, 10))
    for k in (a, *CLIENTS[2:]):
        net.ok(k, submit_update_msg(job_id, 0, net.upload(drv.masked_blob(k, ups[k.address])), 10))
    net.step()
    assert drv.phase() == UNMASK

    # phase unmask: revealing a survivor's mask key (which would expose its input) is refused
    reveal = drv.unmask_msg(a)
    first = reveal.shares[0]
    assert first.kind == "seed"
    leak = msgspec.structs.replace(
        reveal, shares=(RevealedShare(first.dealer, "key", first.share), *reveal.shares[1:])
    )
    net.refused(a, sa_msg(job_id, 0, UNMASK, leak), "its mask key must never be revealed")
    net.fails_in_block(a, sa_msg(job_id, 0, UNMASK, leak), "must never be revealed")
    net.ok(a, sa_msg(job_id, 0, UNMASK, reveal))
    for k in CLIENTS[1:]:
        net.ok(k, sa_msg(job_id, 0, UNMASK, drv.unmask_msg(k)))
    net.step()
    net.step()
    job = net.job(job_id)
    assert job.status == JobStatus.DONE
    np.testing.assert_array_equal(
        net.model_vec(job.model), expected_model(np.zeros(D, np.float32), ups.values())
    )


# ------------------------------------------------------------------ ckks


def ckks_start(net: PNet, **over: object) -> int:
    job_id = start(net, privacy="ckks", enc=True, **over)
    net.step()
    job = net.job(job_id)
    assert job.status == JobStatus.KEYS
    return job_id


def bundle_blob(net: PNet, keys: CkksKeys, job_id: int, recipients: Iterable[PrivateKey]) -> bytes:
    bundle = KeyBundle([keys.share(job_id=job_id, recipient=enc_pub(k)) for k in recipients])
    return net.upload(encode(bundle))


def publish_msg(net: PNet, keys: CkksKeys, job_id: int) -> AnyMsg:
    net.upload(keys.public_context)
    others = [k for k in CLIENTS if k is not HOLDER]
    return pack(
        "fl/PublishContext",
        PublishContext(job_id, keys.info, bundle_blob(net, keys, job_id, others)),
    )


def ckks_round(net: PNet, keys: CkksKeys, job_id: int, seed: int) -> tuple[np.ndarray, list[int]]:
    r = net.job(job_id).round
    rng = np.random.default_rng(seed)
    samples = [10, 20, 30, 40]
    rows = []
    for k, s in zip(CLIENTS, samples, strict=True):
        x = (0.5 * rng.standard_normal(D)).astype(np.float32)
        rows.append(x)
        blob = encrypt_update(keys, x, job_id=job_id, round_=r, sender=k.address)
        net.ok(k, submit_update_msg(job_id, r, net.upload(blob), s))
    net.step()
    assert net.job(job_id).status == JobStatus.CLOSING
    net.step()
    return np.average(np.stack(rows), axis=0, weights=samples), samples


def test_ckks_job_adds_ciphertexts_that_only_clients_decrypt(ckks_keys: CkksKeys) -> None:
    net = PNet()
    job_id = ckks_start(net)
    net.ok(HOLDER, publish_msg(net, ckks_keys, job_id))
    net.step()
    job = net.job(job_id)
    assert job.status == JobStatus.RUNNING and job.ckks_context == ckks_keys.info
    # another member opens its sealed copy of the secret context from the chain's bundle
    ctx = FlModule.context(net.state(), job_id)
    assert ctx is not None
    raw = net.stores[0].get(ctx.key_shares)
    assert raw is not None
    member = CLIENTS[2]
    share = next(s for s in decode(raw, KeyBundle).shares if s.recipient == enc_pub(member))
    member_keys = CkksKeys.open_share(
        share, job_id=job_id, private_key=ENC[member.address], info=ctx.info
    )
    for r in range(2):
        mean, samples = ckks_round(net, ckks_keys, job_id, seed=10 + r)
        job = net.job(job_id)
        rec = FlModule.round_record(net.state(), job_id, r)
        assert rec is not None and all(rec.accepted) and rec.model == job.model
        assert rec.clients == sorted(k.address for k in CLIENTS)
        blob = net.stores[0].get(rec.model)
        assert blob is not None
        for keys in (ckks_keys, member_keys):
            got = decrypt_aggregate(keys, blob, job_id=job_id, round_=r, n_params=D)
            assert got.total_weight == sum(samples)
            np.testing.assert_allclose(got.mean, mean, atol=1e-4)
    assert net.job(job_id).status == JobStatus.DONE
    # validators hold the public context only
    for app in net.apps:
        engine = app.modules.get(FlModule).engine
        assert isinstance(engine, BlobEngine)
        loaded = list(engine._contexts.values())
        assert [p.context_id for p in loaded] == [ckks_keys.context_id]
        assert not loaded[0].context.is_private()
    # state holds hashes of the contexts, never a context (a secret one is ~0.5 MB)
    assert max(len(v) for v in net.fl_state().values()) < 4096


def test_ckks_bad_inputs_are_refused_with_reasons(
    ckks_keys: CkksKeys, other_keys: CkksKeys
) -> None:
    net = PNet()
    fields = job_fields(
        net,
        privacy="ckks",
        rule="fedavg",
        rule_params={},
        model_params=D,
        rounds=1,
        round_blocks=20,
        reward=1_000_000,
    )
    net.ok(KEYS[0], create_job_msg(**fields))
    net.step()
    job_id = FlModule.jobs(net.state())[-1].id
    net.refused(CLIENTS[0], join_job_msg(job_id), "must carry an enc_key", Code.INVALID_MSG)
    net.fails_in_block(CLIENTS[0], join_job_msg(job_id), "must carry an enc_key")
    net.refused(CLIENTS[0], join_job_msg(job_id, b"", b"\x01" * 31), "32-byte X25519")
    for k in CLIENTS:
        net.ok(k, join_job_msg(job_id, b"", enc_pub(k)))
    net.step()
    net.step()
    assert net.job(job_id).status == JobStatus.KEYS
    net.refused(KEYS[0], join_job_msg(job_id, b"", enc_pub(KEYS[0])), "roster was fixed")

    good = publish_msg(net, ckks_keys, job_id)
    non_holder = next(k for k in CLIENTS if k is not HOLDER)
    net.refused(non_holder, good, "key holder is " + to_bech32(HOLDER.address), Code.UNAUTHORIZED)
    net.fails_in_block(non_holder, good, "key holder is")
    short = bundle_blob(
        net, ckks_keys, job_id, [k for k in CLIENTS if k not in (HOLDER, non_holder)]
    )
    lacking = pack("fl/PublishContext", PublishContext(job_id, ckks_keys.info, short))
    needle = "seals the secret key to 2 keys; the job's other 3 members' enc_keys are needed"
    net.refused(HOLDER, lacking, needle, Code.UNAVAILABLE)
    net.refused_in_block(HOLDER, lacking, needle)
    # an update before the context is published
    early = encrypt_update(
        ckks_keys, np.zeros(D, np.float32), job_id=job_id, round_=0, sender=HOLDER.address
    )
    net.refused(
        HOLDER, submit_update_msg(job_id, 0, net.upload(early), 1), "has no ckks context yet"
    )
    net.ok(HOLDER, good)
    net.step()
    assert net.job(job_id).status == JobStatus.RUNNING
    net.refused(HOLDER, good, "is not waiting for its keys")

    k = CLIENTS[1]
    x = np.full(D, 0.25, np.float32)
    plain = net.upload(to_bytes(params_of(x)))
    log = net.refused(k, submit_update_msg(job_id, 0, plain, 10), "takes only encrypted updates")
    assert "plaintext (safetensors) update" in log, log
    net.refused(k, sa_msg(job_id, 0, ADVERTISE, b"\x90"), "is ckks, not secagg")
    net.refused_in_block(k, submit_update_msg(job_id, 0, plain, 10), "takes only encrypted")
    foreign = net.upload(encrypt_update(other_keys, x, job_id=job_id, round_=0, sender=k.address))
    log = net.refused(k, submit_update_msg(job_id, 0, foreign, 10), "context")
    assert "encrypted under another key" in log, log
    net.refused_in_block(k, submit_update_msg(job_id, 0, foreign, 10), "encrypted under another")
    later = net.upload(encrypt_update(ckks_keys, x, job_id=job_id, round_=1, sender=k.address))
    net.refused(k, submit_update_msg(job_id, 0, later, 10), "round is 1, job 1 expects 0")
    net.refused_in_block(k, submit_update_msg(job_id, 0, later, 10), "round is 1")
    theirs = net.upload(
        encrypt_update(ckks_keys, x, job_id=job_id, round_=0, sender=CLIENTS[2].address)
    )
    net.refused(k, submit_update_msg(job_id, 0, theirs, 10), "ckks upload: sender is")
    # the job goes on with proper uploads
    mean, _ = ckks_round(net, ckks_keys, job_id, seed=3)
    job = net.job(job_id)
    assert job.status == JobStatus.DONE
    blob = net.stores[0].get(job.model)
    assert blob is not None
    got = decrypt_aggregate(ckks_keys, blob, job_id=job_id, round_=0, n_params=D)
    np.testing.assert_allclose(got.mean, mean, atol=1e-4)


def test_a_key_holder_who_never_publishes_ends_the_job_and_refunds(ckks_keys: CkksKeys) -> None:
    net = PNet()
    creator = BankModule.balance(net.state(), KEYS[0].address)
    job_id = ckks_start(net, round_blocks=4)
    job = net.job(job_id)
    deadline = job.deadline
    assert job.escrow_left == 4_000_000
    net.step_until(lambda: net.app.height >= deadline - 1)
    assert net.job(job_id).status == JobStatus.KEYS
    net.step()
    job = net.job(job_id)
    assert job.status == JobStatus.DONE and job.finished == deadline
    assert to_bech32(HOLDER.address) in job.note and "did not publish" in job.note
    assert job.escrow_left == 0 and BankModule.balance(net.state(), ESCROW) == 0
    assert BankModule.balance(net.state(), KEYS[0].address) == creator - FEE
    assert job_id not in [j.id for j in FlModule.active_jobs(net.state())]
    # too late now
    net.refused(HOLDER, publish_msg(net, ckks_keys, job_id), "not waiting for its keys")


# ------------------------------------------------------------------ jobs


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"secagg": SecAggParams(threshold=1, degree=3)}, "threshold must be 2..3"),
        (
            {"secagg": SecAggParams(threshold=2, degree=3), "min_clients": 3},
            "must equal max_clients",
        ),
        ({"secagg": SecAggParams(threshold=2, degree=5)}, "neighbour degree must be 1..3"),
        ({"secagg": None}, "must give its secagg parameters"),
        (
            {"privacy": "ckks", "secagg": None, "ckks": CkksParams(poly_modulus_degree=1000)},
            "ckks: poly_modulus_degree must be one of",
        ),
        ({"secagg": SECAGG, "model_params": 20}, "model_params is 20 but the initial model has 21"),
        ({"secagg": SECAGG, "rule": "median"}, "needs plaintext updates"),
        (
            {
                "secagg": SECAGG,
                "dp": msgspec.structs.replace(dp_config(2), mode="central"),
            },
            "noise must be distributed",
        ),
        ({"secagg": SECAGG, "dp": dp_config(3)}, "must be the job's (4, 2)"),
        (
            {"privacy": "plain", "secagg": SECAGG},
            "secagg parameters are given for a plain job",
        ),
    ],
)
def test_unworkable_private_jobs_are_refused(over: dict[str, object], needle: str) -> None:
    net = PNet()
    fields = job_fields(
        net, privacy="secagg", rule="fedavg", rule_params={}, model_params=D, rounds=2
    )
    fields.update(over)
    net.refused(KEYS[0], create_job_msg(**fields), needle)
    net.step()
    assert FlModule.jobs(net.state()) == []


def test_an_update_admitted_in_one_job_is_checked_again_for_another(ckks_keys: CkksKeys) -> None:
    """Admission checks depend on the job (its privacy mode, context, round), not only on
    the blob and the initial model: a ckks upload admitted to a ckks job must not pass as a
    plaintext update of a plain job with the same initial model (its aggregate could never
    be computed, and no block after it could be verified)."""
    net = PNet()
    k = CLIENTS[0]
    over: dict[str, object] = dict(
        rule="fedavg", rule_params={}, rounds=1, min_clients=1, max_clients=1, reward=1_000
    )
    net.ok(KEYS[0], create_job_msg(**job_fields(net, **over)))
    net.ok(KEYS[0], create_job_msg(**job_fields(net, privacy="ckks", model_params=D, **over)))
    net.step()
    plain_job, ckks_job = (j.id for j in FlModule.jobs(net.state()))
    net.ok(k, join_job_msg(plain_job))
    net.ok(k, join_job_msg(ckks_job, b"", enc_pub(k)))
    net.step()
    net.step()
    net.upload(ckks_keys.public_context)
    bundle = net.upload(encode(KeyBundle([])))  # a one-member roster: nobody to seal to
    net.ok(k, pack("fl/PublishContext", PublishContext(ckks_job, ckks_keys.info, bundle)))
    net.step()
    assert net.job(plain_job).status == net.job(ckks_job).status == JobStatus.RUNNING
    x = np.full(D, 0.5, np.float32)
    h = net.upload(encrypt_update(ckks_keys, x, job_id=ckks_job, round_=0, sender=k.address))
    net.ok(k, submit_update_msg(ckks_job, 0, h, 10))
    net.refused(k, submit_update_msg(plain_job, 0, h, 10), "is not a model blob")
    net.refused_in_block(k, submit_update_msg(plain_job, 0, h, 10), "is not a model blob")
    net.ok(k, submit_update_msg(plain_job, 0, net.upload(to_bytes(params_of(x))), 10))
    net.step()
    net.step()  # both aggregates
    for job_id in (plain_job, ckks_job):
        assert net.job(job_id).status == JobStatus.DONE
    np.testing.assert_array_equal(net.model_vec(net.job(plain_job).model), x)

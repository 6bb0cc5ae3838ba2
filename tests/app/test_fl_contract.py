"""The fl contract and proof of aggregation, driven in process over four app instances.

Each "validator" is a CiferApp with its own state store and blob store; blocks go through
prepare_proposal on the proposer and process_proposal on every validator, as consensus
would drive them, so a tampered aggregate is caught by exactly the code a node runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cifer.app.application import CiferApp, default_modules
from cifer.app.contracts.bank import BankModule
from cifer.app.contracts.fl import (
    ESCROW,
    FlModule,
    JobStatus,
    create_job_msg,
    join_job_msg,
    submit_update_msg,
)
from cifer.app.contracts.reputation import RepState, ReputationModule
from cifer.app.fl_engine import BlobEngine
from cifer.app.module import SYSTEM_TX_PREFIX, Code, decode_system_tx
from cifer.app.node.api_fl import tamper_aggregates
from cifer.app.state import StateOverlay
from cifer.app.txbuilder import make_tx
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey
from cifer.base.store.state import StateStore
from cifer.compute.blobs.store import BlobStore, blob_hash
from cifer.compute.fl.params import to_bytes

from .helpers import CHAIN_ID, FEE, FUND, KEYS, genesis, make_block

SHAPES = {"w": (6, 3), "b": (3,)}
D = 21


def params_of(vec: np.ndarray) -> dict[str, np.ndarray]:
    return {"w": vec[:18].reshape(6, 3).astype(np.float32), "b": vec[18:].astype(np.float32)}


class Net:
    """Four validators in one process; blobs are 'uploaded' to every store."""

    def __init__(self, n: int = 4) -> None:
        self.stores = [BlobStore(None) for _ in range(n)]
        self.apps = [
            CiferApp(StateStore(":memory:"), default_modules(BlobEngine(s))) for s in self.stores
        ]
        g = genesis()
        for a in self.apps:
            a.init_chain(g)
        self.nonces: dict[bytes, int] = {}
        self.mempool: list[bytes] = []

    @property
    def app(self) -> CiferApp:
        return self.apps[0]

    def upload(self, data: bytes, only: Sequence[int] | None = None) -> bytes:
        for i, s in enumerate(self.stores):
            if only is None or i in only:
                s.put(data)
        return blob_hash(data)

    def tx(self, key: PrivateKey, msg: AnyMsg) -> bytes:
        n = self.nonces.get(key.address, 0)
        self.nonces[key.address] = n + 1
        return make_tx(key, CHAIN_ID, n, [msg], fee=FEE)

    def submit(self, key: PrivateKey, msg: AnyMsg) -> tuple[int, str]:
        raw = self.tx(key, msg)
        res = self.app.check_tx(raw)
        if res.code == 0:
            self.mempool.append(raw)
        else:
            self.nonces[key.address] -= 1
        return res.code, res.log

    def step(self, proposer: int = 0, accept: bool = True) -> list[str]:
        """Propose on ``proposer``, process on all, commit; -> the validators' reject reasons."""
        height = self.app.height + 1
        txs = self.apps[proposer].prepare_proposal(height, list(self.mempool), 4 << 20)
        block = make_block(height, txs, app_hash=self.app.info().last_app_hash)
        reasons = [a.process_proposal(block).reason for a in self.apps]
        if accept:
            assert all(r == "" for r in reasons), reasons
            for a in self.apps:
                a.finalize_block(block)
                a.commit()
            included = set(txs)
            self.mempool = [t for t in self.mempool if t not in included]
            assert len({a.info().last_app_hash for a in self.apps}) == 1
        return reasons

    def state(self) -> StateOverlay:
        return StateOverlay(self.app.store)


def job_fields(net: Net, **over: object) -> dict[str, object]:
    """A valid CreateJob (Multi-Krum keeping 3 of 4, 3 rounds), with ``over`` applied."""
    init = net.upload(to_bytes(params_of(np.zeros(D, np.float32))))
    fields: dict[str, object] = dict(
        name="t",
        model="logreg",
        input_shape=[6],
        num_classes=3,
        initial_model=init,
        rule="multi_krum",
        rule_params={"m": "3"},
        byzantine=0,
        privacy="plain",
        rounds=3,
        min_clients=4,
        max_clients=4,
        round_blocks=5,
        reward=3_000_000,
    )
    fields.update(over)
    return fields


def make_job(net: Net, **over: object) -> int:
    code, log = net.submit(KEYS[0], create_job_msg(**job_fields(net, **over)))
    assert code == 0, log
    net.step()
    return FlModule.jobs(net.state())[-1].id


def honest_update(rng: np.random.Generator) -> bytes:
    return to_bytes(
        params_of(np.ones(D, np.float32) + 0.05 * rng.standard_normal(D).astype(np.float32))
    )


def test_job_runs_to_the_end_with_byzantine_rejected_and_rewards_paid() -> None:
    net = Net()
    creator_before = BankModule.balance(net.state(), KEYS[0].address)
    job_id = make_job(net)
    clients = KEYS[1:5]
    for k in clients:
        assert net.submit(k, join_job_msg(job_id))[0] == 0
    net.step()
    net.step()  # round 0 opens at the height after the 4th join
    job = FlModule.job(net.state(), job_id)
    assert job is not None and job.status == JobStatus.RUNNING
    rng = np.random.default_rng(0)
    byz = clients[0]
    for r in range(3):
        for k in clients:
            data = (
                to_bytes(params_of(-50 * np.ones(D, np.float32)))
                if k is byz
                else honest_update(rng)
            )
            h = net.upload(data)
            code, log = net.submit(k, submit_update_msg(job_id, r, h, 100))
            assert code == 0, log
        net.step()  # updates committed, round closes at end of block
        assert FlModule.job(net.state(), job_id).status == JobStatus.CLOSING
        net.step()  # this block starts with the Aggregate
        rec = FlModule.round_record(net.state(), job_id, r)
        assert rec is not None
        assert dict(zip(rec.clients, rec.accepted, strict=True))[byz.address] is False
        assert sum(rec.accepted) == 3
    state = net.state()
    job = FlModule.job(state, job_id)
    assert job.status == JobStatus.DONE and job.escrow_left == 0
    # the model moved towards the honest mean (ones), not towards -50
    final = net.stores[0].get(job.model)
    assert final is not None
    from cifer.compute.fl.params import from_bytes

    w = from_bytes(final)["w"]
    assert np.allclose(w, 3.0, atol=0.2)  # 3 rounds of +1
    rep = net.app.modules.get(ReputationModule)
    assert rep.status(state, byz.address) == RepState.UNRELIABLE
    for k in clients[1:]:
        assert rep.status(state, k.address) == RepState.TRUSTED
        assert BankModule.balance(state, k.address) > FUND - 10 * FEE  # got rewards
    assert BankModule.balance(state, byz.address) == FUND - 4 * FEE  # nothing earned
    assert BankModule.balance(state, ESCROW) == 0
    assert BankModule.balance(state, KEYS[0].address) <= creator_before - FEE
    prov = FlModule.provenance(state, job_id)
    assert prov is not None and prov.model == job.model
    assert prov.contributors == sorted(k.address for k in clients[1:])
    assert len(prov.round_models) == 3 and prov.initial_model == job.spec.initial_model
    # an Unreliable client cannot join another job
    job2 = make_job(net)
    code, log = net.submit(byz, join_job_msg(job2))
    assert code == Code.UNAUTHORIZED and "is Unreliable" in log, log
    net.step()
    assert FlModule.member(net.state(), job2, byz.address) is None


def _run_to_closing(net: Net, job_id: int, submitters: Sequence[PrivateKey]) -> None:
    rng = np.random.default_rng(1)
    for k in submitters:
        assert (
            net.submit(k, submit_update_msg(job_id, 0, net.upload(honest_update(rng)), 10))[0] == 0
        )


def _start(net: Net, **over: object) -> int:
    job_id = make_job(net, **over)
    for k in KEYS[1:5]:
        assert net.submit(k, join_job_msg(job_id))[0] == 0
    net.step()
    net.step()
    return job_id


def test_tampered_aggregate_is_refused_and_the_next_proposer_commits_the_right_one() -> None:
    net = Net()
    job_id = _start(net, rounds=1)
    _run_to_closing(net, job_id, KEYS[1:5])
    net.step()

    net.apps[1].tamper_system = tamper_aggregates
    reasons = net.step(proposer=1, accept=False)
    assert all(
        "differs from this validator's recomputation" in r for r in reasons[0:1] + reasons[2:]
    )
    net.step(proposer=2)  # the next round's proposer is honest
    job = FlModule.job(net.state(), job_id)
    assert job.status == JobStatus.DONE and job.model != bytes(32)
    assert net.stores[0].has(job.model)


def test_omitting_a_due_aggregate_is_refused() -> None:
    net = Net()
    job_id = _start(net, rounds=1)
    _run_to_closing(net, job_id, KEYS[1:5])
    net.step()
    net.apps[1].tamper_system = lambda msgs: []
    reasons = net.step(proposer=1, accept=False)
    assert "block has 0 system messages, this validator computes 1" in reasons[0]


def test_straggler_is_excluded_and_the_round_closes_at_its_deadline() -> None:
    net = Net()
    job_id = _start(net, rounds=1, round_blocks=3, byzantine=0, rule="fedavg", rule_params={})
    _run_to_closing(net, job_id, KEYS[1:4])  # KEYS[4] never submits
    for _ in range(3):
        net.step()
    rec = FlModule.round_record(net.state(), job_id, 0)
    assert rec is not None
    assert rec.stragglers == [KEYS[4].address]
    assert KEYS[4].address not in rec.clients and len(rec.clients) == 3
    rep = net.app.modules.get(ReputationModule)
    assert rep.score(net.state(), KEYS[4].address) < 500_000


def test_bad_inputs_are_rejected_with_a_reason_and_the_job_goes_on() -> None:
    net = Net()
    job_id = _start(net, rounds=2, rule="fedavg", rule_params={}, byzantine=0)
    k = KEYS[1]
    wrong = net.upload(to_bytes({"w": np.zeros((5, 3), np.float32), "b": np.zeros(3, np.float32)}))
    code, log = net.submit(k, submit_update_msg(job_id, 0, wrong, 10))
    assert code == Code.UNAVAILABLE and "has tensors w[5, 3]" in log
    nan = np.zeros(D, np.float32)
    nan[3] = np.nan
    code, log = net.submit(
        k, submit_update_msg(job_id, 0, net.upload(to_bytes(params_of(nan))), 10)
    )
    assert code == Code.UNAVAILABLE and "NaN" in log
    code, log = net.submit(k, submit_update_msg(job_id, 0, b"\x07" * 32, 10))
    assert code == Code.UNAVAILABLE and "no blob 0707" in log
    code, log = net.submit(
        k, submit_update_msg(job_id, 5, net.upload(honest_update(np.random.default_rng(2))), 10)
    )
    assert code != 0 and "not open yet" in log
    # a block whose update blob only the proposer holds is refused by the others
    only0 = net.upload(honest_update(np.random.default_rng(3)), only=[0])
    assert net.submit(k, submit_update_msg(job_id, 0, only0, 10))[0] == 0
    reasons = net.step(accept=False)
    assert reasons[0] == "" and all("no blob" in r for r in reasons[1:])
    for s in net.stores[1:]:
        s.put(net.stores[0].get(only0) or b"")
    net.step()
    # the round goes on with the others
    _run_to_closing(net, job_id, KEYS[2:5])
    net.step()
    net.step()
    code, log = net.submit(k, submit_update_msg(job_id, 0, only0, 10))
    assert code != 0 and "round 0 of job" in log and "closed" in log
    job = FlModule.job(net.state(), job_id)
    assert job.round == 1 and job.status == JobStatus.RUNNING


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"reward": FUND * 10}, "insufficient funds for job reward escrow"),
        ({"rule": "mymod:rule"}, "only built-in rules"),
        ({"rule": "nope"}, "unknown rule 'nope'"),
        ({"privacy": "secagg"}, "must equal max_clients"),
        ({"privacy": "secagg", "max_clients": 1}, "must state model_params"),
        ({"privacy": "homomorphic"}, "privacy mode 'homomorphic' is unknown"),
        ({"privacy": "ckks", "rule": "median"}, "rule 'median' needs plaintext updates"),
        ({"byzantine": 4}, "byzantine must be"),
        ({"initial_model": b"x"}, "initial_model must be"),
    ],
)
def test_bad_jobs_are_refused(over: dict[str, object], needle: str) -> None:
    net = Net()
    before = net.app.info().last_app_hash
    base = {"rule": "fedavg", "rule_params": {}, "rounds": 1, "min_clients": 1, "reward": 1_000}
    fields = job_fields(net, **{**base, **over})
    code, log = net.submit(KEYS[0], create_job_msg(**fields))
    assert code != 0 and needle in log, log
    assert net.app.info().last_app_hash == before
    assert FlModule.jobs(net.state()) == []


def test_system_messages_cannot_come_from_users() -> None:
    net = Net()
    res = net.app.check_tx(SYSTEM_TX_PREFIX + b"whatever")
    assert res.code == Code.UNAUTHORIZED and "block proposers only" in res.log
    agg = AnyMsg("fl/Aggregate", b"\x90")
    code, log = net.submit(KEYS[0], agg)
    assert code == Code.UNAUTHORIZED and "created by block proposers only" in log
    with pytest.raises(Exception, match="not a system tx"):
        decode_system_tx(b"\x92")

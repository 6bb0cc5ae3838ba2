"""CiferApp under the consensus simulator: same app hash everywhere, evidence jails."""

from __future__ import annotations

import random

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts import bank
from cifer.app.contracts.bank import FEE_COLLECTOR
from cifer.app.genesis_builder import account_key, make_genesis
from cifer.app.txbuilder import make_tx
from cifer.base.chain.genesis import Genesis
from cifer.base.consensus.sim.runner import SIM_TIMEOUTS, SimConfig, run
from cifer.base.crypto.keys import PrivateKey
from cifer.base.store.state import StateStore

N = 20
KEYS = [account_key(i) for i in range(N)]


def _genesis(vkeys: list[PrivateKey]) -> Genesis:
    return make_genesis(
        "cifer-sim",
        0,
        [k.address for k in KEYS],
        validator_pubkeys=[k.public.raw for k in vkeys],
        consensus=SIM_TIMEOUTS,
    )


def _tx(rng: random.Random, i: int) -> bytes:
    to = KEYS[(i + 1) % N].address
    return make_tx(KEYS[i % N], "cifer-sim", i // N, [bank.send_msg(to, 1 + rng.randrange(99))])


@pytest.mark.parametrize(("seed", "behaviour"), [(0, "double_vote"), (1, "equivocate")])
def test_simulated_network_agrees_on_app_state(seed: int, behaviour: str) -> None:
    apps: list[CiferApp] = []

    def factory() -> CiferApp:
        apps.append(CiferApp(StateStore(":memory:")))
        return apps[-1]

    cfg = SimConfig(
        seed=seed,
        heights=6,
        behaviours=(behaviour,),
        app_factory=factory,
        genesis_factory=_genesis,
        tx_factory=_tx,
    )
    res = run(cfg)
    assert res.safe, res.violations
    by_height: dict[int, set[bytes]] = {}
    for a in apps:
        by_height.setdefault(a.info().last_height, set()).add(a.info().last_app_hash)
    assert all(len(hashes) == 1 for hashes in by_height.values())
    top = max(apps, key=lambda a: a.info().last_height)
    assert top.balance(FEE_COLLECTOR) > 0  # transfers went through consensus
    top.check_invariants()
    if res.evidence:
        jailed = [v for v in top.validators() if v.jailed]
        assert jailed and all(v.power == 0 for v in jailed)

"""``cifer bench consensus``: throughput of the in-process simulator running the real app.

Four validators run the Cifer application (bank module, SQLite in memory) in one process on
a calm virtual network; clients submit signed ~1 KiB transfers. Every validator verifies
every signature (check_tx on gossip; proposals reuse the per-validator cache), so the wall
clock measures consensus, execution and signature checks together. Since all validators
share one process, this is the cost of N validators' work on one machine, not a network
latency figure (that is ``cifer bench ledger``, with real processes).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from cifer.app.application import CiferApp
from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key, make_genesis
from cifer.app.txbuilder import make_tx
from cifer.base.chain.genesis import Genesis
from cifer.base.consensus.sim.runner import SIM_TIMEOUTS, SimConfig, SimResult, run
from cifer.base.crypto.keys import PrivateKey
from cifer.base.store.state import StateStore

CHAIN_ID = "cifer-bench"
TX_BYTES = 1024


@dataclass(frozen=True)
class ConsensusBenchResult:
    validators: int
    txs: int
    tx_bytes: int
    heights: int
    wall_s: float
    virtual_s: float

    @property
    def tx_per_s(self) -> float:
        return self.txs / self.wall_s

    @property
    def heights_per_s(self) -> float:
        return self.heights / self.wall_s


def signed_transfers(n_txs: int, n_accounts: int, seed: int) -> list[bytes]:
    """``n_txs`` signed transfers of ~1 KiB (memo padding), round-robin over accounts."""
    rng = random.Random(seed)
    keys = [account_key(i) for i in range(n_accounts)]
    nonces = [0] * n_accounts
    out: list[bytes] = []
    for i in range(n_txs):
        a = i % n_accounts
        to = keys[(a + 1 + rng.randrange(n_accounts - 1)) % n_accounts].address
        msgs = [send_msg(to, 1 + rng.randrange(1000))]
        base = make_tx(keys[a], CHAIN_ID, nonces[a], msgs)
        pad = max(0, TX_BYTES - len(base) - 3)
        tx = make_tx(keys[a], CHAIN_ID, nonces[a], msgs, memo="x" * pad)
        nonces[a] += 1
        out.append(tx)
    return out


def _calm_run(
    validators: int, seed: int, commit_timeout_ms: int, accounts: list[bytes], **load: Any
) -> tuple[SimResult, float]:
    """One honest run of the real app on a calm virtual network; returns (result, wall s)."""

    def genesis(keys: list[PrivateKey]) -> Genesis:
        return make_genesis(
            CHAIN_ID,
            funded_accounts=accounts,
            validator_pubkeys=[k.public.raw for k in keys],
            consensus=msgspec.structs.replace(SIM_TIMEOUTS, timeout_commit_ms=commit_timeout_ms),
        )

    cfg = SimConfig(
        validators=validators,
        byzantine=0,
        seed=seed,
        chaos_ms=0,
        drop=0.0,
        duplicate=0.0,
        max_delay_ms=5,
        partitions=False,
        liveness_budget_ms=3_600_000,
        app_factory=lambda: CiferApp(StateStore(":memory:")),
        genesis_factory=genesis,
        **load,
    )
    t0 = time.perf_counter()
    r = run(cfg)
    wall = time.perf_counter() - t0
    if r.violations:
        raise RuntimeError(f"benchmark run broke an invariant: {r.violations}")
    return r, wall


def run_bench(
    n_txs: int = 4000,
    validators: int = 4,
    n_accounts: int = 200,
    seed: int = 0,
    commit_timeout_ms: int = 200,
) -> ConsensusBenchResult:
    """Signed ~1 KiB transfers until all are committed."""
    txs = signed_transfers(n_txs, n_accounts, seed)
    it = iter(txs)
    r, wall = _calm_run(
        validators,
        seed,
        commit_timeout_ms,
        [account_key(i).address for i in range(n_accounts)],
        heights=10**9,
        tx_per_sec=20_000,
        tx_limit=n_txs,
        until_txs=n_txs,
        tx_factory=lambda _rng, _i: next(it),
        tx_router=lambda i: (i - 1) % n_accounts,  # each account's client uses one node
    )
    return ConsensusBenchResult(
        validators, r.committed_txs, len(txs[0]), min(r.heights), wall, r.virtual_ms / 1000
    )


def run_heights(
    heights: int = 200, validators: int = 4, seed: int = 0, commit_timeout_ms: int = 0
) -> ConsensusBenchResult:
    """Empty blocks only: the cost of consensus itself (votes, signatures, app commit)."""
    r, wall = _calm_run(validators, seed, commit_timeout_ms, [], heights=heights, tx_per_sec=0)
    return ConsensusBenchResult(validators, 0, 0, min(r.heights), wall, r.virtual_ms / 1000)

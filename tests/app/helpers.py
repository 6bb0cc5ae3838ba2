"""Helpers for application tests: a genesis with funded accounts and a block driver."""

from __future__ import annotations

from collections.abc import Sequence

from cifer.app.application import CiferApp
from cifer.app.contracts import bank
from cifer.app.genesis_builder import account_key, make_genesis, validator_key
from cifer.app.txbuilder import make_tx
from cifer.base.chain.abci import FinalizeResult
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    commit_hash,
    data_hash,
    evidence_hash,
)
from cifer.base.crypto.keys import PrivateKey
from cifer.base.crypto.multisig import MultisigPolicy, make_policy

CHAIN_ID = "test-chain"
N_ACCOUNTS = 5
FUND = bank.DEFAULT_MIN_FEE * 1_000_000  # 10^9 ucif = 1,000 CIF per test account
FEE = bank.DEFAULT_MIN_FEE

KEYS = [account_key(i) for i in range(N_ACCOUNTS)]
MS_KEYS = [account_key(100 + i) for i in range(3)]
MS_POLICY: MultisigPolicy = make_policy(2, [k.public.raw for k in MS_KEYS])


def genesis(**kw: object) -> Genesis:
    funded = [k.address for k in KEYS] + [MS_POLICY.address]
    return make_genesis(CHAIN_ID, 4, funded, fund_amount=FUND, **kw)  # type: ignore[arg-type]


def make_block(
    height: int,
    txs: Sequence[bytes],
    *,
    chain_id: str = CHAIN_ID,
    app_hash: bytes = b"",
    evidence: Sequence[DuplicateVoteEvidence] = (),
    proposer: bytes | None = None,
) -> Block:
    """A block with consistent hashes; the app only reads height, chain id, txs, evidence."""
    last_commit = None if height == 1 else Commit(height - 1, 0, b"\x01" * 32, [])
    header = Header(
        chain_id=chain_id,
        height=height,
        time_ms=1_000 * height,
        last_block_hash=b"",
        last_commit_hash=commit_hash(last_commit),
        data_hash=data_hash(list(txs)),
        app_hash=app_hash,
        last_results_hash=b"",
        validators_hash=b"",
        next_validators_hash=b"",
        evidence_hash=evidence_hash(list(evidence)),
        proposer=proposer if proposer is not None else validator_key(0).address,
    )
    return Block(header, list(txs), last_commit, list(evidence))


class Chain:
    """Drives one app through blocks the way consensus would (finalize, then commit)."""

    def __init__(self, app: CiferApp) -> None:
        self.app = app

    @property
    def next_height(self) -> int:
        return self.app.info().last_height + 1

    def block(self, txs: Sequence[bytes], evidence: Sequence[DuplicateVoteEvidence] = ()) -> Block:
        return make_block(
            self.next_height, txs, app_hash=self.app.info().last_app_hash, evidence=evidence
        )

    def run(
        self, txs: Sequence[bytes] = (), evidence: Sequence[DuplicateVoteEvidence] = ()
    ) -> FinalizeResult:
        res = self.app.finalize_block(self.block(txs, evidence))
        self.app.commit()
        return res

    def advance_to(self, last_height: int) -> None:
        """Commit empty blocks until ``last_height`` is committed."""
        while self.app.info().last_height < last_height:
            self.run()


def send(
    key: PrivateKey, nonce: int, to: bytes, amount: int, *, fee: int = FEE, chain_id: str = CHAIN_ID
) -> bytes:
    return make_tx(key, chain_id, nonce, [bank.send_msg(to, amount)], fee=fee)

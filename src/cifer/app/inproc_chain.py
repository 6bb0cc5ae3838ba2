"""A whole chain in one process: CiferApp driven through the real block executor.

Benchmarks and tests need chains with thousands of transactions whose headers and commits
are the real thing (linkage, app hashes, validator-set hashes, proposer rotation, > 2/3
precommit signatures), so that proofs built from them are checked exactly as a light
client would check a live network's. Running a localnet for that is slow and not
deterministic; this driver takes the consensus outcome as given instead: every block is
proposed by the validator the rotation names, validated (the app executes it once, in
``process_proposal``, and ``finalize_block`` reuses that) and decided in round 0 by
precommits from every validator whose key the driver holds.

Block times are ``genesis_time_ms + block_time_ms * height``, so the same genesis and txs
give the same chain, byte for byte. With ``home`` the stores live on disk and the chain can
be reopened; without it they are in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cifer.app.application import CiferApp
from cifer.app.genesis_builder import validator_key
from cifer.app.module import Module
from cifer.base.chain.abci import FinalizeResult
from cifer.base.chain.executor import BlockExecutor
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.light import LightBlock
from cifer.base.chain.proofs import StateProof
from cifer.base.chain.provider import ChainReader
from cifer.base.chain.types import (
    PRECOMMIT,
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    ValidatorSet,
    vote_sign_bytes,
)
from cifer.base.crypto.keys import PrivateKey
from cifer.base.store.blocks import BlockStore
from cifer.base.store.sqlite import MEMORY
from cifer.base.store.state import StateStore


@dataclass(frozen=True)
class CommittedBlock:
    block: Block
    commit: Commit
    result: FinalizeResult


class ChainDriverError(RuntimeError):
    """The driver could not decide a block (missing keys, a tx left out, a bad block)."""


class InprocChain:
    """Decides blocks of CiferApp transactions with real headers and signed commits.

    ``keys`` are the validators' consensus keys (default: ``validator_key(i)`` for each
    genesis validator, as :func:`~cifer.app.genesis_builder.make_genesis` uses); they must
    hold more than 2/3 of the power of every set the chain goes through.
    """

    def __init__(
        self,
        genesis: Genesis,
        home: Path | None = None,
        *,
        keys: Sequence[PrivateKey] | None = None,
        block_time_ms: int = 1000,
        modules: Sequence[Module] | None = None,
        invariant_interval: int = 1,
    ) -> None:
        if block_time_ms < 1:
            raise ValueError("block_time_ms must be >= 1")
        self.genesis = genesis
        self.home = home
        self.block_time_ms = block_time_ms

        def path(name: str) -> str:
            return MEMORY if home is None else str(home / name)

        self.state_store = StateStore(path("state.db"))
        self.app = CiferApp(self.state_store, modules, invariant_interval=invariant_interval)
        self.blocks = BlockStore(path("blocks.db"))
        self.executor = BlockExecutor(genesis, self.app, self.blocks, chain_db=path("chain.db"))
        self.executor.handshake()
        if keys is None:
            keys = [validator_key(i) for i in range(len(genesis.validators))]
        self.keys = {k.address: k for k in keys}
        self._reader: ChainReader | None = None

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def height(self) -> int:
        """Last decided height."""
        return self.executor.state.last_height

    def genesis_validators(self) -> ValidatorSet:
        return self.genesis.validator_set()

    # ------------------------------------------------------------------ blocks

    def commit_block(
        self, txs: Sequence[bytes] = (), evidence: Sequence[DuplicateVoteEvidence] = ()
    ) -> CommittedBlock:
        """Propose, validate, decide and apply the next block (txs the proposer's
        prepare_proposal drops are not in it: check ``block.txs``)."""
        ex = self.executor
        h = self.height + 1
        last = self.blocks.load_commit(h - 1) if h > 1 else None
        proposer = ex.proposer_rotation()(0)
        time_ms = self.genesis.genesis_time_ms + self.block_time_ms * h
        block = ex.create_block(proposer, list(txs), last, list(evidence), time_ms)
        try:
            ex.validate_block(block)
        except ValueError as exc:
            raise ChainDriverError(f"block {h} is invalid: {exc}") from exc
        commit = self._sign_commit(ex.validator_set(), block)
        result = ex.apply_block(block, commit)
        return CommittedBlock(block, commit, result)

    def _sign_commit(self, vset: ValidatorSet, block: Block) -> Commit:
        h = block.header.height
        msg = vote_sign_bytes(self.chain_id, PRECOMMIT, h, 0, block.hash())
        sigs = [
            CommitSig(v.address, self.keys[v.address].sign(msg))
            for v in vset.validators  # sorted by address, like a node's commit
            if v.address in self.keys
        ]
        power = sum(vset.power(s.validator) for s in sigs)
        if power < vset.quorum():
            raise ChainDriverError(
                f"the driver holds keys for {power} of {vset.total_power} power at height {h}, "
                f"a commit needs {vset.quorum()}"
            )
        return Commit(h, 0, block.hash(), sigs)

    def commit_txs(self, txs: Iterable[bytes], per_block: int = 1000) -> list[CommittedBlock]:
        """Commit ``txs`` in order, ``per_block`` to a block; raises ChainDriverError if the
        proposer leaves any out (an invalid tx, or a block over the size limit)."""
        if per_block < 1:
            raise ValueError("per_block must be >= 1")
        out: list[CommittedBlock] = []
        batch: list[bytes] = []
        for tx in txs:
            batch.append(tx)
            if len(batch) == per_block:
                out.append(self._commit_all(batch))
                batch = []
        if batch:
            out.append(self._commit_all(batch))
        return out

    def _commit_all(self, txs: list[bytes]) -> CommittedBlock:
        cb = self.commit_block(txs)
        included = set(cb.block.txs)
        left = [i for i, tx in enumerate(txs) if tx not in included]
        if left:
            raise ChainDriverError(
                f"block {cb.block.header.height} left out {len(left)} of {len(txs)} txs "
                f"(first: #{left[0]})"
            )
        return cb

    # ------------------------------------------------------------------ light clients

    def reader(self) -> ChainReader:
        """What a node would serve light clients from this chain's stores."""
        if self._reader is None:
            self._reader = ChainReader(
                self.chain_id,
                self.genesis_validators(),
                self.blocks,
                self.state_store,
                self.executor.results_at,
                self.executor.validators_at,
            )
        return self._reader

    def light_blocks(self, start: int = 1, end: int | None = None) -> list[LightBlock]:
        """Headers ``start..end`` (default: to the top) with commits and announced sets."""
        top = self.height if end is None else end
        out: list[LightBlock] = []
        while start <= top:
            page = self.reader().light_blocks(start, top)
            if not page:
                break
            out.extend(page)
            start = page[-1].header.height + 1
        return out

    def state_proof(self, key: bytes, height: int | None = None) -> StateProof:
        return self.reader().state_proof(key, height)

    def close(self) -> None:
        self.state_store.close()
        self.blocks.close()

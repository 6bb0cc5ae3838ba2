"""What a full node serves to light clients, read from its block and state stores.

Headers and commits come from the block store; state proofs from the state store's
history. The one thing no store keeps for every height is the validator set: the chain
state holds only recent sets. A header announces a change only as a hash
(``next_validators_hash``), so the reader rebuilds each new set the way the executor made
it, by applying the validator updates of the block two heights back to the previous set,
and keeps an index of the changes in memory. A set it cannot rebuild is an error, never a
guess: the light client checks every supplied set against the signed hash anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from cifer.base.chain.abci import FinalizeResult
from cifer.base.chain.executor import _apply_updates
from cifer.base.chain.light import LightBlock
from cifer.base.chain.proofs import (
    NotYetProvable,
    ProofError,
    StateProof,
    TxProof,
    build_state_proof,
    build_tx_proof,
)
from cifer.base.chain.types import Header, Validator, ValidatorSet
from cifer.base.store.blocks import BlockStore
from cifer.base.store.state import StateStore

#: Most headers one request may ask for.
MAX_PAGE: Final = 1000
#: A page stops early once it has read this many block bytes (it holds whole blocks).
MAX_PAGE_BLOCK_BYTES: Final = 32 * 1024 * 1024


class _HeaderOnly(msgspec.Struct, array_like=True):
    """A stored block decoded as far as its header (the txs after it are skipped)."""

    header: Header


_head_decoder = msgspec.msgpack.Decoder(_HeaderOnly)


class ChainReader:
    """Light-client data from a node's stores: header pages, validator sets, proofs.

    ``results(h)`` returns the application's results for committed height ``h`` (the
    executor's ``results_at``); ``recent_validators(h)`` optionally gives the set of height
    ``h`` if the chain state still holds it, which spares reading results. Not thread-safe:
    use it from the thread that owns the stores.
    """

    def __init__(
        self,
        chain_id: str,
        genesis_validators: ValidatorSet,
        blocks: BlockStore,
        state: StateStore,
        results: Callable[[int], FinalizeResult | None],
        recent_validators: Callable[[int], ValidatorSet | None] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.genesis_validators = genesis_validators
        self.blocks = blocks
        self.state = state
        self._results = results
        self._recent = recent_validators
        self._indexed = 0  # headers 1.._indexed have been scanned for set changes
        self._vset = genesis_validators  # set of height _indexed + 1
        self._announced: dict[int, list[Validator]] = {}  # header h -> set of h + 1

    @property
    def height(self) -> int:
        """Last decided height (its block and commit are stored)."""
        return self.blocks.height

    def header(self, height: int) -> Header | None:
        raw = self.blocks.load_block_bytes(height)
        return None if raw is None else _head_decoder.decode(raw).header

    # ------------------------------------------------------------------ validator sets

    @property
    def indexed_height(self) -> int:
        return self._indexed

    def index_validators(self, upto: int) -> None:
        """Scan headers up to ``upto`` (at most the chain height) for validator-set changes.

        Incremental: callers with a latency budget call it with growing ``upto``.
        """
        upto = min(upto, self.height)
        while self._indexed < upto:
            n = self._indexed + 1
            h = self.header(n)
            if h is None:
                raise RuntimeError(f"block {n} is missing from the block store")
            if h.validators_hash != self._vset.hash:
                raise RuntimeError(
                    f"header {n} names validator set {h.validators_hash.hex()[:16]}..., the "
                    f"reconstructed set is {self._vset.hash.hex()[:16]}..."
                )
            if h.next_validators_hash != self._vset.hash:
                nxt = self._next_set(n, h.next_validators_hash)
                self._announced[n] = list(nxt.validators)
                self._vset = nxt
            self._indexed = n

    def _next_set(self, n: int, want: bytes) -> ValidatorSet:
        """The set of height n+1 announced by header n: recent history, or the set of n with
        the updates of block n-1 applied (they take effect two heights later)."""
        if self._recent is not None:
            recent = self._recent(n + 1)
            if recent is not None and recent.hash == want:
                return recent
        res = self._results(n - 1) if n > 1 else None
        if res is None:
            raise RuntimeError(f"results of block {n - 1} are missing: cannot rebuild set {n + 1}")
        nxt = ValidatorSet(_apply_updates(list(self._vset.validators), res.validator_updates))
        if nxt.hash != want:
            raise RuntimeError(
                f"rebuilt validator set for height {n + 1} does not match header {n}"
            )
        return nxt

    def next_validators(self, height: int) -> list[Validator] | None:
        """The validators header ``height`` announces for ``height + 1``, if they change."""
        self.index_validators(height)
        return self._announced.get(height)

    # ------------------------------------------------------------------ headers

    def light_blocks(
        self, start: int, end: int, *, max_bytes: int = MAX_PAGE_BLOCK_BYTES
    ) -> list[LightBlock]:
        """Headers ``start..end`` (clipped to the chain and to :data:`MAX_PAGE`) with their
        commits and announced sets; may stop early after ``max_bytes`` of blocks, but always
        returns at least one header if ``start`` is decided."""
        if start < 1:
            raise ValueError("headers start at height 1")
        end = min(end, self.height, start + MAX_PAGE - 1)
        self.index_validators(end)
        out: list[LightBlock] = []
        read = 0
        for n in range(start, end + 1):
            raw = self.blocks.load_block_bytes(n)
            commit = self.blocks.load_commit(n)
            if raw is None or commit is None:
                raise RuntimeError(f"block {n} is missing from the block store")
            out.append(LightBlock(_head_decoder.decode(raw).header, commit, self._announced.get(n)))
            read += len(raw)
            if read >= max_bytes:
                break
        return out

    # ------------------------------------------------------------------ proofs

    def state_proof(self, key: bytes, height: int | None = None) -> StateProof:
        """Proof of ``key``'s write at ``height`` (default: its latest write).

        Raises :class:`NotYetProvable` while header ``height + 1`` is not decided, and
        :class:`ProofError` if there is no such write.
        """
        provable = self.height - 1  # header h+1 must be decided
        if height is None:
            found = self.state.change_heights(key, limit=1)
            if not found:
                raise ProofError(f"key {key.hex()} was never written (in this node's history)")
            height = found[0]
            if height > provable:
                raise NotYetProvable(
                    f"key {key.hex()} was last written at height {height}; its proof needs "
                    f"header {height + 1}, not decided yet"
                )
        elif height > provable:
            raise NotYetProvable(
                f"a proof for height {height} needs header {height + 1}; the chain is at "
                f"{self.height}"
            )
        return build_state_proof(self.state, key, height)

    def tx_proof(self, tx_hash: bytes) -> TxProof:
        loc = self.blocks.tx_location(tx_hash)
        if loc is None:
            raise ProofError(f"no committed tx {tx_hash.hex()}")
        block = self.blocks.load_block(loc[0])
        if block is None:
            raise RuntimeError(f"block {loc[0]} is missing from the block store")
        return build_tx_proof(block, loc[1])

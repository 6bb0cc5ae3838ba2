"""A minimal key-value application, like CometBFT's kvstore example.

Consensus tests and the simulator use it when contracts would only add noise: txs are
``key=value`` bytes, state is a dict, and the app hash chains each block's changes. It
honours the full :class:`~cifer.base.chain.abci.Application` contract, including rejecting
proposals that carry malformed txs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cifer.base.chain.abci import (
    AppInfo,
    CheckTxResult,
    FinalizeResult,
    InitChainResult,
    ProcessResult,
    TxResult,
    ValidatorUpdate,
)
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import Block

MAX_KV_TX = 4096


def check_kv(tx: bytes) -> str | None:
    """Reason ``tx`` is malformed, or None."""
    if not tx or len(tx) > MAX_KV_TX:
        return f"tx must be 1..{MAX_KV_TX} bytes"
    key, sep, _ = tx.partition(b"=")
    if not sep or not key:
        return "tx must look like key=value"
    return None


class KVStoreApp:
    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.height = 0
        self.app_hash = b""
        self._pending: tuple[int, dict[bytes, bytes], bytes] | None = None
        self._pubkeys: dict[bytes, bytes] = {}  # validator address -> pubkey
        self.punished: set[bytes] = set()

    def info(self) -> AppInfo:
        return AppInfo(self.height, self.app_hash)

    def init_chain(self, genesis: Genesis) -> InitChainResult:
        self.app_hash = hashlib.sha256(b"kvstore/genesis" + genesis.chain_id.encode()).digest()
        vals = list(genesis.validator_set().validators)
        self._pubkeys = {v.address: v.pubkey for v in vals}
        return InitChainResult(self.app_hash, vals)

    def check_tx(self, tx: bytes) -> CheckTxResult:
        reason = check_kv(tx)
        return CheckTxResult(code=1, log=reason) if reason else CheckTxResult(code=0, log="")

    def prepare_proposal(self, height: int, txs: list[bytes], max_bytes: int) -> list[bytes]:
        out, total = [], 0
        for tx in txs:
            if check_kv(tx) is None and total + len(tx) <= max_bytes:
                out.append(tx)
                total += len(tx)
        return out

    def process_proposal(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> ProcessResult:
        for i, tx in enumerate(block.txs):
            reason = check_kv(tx)
            if reason:
                return ProcessResult(False, f"tx {i}: {reason}")
        return ProcessResult(True)

    def finalize_block(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> FinalizeResult:
        writes: dict[bytes, bytes] = {}
        h = hashlib.sha256(b"kvstore/block" + self.app_hash)
        h.update(block.header.height.to_bytes(8, "big"))
        for tx in block.txs:
            k, _, v = tx.partition(b"=")
            writes[k] = v
            h.update(len(tx).to_bytes(4, "big") + tx)
        updates = []
        for e in block.evidence:  # equivocation: the offender loses all voting power
            pk = self._pubkeys.get(e.validator)
            if pk is not None and e.validator not in self.punished:
                self.punished.add(e.validator)
                updates.append(ValidatorUpdate(pk, 0))
                h.update(b"punish" + e.validator)
        app_hash = h.digest()
        self._pending = (block.header.height, writes, app_hash)
        results = [TxResult(0, "", []) for _ in block.txs]
        return FinalizeResult(results, updates, app_hash)

    def commit(self) -> None:
        assert self._pending is not None, "commit without finalize_block"
        self.height, writes, self.app_hash = self._pending
        self.state.update(writes)
        self._pending = None

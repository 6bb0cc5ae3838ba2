"""Mempool: txs admitted by check_tx, in arrival order, bounded in count and bytes."""

from __future__ import annotations

from collections import OrderedDict

from cifer.base.chain.abci import Application, CheckTxResult
from cifer.base.chain.types import sha256

#: Mempool refusals, numbered above the application's own check_tx codes.
CODE_DUPLICATE = 100
CODE_COMMITTED = 101
CODE_FULL = 102

DEFAULT_MAX_TXS = 20_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Mempool:
    def __init__(
        self, app: Application, max_txs: int = DEFAULT_MAX_TXS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.app = app
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._recently_committed: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._txs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, tx: bytes) -> CheckTxResult:
        """Admit ``tx`` if new, within limits and accepted by the application."""
        h = sha256(tx)
        if h in self._txs:
            return CheckTxResult(code=CODE_DUPLICATE, log="tx already in mempool")
        if h in self._recently_committed:
            return CheckTxResult(code=CODE_COMMITTED, log="tx already committed")
        if len(self._txs) >= self.max_txs or self._bytes + len(tx) > self.max_bytes:
            return CheckTxResult(code=CODE_FULL, log="mempool is full")
        res = self.app.check_tx(tx)
        if res.ok:
            self._txs[h] = tx
            self._bytes += len(tx)
        return res

    def reap(self, max_bytes: int, max_txs: int) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        for tx in self._txs.values():
            if len(out) >= max_txs or total + len(tx) > max_bytes:
                break
            out.append(tx)
            total += len(tx)
        return out

    def update(self, committed: list[bytes]) -> None:
        """After a block: drop its txs, then re-check the rest (nonces may now be stale)."""
        for tx in committed:
            h = sha256(tx)
            self._recently_committed[h] = None
            old = self._txs.pop(h, None)
            if old is not None:
                self._bytes -= len(old)
        while len(self._recently_committed) > 4 * self.max_txs:
            self._recently_committed.popitem(last=False)
        remaining = list(self._txs.values())
        self._txs.clear()
        self._bytes = 0
        for tx in remaining:
            if self.app.check_tx(tx).ok:
                self._txs[sha256(tx)] = tx
                self._bytes += len(tx)

"""The application interface consensus drives, modelled on CometBFT's ABCI++.

Consensus never looks inside transactions: it asks the application to check them, to build
and judge proposals, and to execute decided blocks. Every call is synchronous and must be
deterministic given the committed state and the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import Block, Validator
from cifer.base.encoding import Canonical

OK = 0


class Attr(Canonical, frozen=True):
    key: str
    value: str


class Event(Canonical, frozen=True):
    type: str
    attrs: list[Attr]


class TxResult(Canonical, frozen=True):
    """Outcome of one tx. Hashed into the next header: logs must be deterministic."""

    code: int
    log: str
    events: list[Event]


class CheckTxResult(Canonical, frozen=True):
    code: int
    log: str
    sender: bytes = b""
    nonce: int = 0
    fee: int = 0

    @property
    def ok(self) -> bool:
        return self.code == OK


class ValidatorUpdate(Canonical, frozen=True):
    """A new power for a validator; power 0 removes it. Takes effect at height h+2."""

    pubkey: bytes
    power: int


class ProcessResult(Canonical, frozen=True):
    accept: bool
    reason: str = ""


class FinalizeResult(Canonical, frozen=True):
    tx_results: list[TxResult]
    validator_updates: list[ValidatorUpdate]
    app_hash: bytes
    events: list[Event] = msgspec.field(default_factory=list)


class AppInfo(Canonical, frozen=True):
    last_height: int
    last_app_hash: bytes


class InitChainResult(Canonical, frozen=True):
    app_hash: bytes
    validators: list[Validator]


class Application(Protocol):
    def info(self) -> AppInfo:
        """Height and app hash of the last committed block (0 and genesis hash before any)."""
        ...

    def init_chain(self, genesis: Genesis) -> InitChainResult:
        """Load genesis state. Called once, before height 1."""
        ...

    def check_tx(self, tx: bytes) -> CheckTxResult:
        """Mempool admission against the committed state (plus pending txs of the sender)."""
        ...

    def prepare_proposal(self, height: int, txs: list[bytes], max_bytes: int) -> list[bytes]:
        """Choose and order txs for a block this node proposes (may add its own)."""
        ...

    def process_proposal(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> ProcessResult:
        """Judge another proposer's block; a rejected block gets a nil prevote.

        ``failed_proposers``: who proposed in the previous height's failed rounds (see
        ``BlockExecutor.failed_proposers``); the same list reaches finalize_block.
        """
        ...

    def finalize_block(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> FinalizeResult:
        """Execute a decided block into a pending state; nothing is durable until commit."""
        ...

    def commit(self) -> None:
        """Make the last finalized block's state durable, atomically."""
        ...

"""CiferApp: the state machine consensus drives through the ABCI-style interface.

Transaction pipeline, identical in every entry point so that what the mempool admits, what
a proposer includes, what validators accept and what a block does all agree:

1. *Stateless* (cached by tx hash): canonical decoding and shape (:func:`decode_tx`), chain
   id, message routing and decoding (:class:`ModuleSet`), signatures
   (:func:`verify_tx_signatures`). Each step is a pure function of the tx bytes, so a
   verified tx is remembered in an LRU and its signatures are checked once per node, not
   once each in check_tx, process_proposal and finalize_block.
2. *Ante* (:meth:`BankModule.ante`): nonce must equal the account's next nonce, fee at
   least the minimum and payable from spendable (unlocked) funds; then nonce+1 and the fee
   moves to the fee collector.
3. *Messages*, inside a snapshot: if any fails, all of the tx's message writes and events
   are reverted, but the fee and nonce from step 2 stay (the tx was valid, its content was
   not). The tx result carries the failing message's code and a deterministic log.

A proposal with a tx failing step 1 or 2 is rejected in process_proposal (an honest
proposer never includes one); failing step 3 is a normal, paid-for failed tx.

State flow: ``check state`` (an overlay over committed state that accumulates the mempool's
pending txs, so a sender may queue consecutive nonces) is reset at every commit; the
mempool then re-checks what it still holds. Blocks execute into a fresh overlay; the
execution done by process_proposal is kept and reused by finalize_block for the same block,
so each block is executed once per node in the common case. commit() writes the block's net
changeset, height and app hash in one SQLite transaction.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cifer.app.contracts.bank import TOTAL_SUPPLY, AccountInfo, BankModule
from cifer.app.contracts.consent import ConsentModule
from cifer.app.contracts.fl import FlEngine, FlModule
from cifer.app.contracts.licensing import LicensingModule
from cifer.app.contracts.market import MarketModule
from cifer.app.contracts.registry import RegistryModule
from cifer.app.contracts.reputation import ReputationModule
from cifer.app.contracts.validators import ValidatorInfo, ValidatorsModule
from cifer.app.module import (
    Code,
    Context,
    ExecMode,
    InvariantViolation,
    Module,
    ModuleSet,
    MsgError,
    SystemUnavailable,
    decode_system_tx,
    encode_system_tx,
    is_system_tx,
    module_address,
)
from cifer.app.state import Changeset, StateOverlay, app_hash
from cifer.base.chain.abci import (
    AppInfo,
    CheckTxResult,
    Event,
    FinalizeResult,
    InitChainResult,
    ProcessResult,
    TxResult,
    ValidatorUpdate,
)
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import (
    AnyMsg,
    Block,
    SignedTx,
    ValidationError,
    Validator,
    decode_tx,
    sha256,
    verify_tx_signatures,
)
from cifer.base.crypto.keys import from_bech32
from cifer.base.encoding import Canonical, EncodingError
from cifer.base.store.state import StateStore

logger = logging.getLogger(__name__)

#: Entries in the verified-tx cache; comfortably above a full mempool plus a few blocks.
DEFAULT_SIG_CACHE = 50_000
_META_CHAIN_ID = "chain_id"
#: Executions of proposals kept for finalize_block (several rounds may propose).
_PROPOSAL_CACHE = 4


def default_modules(fl_engine: FlEngine | None = None) -> list[Module]:
    """The modules a Cifer node runs, in execution order (bank first: the ante uses it).

    ``fl_engine`` gives the fl contract access to blobs (a node passes its blob store);
    without one the node can follow the chain but cannot check updates or aggregates.
    """
    return [
        BankModule(),
        ValidatorsModule(),
        ReputationModule(),
        RegistryModule(),
        ConsentModule(),
        LicensingModule(),
        MarketModule(),
        FlModule(fl_engine),
    ]


@dataclass(frozen=True, slots=True)
class _Checked:
    """A tx that passed the stateless checks, with its messages decoded."""

    tx: SignedTx
    msgs: tuple[tuple[Module, Canonical], ...]


@dataclass(slots=True)
class _Execution:
    """A block executed into an overlay, not yet committed."""

    height: int
    state: StateOverlay
    tx_results: list[TxResult]
    validator_updates: list[ValidatorUpdate]
    events: list[Event]
    changeset: Changeset
    app_hash: bytes
    reject_reason: str  # "" if every tx passed the stateless and ante checks


class CiferApp:
    """The Cifer application (implements :class:`cifer.base.chain.abci.Application`).

    ``CiferApp(StateStore(":memory:"))`` is a fresh node; over an existing store it resumes
    at the committed height (consensus replays any blocks past it). ``invariant_interval``
    runs every module's invariants (for the bank a full scan of balances) after every n-th
    block; 1, the default, is every block. A violation raises :class:`InvariantViolation`
    out of finalize_block: that is a bug, and the node must stop rather than commit it.
    """

    def __init__(
        self,
        state_store: StateStore,
        modules: Sequence[Module] | None = None,
        *,
        sig_cache_size: int = DEFAULT_SIG_CACHE,
        invariant_interval: int = 1,
    ) -> None:
        if invariant_interval < 1:
            raise ValueError("invariant_interval must be >= 1")
        self.store = state_store
        self.modules = ModuleSet(default_modules() if modules is None else modules)
        self.bank = self.modules.get(BankModule)
        self._validators: ValidatorsModule | None = next(
            (m for m in self.modules if isinstance(m, ValidatorsModule)), None
        )
        self.invariant_interval = invariant_interval
        self._lock = threading.RLock()
        self._sig_cache_size = sig_cache_size
        self._verified: OrderedDict[bytes, _Checked] = OrderedDict()
        self._proposals: OrderedDict[bytes, _Execution] = OrderedDict()
        self._pending: _Execution | None = None
        self._check = StateOverlay(state_store)
        self._system_cache: tuple[int, bytes, list[bytes] | str] | None = None
        #: Fault injection for tests of proof of aggregation: rewrites this node's system
        #: messages before it proposes them (a Byzantine proposer). Never set in production.
        self.tamper_system: Callable[[list[AnyMsg]], list[AnyMsg]] | None = None
        #: Proposals this node refused in process_proposal, and the last reason (for /status).
        self.rejected_proposals = 0
        self.last_rejection = ""
        raw_chain = state_store.get_meta(_META_CHAIN_ID)
        self.chain_id = "" if raw_chain is None else raw_chain.decode()
        if self.chain_id:
            # A store corrupted while the node was down is caught before it votes.
            self._run_invariants(self._context(StateOverlay(state_store), ExecMode.QUERY))

    # ------------------------------------------------------------------ ABCI

    def info(self) -> AppInfo:
        with self._lock:
            return AppInfo(self.store.height, self.store.app_hash)

    def init_chain(self, genesis: Genesis) -> InitChainResult:
        """Load every module's genesis and commit it as height 0 (durably, right away).

        Called again on a store already initialised with the same chain id at height 0 (a
        crash before block 1), it returns the stored result instead of loading twice.
        """
        with self._lock:
            if self.chain_id:
                if self.chain_id != genesis.chain_id:
                    raise ValueError(
                        f"state store belongs to chain {self.chain_id!r}, "
                        f"genesis is for {genesis.chain_id!r}"
                    )
                if self.store.height != 0:
                    raise RuntimeError(f"init_chain on a chain at height {self.store.height}")
                return InitChainResult(self.store.app_hash, self._active_validators(genesis))
            genesis.validate()
            names = {m.name for m in self.modules}
            unknown = sorted(set(genesis.app_state) - names)
            if unknown:
                raise ValueError(f"genesis app_state has sections no module reads: {unknown}")
            state = StateOverlay(self.store)
            ctx = Context(
                state, 0, genesis.chain_id, b"", ExecMode.GENESIS, self.modules, genesis=genesis
            )
            for m in self.modules:
                m.init_genesis(ctx, genesis.app_state.get(m.name))
            self._run_invariants(ctx)
            changes = state.changeset()
            h = app_hash(b"", 0, changes)
            self.store.commit(0, h, changes, {_META_CHAIN_ID: genesis.chain_id.encode()})
            self.chain_id = genesis.chain_id
            self._reset_after_commit()
            return InitChainResult(h, self._active_validators(genesis))

    def check_tx(self, tx: bytes) -> CheckTxResult:
        with self._lock:
            if not self.chain_id:
                return CheckTxResult(int(Code.INTERNAL), "chain is not initialised (no genesis)")
            try:
                checked = self._stateless(tx)
            except MsgError as exc:
                return CheckTxResult(exc.code, exc.log)
            body = checked.tx.body
            ctx = self._context(self._check, ExecMode.CHECK, self.store.height + 1)
            ctx.record_events = False
            ctx.external = True
            reason = self._admissible(ctx, checked)
            if reason:
                return CheckTxResult(
                    int(Code.UNAVAILABLE), reason, body.signer, body.nonce, body.fee
                )
            snap = self._check.snapshot()
            try:
                self.bank.ante(ctx, body)
                self._run_msgs(ctx, checked)
            except MsgError as exc:
                self._check.revert(snap)
                return CheckTxResult(exc.code, exc.log, body.signer, body.nonce, body.fee)
            return CheckTxResult(int(Code.OK), "", body.signer, body.nonce, body.fee)

    def prepare_proposal(self, height: int, txs: list[bytes], max_bytes: int) -> list[bytes]:
        """The block's system txs, then, in order, the txs that pass stateless, external
        and ante checks in sequence."""
        with self._lock:
            ctx = self._context(StateOverlay(self.store), ExecMode.BLOCK, height)
            ctx.record_events = False
            ctx.external = True
            ctx.proposer = module_address("prepare")  # unknown here; the overlay is discarded
            system = self._system_txs(height)
            if isinstance(system, str):
                logger.warning("height %d: proposing without system txs: %s", height, system)
                system = []
            elif self.tamper_system is not None:
                msgs = self.tamper_system([decode_system_tx(raw) for raw in system])
                system = [encode_system_tx(m) for m in msgs]
            out: list[bytes] = list(system)
            size = sum(len(raw) for raw in system)
            for raw in system:
                self._deliver_system(ctx, raw)
            for raw in txs:
                if is_system_tx(raw):
                    continue
                if size + len(raw) > max_bytes:
                    continue  # a smaller tx further on may still fit
                _, admissible = self._deliver(ctx, raw)
                if admissible:
                    out.append(raw)
                    size += len(raw)
            return out

    def process_proposal(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> ProcessResult:
        with self._lock:
            reason = self._check_block_target(block)
            if reason:
                return ProcessResult(False, reason)
            exe = self._execute(block, tuple(failed_proposers), verify=True)
            if exe.reject_reason:
                self.rejected_proposals += 1
                self.last_rejection = f"height {block.header.height}: {exe.reject_reason}"
                logger.warning("refusing proposal at %s", self.last_rejection)
                return ProcessResult(False, exe.reject_reason)
            self._proposals[_block_key(block, failed_proposers)] = exe
            while len(self._proposals) > _PROPOSAL_CACHE:
                self._proposals.popitem(last=False)
            return ProcessResult(True)

    def finalize_block(
        self, block: Block, failed_proposers: Sequence[bytes] = ()
    ) -> FinalizeResult:
        with self._lock:
            reason = self._check_block_target(block)
            if reason:
                raise ValueError(f"finalize_block: {reason}")
            exe = self._proposals.pop(_block_key(block, failed_proposers), None)
            if exe is None:
                exe = self._execute(block, tuple(failed_proposers), verify=False)
            self._pending = exe
            return FinalizeResult(
                exe.tx_results, exe.validator_updates, exe.app_hash, list(exe.events)
            )

    def commit(self) -> None:
        with self._lock:
            exe = self._pending
            if exe is None:
                raise RuntimeError("commit() without a finalized block")
            self.store.commit(exe.height, exe.app_hash, exe.changeset)
            self._pending = None
            self._reset_after_commit()

    # ------------------------------------------------------------------ queries

    @property
    def height(self) -> int:
        return self.store.height

    def view(self) -> tuple[StateOverlay, int]:
        """A read-only overlay of committed state and its height (for queries)."""
        with self._lock:
            return StateOverlay(self.store), self.store.height

    def balance(self, address: bytes | str) -> int:
        """Committed balance in ucif."""
        with self._lock:
            return self.bank.balance(StateOverlay(self.store), _addr(address))

    def nonce(self, address: bytes | str) -> int:
        """Next nonce of the account in committed state."""
        with self._lock:
            return self.bank.nonce(StateOverlay(self.store), _addr(address))

    def pending_nonce(self, address: bytes | str) -> int:
        """Next nonce counting txs this node's mempool has admitted (what a client should use)."""
        with self._lock:
            return self.bank.nonce(self._check, _addr(address))

    def account(self, address: bytes | str) -> AccountInfo:
        """Balance, nonce and vesting; locked/spendable as of the next block's height."""
        with self._lock:
            return self.bank.account_info(
                StateOverlay(self.store), _addr(address), self.store.height + 1
            )

    def validators(self) -> list[ValidatorInfo]:
        with self._lock:
            if self._validators is None:
                return []
            return self._validators.infos(StateOverlay(self.store))

    def total_supply(self) -> int:
        return TOTAL_SUPPLY

    def check_invariants(self) -> None:
        """Run every module's invariants against committed state (raises if broken)."""
        with self._lock:
            self._run_invariants(self._context(StateOverlay(self.store), ExecMode.QUERY))

    # ------------------------------------------------------------------ internals

    def _context(self, state: StateOverlay, mode: ExecMode, height: int | None = None) -> Context:
        h = self.store.height + 1 if height is None else height
        return Context(state, h, self.chain_id, b"", mode, self.modules)

    def _reset_after_commit(self) -> None:
        self._check = StateOverlay(self.store)
        self._proposals.clear()

    def _active_validators(self, genesis: Genesis) -> list[Validator]:
        if self._validators is None:
            return list(genesis.validator_set().validators)
        return self._validators.active(StateOverlay(self.store))

    def _check_block_target(self, block: Block) -> str:
        h = block.header
        if not self.chain_id:
            return "chain is not initialised (no genesis)"
        if h.chain_id != self.chain_id:
            return f"block is for chain {h.chain_id[:64]!r}, this chain is {self.chain_id!r}"
        if h.height != self.store.height + 1:
            return f"block height {h.height}, application expects {self.store.height + 1}"
        return ""

    def _stateless(self, raw: bytes) -> _Checked:
        """Steps that depend on the tx bytes only; cached by hash (raises MsgError)."""
        if is_system_tx(raw):
            raise MsgError(
                "system transactions are created by block proposers only", Code.UNAUTHORIZED
            )
        key = sha256(raw)
        hit = self._verified.get(key)
        if hit is not None:
            self._verified.move_to_end(key)
            return hit
        try:
            tx = decode_tx(raw)
        except (EncodingError, ValidationError) as exc:
            raise MsgError(f"malformed tx: {exc}", Code.MALFORMED_TX) from None
        body = tx.body
        if body.chain_id != self.chain_id:
            raise MsgError(
                f"tx is for chain {body.chain_id[:64]!r}, this chain is {self.chain_id!r}",
                Code.WRONG_CHAIN,
            )
        msgs = tuple(self.modules.decode_all(body.msgs, body.signer))
        try:
            verify_tx_signatures(tx)
        except ValueError as exc:  # ValidationError, or a malformed multisig policy
            raise MsgError(f"signature check failed: {exc}", Code.BAD_SIGNATURE) from None
        checked = _Checked(tx, msgs)
        self._verified[key] = checked
        while len(self._verified) > self._sig_cache_size:
            self._verified.popitem(last=False)
        return checked

    def _run_msgs(self, ctx: Context, checked: _Checked) -> None:
        """Run a tx's messages; MsgError names the failing message (caller reverts)."""
        signer = checked.tx.body.signer
        for i, (module, msg) in enumerate(checked.msgs):
            try:
                module.handle(ctx, msg, signer)
            except MsgError as exc:
                raise MsgError(f"message {i} ({module.name}): {exc.log}", exc.code) from None
            except InvariantViolation:
                raise
            except Exception as exc:
                # A module bug: logged loudly, but a deterministic failed tx (every node
                # hits the same exception on the same input) rather than a halted chain.
                logger.exception("module %s raised while handling message %d", module.name, i)
                raise MsgError(
                    f"message {i} ({module.name}): internal error {type(exc).__name__}",
                    Code.INTERNAL,
                ) from None

    def _deliver(self, ctx: Context, raw: bytes) -> tuple[TxResult, bool]:
        """Execute one tx in a block; returns its result and whether a block may contain it."""
        try:
            checked = self._stateless(raw)
        except MsgError as exc:
            return TxResult(exc.code, exc.log, []), False
        state = ctx.state
        ctx.events = []
        if ctx.external:
            reason = self._admissible(ctx, checked)
            if reason:
                return TxResult(int(Code.UNAVAILABLE), reason, []), False
        try:
            self.bank.ante(ctx, checked.tx.body)
        except MsgError as exc:
            return TxResult(exc.code, exc.log, []), False
        snap = state.snapshot()
        mark = len(ctx.events)
        try:
            self._run_msgs(ctx, checked)
        except MsgError as exc:
            state.revert(snap)
            del ctx.events[mark:]
            return TxResult(exc.code, exc.log, ctx.events), True
        return TxResult(int(Code.OK), "", ctx.events), True

    def _admissible(self, ctx: Context, checked: _Checked) -> str:
        signer = checked.tx.body.signer
        for i, (module, msg) in enumerate(checked.msgs):
            reason = module.admissible(ctx, msg, signer)
            if reason:
                return f"message {i} ({module.name}): {reason}"
        return ""

    def _system_txs(self, height: int) -> list[bytes] | str:
        """System txs the block at ``height`` must start with, or why they cannot be had.

        Computed from committed state only (so proposer and validators agree on the input)
        and cached per committed state, since a node both proposes and verifies a block.
        """
        key = (self.store.height, self.store.app_hash)
        if self._system_cache is not None and self._system_cache[:2] == key:
            return self._system_cache[2]
        ctx = self._context(StateOverlay(self.store), ExecMode.BLOCK, height)
        ctx.record_events = False
        ctx.external = True
        out: list[bytes] | str
        try:
            out = [
                encode_system_tx(self.modules.pack_system(msg))
                for m in self.modules
                for msg in m.propose_system(ctx)
            ]
        except SystemUnavailable as exc:
            out = str(exc)
        self._system_cache = (key[0], key[1], out)
        return out

    def _deliver_system(self, ctx: Context, raw: bytes) -> TxResult:
        ctx.events = []
        try:
            module, msg = self.modules.decode_system(decode_system_tx(raw))
        except MsgError as exc:
            return TxResult(exc.code, exc.log, [])
        snap = ctx.state.snapshot()
        try:
            module.handle_system(ctx, msg)
        except MsgError as exc:
            ctx.state.revert(snap)
            return TxResult(exc.code, f"system ({module.name}): {exc.log}", [])
        except InvariantViolation:
            raise
        except Exception as exc:
            logger.exception("module %s raised on a system message", module.name)
            ctx.state.revert(snap)
            log = f"system ({module.name}): internal error {type(exc).__name__}"
            return TxResult(int(Code.INTERNAL), log, [])
        return TxResult(int(Code.OK), "", ctx.events)

    def _check_system(self, block: Block, n_system: int) -> str:
        """Why the block's leading system txs are not what this node computes, or ""."""
        expected = self._system_txs(block.header.height)
        if isinstance(expected, str):
            return f"cannot verify the block's system messages: {expected}"
        got = list(block.txs[:n_system])
        if got == expected:
            return ""
        if len(got) != len(expected):
            return (
                f"block has {len(got)} system messages, this validator computes "
                f"{len(expected)} for height {block.header.height}"
            )
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a != b and not self._system_matches(a, b):
                return (
                    f"system message {i} ({decode_system_tx(b).type}) differs from this "
                    "validator's recomputation"
                )
        return ""

    def _system_matches(self, got: bytes, expected: bytes) -> bool:
        try:
            mod_a, msg_a = self.modules.decode_system(decode_system_tx(got))
            mod_b, msg_b = self.modules.decode_system(decode_system_tx(expected))
        except MsgError:
            return False
        return mod_a is mod_b and type(msg_a) is type(msg_b) and mod_a.system_matches(msg_a, msg_b)

    def _execute(
        self, block: Block, failed_proposers: tuple[bytes, ...], *, verify: bool
    ) -> _Execution:
        """Run a block. ``verify`` (process_proposal) also recomputes its system messages
        and checks what its txs reference outside state; applying a committed block
        (``verify=False``) trusts both, so it never waits on I/O."""
        height = block.header.height
        state = StateOverlay(self.store)
        ctx = Context(
            state, height, self.chain_id, block.header.proposer, ExecMode.BLOCK, self.modules
        )
        ctx.failed_proposers = failed_proposers
        n_system = 0
        while n_system < len(block.txs) and is_system_tx(block.txs[n_system]):
            n_system += 1
        reject = ""
        if any(is_system_tx(raw) for raw in block.txs[n_system:]):
            reject = "a system tx follows a user tx (system txs come first)"
        elif verify:
            reject = self._check_system(block, n_system)
        for m in self.modules:
            m.begin_block(ctx, block)
        block_events = ctx.events
        results: list[TxResult] = []
        for raw in block.txs[:n_system]:
            results.append(self._deliver_system(ctx, raw))
        ctx.external = verify
        for i, raw in enumerate(block.txs[n_system:], start=n_system):
            result, admissible = self._deliver(ctx, raw)
            results.append(result)
            if not admissible and not reject:
                reject = f"tx {i}: {result.log}"
        ctx.events = block_events
        updates: list[ValidatorUpdate] = []
        for m in self.modules:
            updates.extend(m.end_block(ctx))
        if self._validators is not None:
            updates = self._validators.filter_updates(ctx, updates)
        if height % self.invariant_interval == 0:
            self._run_invariants(ctx)
        changes = state.changeset()
        return _Execution(
            height=height,
            state=state,
            tx_results=results,
            validator_updates=updates,
            events=block_events,
            changeset=changes,
            app_hash=app_hash(self.store.app_hash, height, changes),
            reject_reason=reject,
        )

    def _run_invariants(self, ctx: Context) -> None:
        for m in self.modules:
            m.invariants(ctx)


def _addr(address: bytes | str) -> bytes:
    return from_bech32(address) if isinstance(address, str) else address


def _block_key(block: Block, failed_proposers: Sequence[bytes]) -> bytes:
    """Identity of a whole block and its consensus inputs: the header hash alone trusts
    header/body consistency, which the chain layer checks but the app does not rely on."""
    return sha256(block.to_bytes() + b"".join(sorted(failed_proposers)))

"""Block executor: builds, validates and applies blocks against the chain state.

It owns the consensus-level state (heights, hashes, validator sets, proposer priorities)
and drives the application through the ABCI calls. Order of writes when a block is decided:
block + commit to the block store, finalize_block, results to the block store, app commit,
chain state. Each step is durable before the next, so :meth:`BlockExecutor.handshake` can
always finish an interrupted block on restart (as CometBFT's handshake does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from cifer.base import encoding
from cifer.base.chain.abci import Application, FinalizeResult, TxResult, ValidatorUpdate
from cifer.base.chain.genesis import ConsensusParams, Genesis
from cifer.base.chain.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    ValidationError,
    Validator,
    ValidatorSet,
    check_block_shape,
    commit_hash,
    data_hash,
    evidence_hash,
)
from cifer.base.crypto import merkle
from cifer.base.encoding import Canonical
from cifer.base.store.blocks import BlockStore
from cifer.base.store.sqlite import connect


class Priority(Canonical, frozen=True):
    address: bytes
    priority: int


class ValidatorsAt(Canonical, frozen=True):
    height: int
    validators: list[Validator]


class ChainState(Canonical, frozen=True):
    """Consensus state after ``last_height`` (what the next block must build on)."""

    chain_id: str
    last_height: int
    last_block_hash: bytes
    last_block_time_ms: int
    last_results_hash: bytes
    app_hash: bytes
    validators: list[Validator]  # set for height last_height + 1
    next_validators: list[Validator]  # set for last_height + 2
    priorities: list[Priority]  # proposer priorities of ``validators`` at round 0
    history: list[ValidatorsAt]  # recent validator sets, for evidence checks
    evidence_seen: list[bytes]  # offenses already punished (see DuplicateVoteEvidence.offense)
    #: round-0 priorities of height ``last_height``: with the next block's ``last_commit.round``
    #: they name who proposed in that height's failed rounds (empty in older data dirs)
    last_priorities: list[Priority] = msgspec.field(default_factory=list)


class ChainStateStore:
    def __init__(self, path: str) -> None:
        self._db = connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS chain_state (id INTEGER PRIMARY KEY, v BLOB)")

    def load(self) -> ChainState | None:
        row = self._db.execute("SELECT v FROM chain_state WHERE id = 0").fetchone()
        return None if row is None else encoding.decode(bytes(row[0]), ChainState)

    def save(self, state: ChainState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO chain_state (id, v) VALUES (0, ?)", (encoding.encode(state),)
        )


class ResultsStore:
    """FinalizeResult per height, so an app commit without a chain-state save can be finished."""

    def __init__(self, path: str) -> None:
        self._db = connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS results (height INTEGER PRIMARY KEY, v BLOB)")

    def save(self, height: int, result: FinalizeResult) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO results (height, v) VALUES (?, ?)",
            (height, encoding.encode(result)),
        )

    def load(self, height: int) -> FinalizeResult | None:
        row = self._db.execute("SELECT v FROM results WHERE height = ?", (height,)).fetchone()
        return None if row is None else encoding.decode(bytes(row[0]), FinalizeResult)


def results_hash(results: Sequence[TxResult]) -> bytes:
    return merkle.root([encoding.encode(r) for r in results])


# ----------------------------------------------------------------- proposer selection


def increment_priorities(vset: ValidatorSet, prios: dict[bytes, int]) -> bytes:
    """One step of weighted round-robin (CometBFT's rule): returns the proposer chosen."""
    for v in vset.validators:
        prios[v.address] += v.power
    chosen = max(vset.validators, key=lambda v: (prios[v.address], _neg(v.address)))
    prios[chosen.address] -= vset.total_power
    return chosen.address


def _neg(addr: bytes) -> bytes:
    # ties go to the smallest address: invert bytes so max() prefers it
    return bytes(255 - b for b in addr)


@dataclass
class ProposerRotation:
    """Proposers of successive rounds at one height, from the height's starting priorities."""

    vset: ValidatorSet
    prios: dict[bytes, int]
    cache: list[bytes]

    def __call__(self, round: int) -> bytes:
        while len(self.cache) <= round:
            self.cache.append(increment_priorities(self.vset, self.prios))
        return self.cache[round]


def _rotation_cycle(vset: ValidatorSet) -> int:
    """Rounds worth walking: every validator has proposed within ``total_power`` rounds."""
    return min(vset.total_power, 64 * len(vset.validators))


def _center(prios: dict[bytes, int]) -> None:
    if prios:
        avg = sum(prios.values()) // len(prios)
        for k in prios:
            prios[k] -= avg


# ----------------------------------------------------------------- the executor


class BlockExecutor:
    def __init__(
        self,
        genesis: Genesis,
        app: Application,
        blocks: BlockStore,
        chain_db: str = ":memory:",
    ) -> None:
        self.genesis = genesis
        self.params: ConsensusParams = genesis.consensus
        self.app = app
        self.blocks = blocks
        self._states = ChainStateStore(chain_db)
        self._results = ResultsStore(chain_db)
        self.state = self._states.load() or self._init_chain()
        self._vset_cache: tuple[int, ValidatorSet] | None = None

    @property
    def chain_id(self) -> str:
        return self.state.chain_id

    def _init_chain(self) -> ChainState:
        res = self.app.init_chain(self.genesis)
        gvals = ValidatorSet(res.validators or self.genesis.validator_set().validators)
        vals = list(gvals.validators)
        state = ChainState(
            chain_id=self.genesis.chain_id,
            last_height=0,
            last_block_hash=b"",
            last_block_time_ms=self.genesis.genesis_time_ms,
            last_results_hash=results_hash([]),
            app_hash=res.app_hash,
            validators=vals,
            next_validators=vals,
            priorities=[Priority(v.address, 0) for v in vals],
            history=[ValidatorsAt(1, vals)],
            evidence_seen=[],
        )
        self._states.save(state)
        return state

    # -------------------------------------------------------------- queries

    def validator_set(self) -> ValidatorSet:
        """Validators for the next height (the one consensus is working on)."""
        h = self.state.last_height + 1
        if self._vset_cache is None or self._vset_cache[0] != h:
            self._vset_cache = (h, ValidatorSet(self.state.validators))
        return self._vset_cache[1]

    def validators_at(self, height: int) -> ValidatorSet | None:
        for entry in reversed(self.state.history):
            if entry.height <= height:
                return ValidatorSet(entry.validators)
        return None

    def proposer_rotation(self) -> ProposerRotation:
        return ProposerRotation(
            self.validator_set(), {p.address: p.priority for p in self.state.priorities}, []
        )

    def failed_proposers(self, block: Block) -> list[bytes]:
        """Proposers of the rounds of the previous height that decided nothing, sorted.

        ``block.last_commit.round`` is R, the round in which height h-1 was decided; rounds
        0..R-1 failed because their proposer sent an invalid block, sent none, or sent it
        too late. Only the committed block and the chain state enter, so every node (and a
        replay) derives the same list; the local commit's round would not be deterministic.
        """
        s = self.state
        lc = block.last_commit
        if lc is None or lc.round == 0 or not s.last_priorities:
            return []
        vset = self.validators_at(s.last_height)
        if vset is None:
            return []
        rotation = ProposerRotation(vset, {p.address: p.priority for p in s.last_priorities}, [])
        # a validator appears once however often it failed; bound the walk for long outages
        rounds = min(lc.round, _rotation_cycle(vset))
        return sorted({rotation(r) for r in range(rounds)})

    # -------------------------------------------------------------- proposing

    def create_block(
        self,
        proposer: bytes,
        txs: list[bytes],
        last_commit: Commit | None,
        evidence: list[DuplicateVoteEvidence],
        time_ms: int,
    ) -> Block:
        s = self.state
        height = s.last_height + 1
        ev = self._usable_evidence(evidence)
        chosen = self.app.prepare_proposal(height, txs, self.params.max_block_bytes)
        chosen = chosen[: self.params.max_block_txs]
        header = Header(
            chain_id=s.chain_id,
            height=height,
            time_ms=max(time_ms, s.last_block_time_ms + 1),
            last_block_hash=s.last_block_hash,
            last_commit_hash=commit_hash(last_commit),
            data_hash=data_hash(chosen),
            app_hash=s.app_hash,
            last_results_hash=s.last_results_hash,
            validators_hash=self.validator_set().hash,
            next_validators_hash=ValidatorSet(s.next_validators).hash,
            evidence_hash=evidence_hash(ev),
            proposer=proposer,
        )
        return Block(header, chosen, last_commit if height > 1 else None, ev)

    def _usable_evidence(
        self, evidence: list[DuplicateVoteEvidence]
    ) -> list[DuplicateVoteEvidence]:
        out: list[DuplicateVoteEvidence] = []
        seen: set[bytes] = set()
        for e in evidence:
            try:
                self.check_evidence(e)
            except ValidationError:
                continue
            if e.offense() not in seen:
                seen.add(e.offense())
                out.append(e)
        return out

    # -------------------------------------------------------------- validating

    def validate_block(self, block: Block) -> None:
        """Everything a validator checks before prevoting for a block; raises with a reason."""
        s = self.state
        h = block.header
        check_block_shape(block)
        expect = {
            "chain_id": s.chain_id,
            "height": s.last_height + 1,
            "last_block_hash": s.last_block_hash,
            "app_hash": s.app_hash,
            "last_results_hash": s.last_results_hash,
            "validators_hash": self.validator_set().hash,
            "next_validators_hash": ValidatorSet(s.next_validators).hash,
        }
        for name, want in expect.items():
            if getattr(h, name) != want:
                raise ValidationError(f"block header {name} does not match the chain state")
        if h.time_ms <= s.last_block_time_ms:
            raise ValidationError("block time must be after the previous block's")
        if h.proposer not in self.validator_set():
            raise ValidationError("block proposer is not a validator")
        if len(block.txs) > self.params.max_block_txs:
            raise ValidationError(f"block has more than {self.params.max_block_txs} txs")
        if sum(len(t) for t in block.txs) > self.params.max_block_bytes:
            raise ValidationError(f"block txs exceed {self.params.max_block_bytes} bytes")
        if block.last_commit is not None:
            last_vset = self.validators_at(s.last_height)
            if last_vset is None:
                raise ValidationError("no validator set for the previous height")
            if block.last_commit.block_hash != s.last_block_hash:
                raise ValidationError("last commit is not for the previous block")
            last_vset.verify_commit(s.chain_id, s.last_block_hash, block.last_commit)
        seen: set[bytes] = set()
        for e in block.evidence:
            self.check_evidence(e)
            if e.offense() in seen:
                raise ValidationError("block carries two pieces of evidence for one offense")
            seen.add(e.offense())
        res = self.app.process_proposal(block, self.failed_proposers(block))
        if not res.accept:
            raise ValidationError(f"application rejected the block: {res.reason}")

    def check_evidence(self, e: DuplicateVoteEvidence) -> None:
        s = self.state
        height = s.last_height + 1
        if e.height >= height or e.height < 1:
            raise ValidationError("evidence is from a height not yet committed")
        if height - e.height > self.params.max_evidence_age:
            raise ValidationError("evidence is too old")
        if e.offense() in s.evidence_seen:
            raise ValidationError("evidence was already committed")
        vset = self.validators_at(e.height)
        if vset is None:
            raise ValidationError("no validator set known for the evidence height")
        e.verify(s.chain_id, vset)

    def results_at(self, height: int) -> FinalizeResult | None:
        """The application's results for a committed height (tx codes and logs)."""
        return self._results.load(height)

    def verify_decided(self, block: Block, commit: Commit) -> None:
        """Block sync: a block from a peer is decided iff its commit carries > 2/3 power."""
        if block.header.height != self.state.last_height + 1:
            raise ValidationError("synced block is not the next height")
        if commit.height != block.header.height:
            raise ValidationError("synced commit is for another height")
        self.validator_set().verify_commit(self.state.chain_id, block.hash(), commit)
        self.validate_block(block)

    # -------------------------------------------------------------- applying

    def apply_block(self, block: Block, commit: Commit) -> FinalizeResult:
        """Persist and execute a decided block; returns the application's results."""
        if self.blocks.height < block.header.height:
            self.blocks.save(block, commit)
        result = self.app.finalize_block(block, self.failed_proposers(block))
        self._results.save(block.header.height, result)
        self.app.commit()
        self._advance(block, result)
        return result

    def _advance(self, block: Block, result: FinalizeResult) -> None:
        s = self.state
        h = block.header.height
        vset = self.validator_set()
        prios = {p.address: p.priority for p in s.priorities}
        increment_priorities(vset, prios)  # one rotation step per height
        next_vals = _apply_updates(s.next_validators, result.validator_updates)
        # validators for h+1 were fixed at h-1; the updates from h take effect at h+2
        new_current = s.next_validators
        new_prios = {v.address: prios.get(v.address, -vset.total_power) for v in new_current}
        _center(new_prios)
        history = list(s.history)
        if history[-1].validators != list(new_current):
            history.append(ValidatorsAt(h + 1, list(new_current)))
        # keep every set evidence may still name: those after the cutoff and the one active at it
        cutoff = h + 1 - self.params.max_evidence_age
        older = [x for x in history if x.height <= cutoff]
        history = older[-1:] + [x for x in history if x.height > cutoff]
        self.state = ChainState(
            chain_id=s.chain_id,
            last_height=h,
            last_block_hash=block.hash(),
            last_block_time_ms=block.header.time_ms,
            last_results_hash=results_hash(result.tx_results),
            app_hash=result.app_hash,
            validators=list(new_current),
            next_validators=next_vals,
            priorities=[Priority(a, p) for a, p in sorted(new_prios.items())],
            history=history,
            evidence_seen=self._prune_seen(
                [*s.evidence_seen, *(e.offense() for e in block.evidence)], h
            ),
            last_priorities=list(s.priorities),
        )
        self._states.save(self.state)

    def _prune_seen(self, seen: list[bytes], height: int) -> list[bytes]:
        # evidence older than max_evidence_age is refused anyway, so its record can go
        oldest = height + 1 - self.params.max_evidence_age
        return [k for k in seen if int.from_bytes(k[-8:], "big") >= oldest]

    def handshake(self) -> int:
        """Finish what a crash interrupted and replay stored blocks; returns blocks replayed."""
        info = self.app.info()
        replayed = 0
        if info.last_height == self.state.last_height + 1:
            # the app committed a block whose chain-state update was lost
            block = self.blocks.load_block(info.last_height)
            result = self._results.load(info.last_height)
            if block is None or result is None:
                raise RuntimeError(
                    f"cannot recover height {info.last_height}: block or results lost"
                )
            self._advance(block, result)
        elif info.last_height != self.state.last_height:
            raise RuntimeError(
                f"application at height {info.last_height}, chain state at "
                f"{self.state.last_height}: stores are inconsistent"
            )
        while self.state.last_height < self.blocks.height:
            h = self.state.last_height + 1
            block, commit = self.blocks.load_block(h), self.blocks.load_commit(h)
            assert block is not None and commit is not None
            self.apply_block(block, commit)
            replayed += 1
        return replayed


def _apply_updates(vals: list[Validator], updates: list[ValidatorUpdate]) -> list[Validator]:
    by_key = {v.pubkey: v.power for v in vals}
    for u in updates:
        if u.power < 0:
            raise ValidationError("validator power cannot be negative")
        by_key[u.pubkey] = u.power
    out = [Validator(pk, p) for pk, p in by_key.items() if p > 0]
    if not out:
        raise ValidationError("validator updates would leave no validators")
    return sorted(out, key=lambda v: v.address)

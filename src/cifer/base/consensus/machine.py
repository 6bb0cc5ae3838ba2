"""The Tendermint consensus algorithm as a pure state machine.

Follows Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
(2018); comments cite its line numbers. Events go in (proposals, votes, timeouts) and actions
come out (broadcast, schedule a timeout, decide); there is no I/O and no clock, so a simulator
can drive it through any schedule. Block validity and block creation are delegated to a
:class:`BlockSource`, which must itself be deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from cifer.base.chain.genesis import ConsensusParams
from cifer.base.chain.types import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Proposal,
    ValidatorSet,
    Vote,
)
from cifer.base.consensus.privval import DoubleSignError, Signer
from cifer.base.consensus.votes import HeightVotes
from cifer.base.crypto.keys import verify

#: Votes for rounds further ahead than this are dropped (bounds memory under spam).
MAX_ROUNDS_AHEAD = 1000


class Step(IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMIT = 4  # decided; waiting for the next height


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Round timeouts in ms: base + delta * round, so they grow until the network is synchronous."""

    propose: int = 3000
    propose_delta: int = 500
    prevote: int = 1000
    prevote_delta: int = 500
    precommit: int = 1000
    precommit_delta: int = 500
    commit: int = 200

    @classmethod
    def from_params(cls, p: ConsensusParams) -> Timeouts:
        return cls(
            p.timeout_propose_ms,
            p.timeout_propose_delta_ms,
            p.timeout_prevote_ms,
            p.timeout_prevote_delta_ms,
            p.timeout_precommit_ms,
            p.timeout_precommit_delta_ms,
            p.timeout_commit_ms,
        )

    def for_step(self, step: Step, round: int) -> int:
        if step == Step.PROPOSE:
            return self.propose + self.propose_delta * round
        if step == Step.PREVOTE:
            return self.prevote + self.prevote_delta * round
        if step == Step.PRECOMMIT:
            return self.precommit + self.precommit_delta * round
        return self.commit


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class BroadcastProposal:
    proposal: Proposal
    block: Block


@dataclass(frozen=True, slots=True)
class BroadcastVote:
    vote: Vote


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    height: int
    round: int
    step: Step
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Decide:
    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class FoundEvidence:
    evidence: DuplicateVoteEvidence


@dataclass(frozen=True, slots=True)
class NeedBlock:
    """> 2/3 precommitted a block this node has not seen: fetch it from peers."""

    height: int
    block_hash: bytes


Action = BroadcastProposal | BroadcastVote | ScheduleTimeout | Decide | FoundEvidence | NeedBlock


class BlockSource(Protocol):
    def propose_block(self, height: int, round: int) -> Block:
        """A new block for this height (the paper's getValue())."""
        ...

    def validate_block(self, block: Block) -> bool:
        """The paper's valid(v): header, commit, evidence and application checks."""
        ...


@dataclass
class _Height:
    """Everything the algorithm keeps for the current height."""

    height: int
    vset: ValidatorSet
    proposers: list[bytes]  # proposer of round r, extended on demand
    round: int = 0
    step: Step = Step.PROPOSE
    locked_value: Block | None = None
    locked_round: int = -1
    valid_value: Block | None = None
    valid_round: int = -1
    decided: Block | None = None
    proposals: dict[int, Proposal] = field(default_factory=dict)
    blocks: dict[bytes, Block] = field(default_factory=dict)
    validity: dict[bytes, bool] = field(default_factory=dict)
    votes: HeightVotes | None = None
    prevote_timeout_done: set[int] = field(default_factory=set)  # line 34, once per round
    precommit_timeout_done: set[int] = field(default_factory=set)  # line 47
    line36_done: set[int] = field(default_factory=set)
    need_block_sent: set[bytes] = field(default_factory=set)


class ProposerSchedule(Protocol):
    def __call__(self, round: int) -> bytes: ...


class Machine:
    """One validator's (or observer's) consensus state. ``signer`` None = non-voting follower."""

    def __init__(
        self,
        chain_id: str,
        signer: Signer | None,
        source: BlockSource,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.signer = signer
        self.address = signer.address if signer else b""
        self.source = source
        self.timeouts = timeouts or Timeouts()
        self.h: _Height | None = None
        self._out: list[Action] = []

    # ------------------------------------------------------------------ public events

    @property
    def height(self) -> int:
        return self.h.height if self.h else 0

    @property
    def round(self) -> int:
        return self.h.round if self.h else 0

    @property
    def step(self) -> Step:
        return self.h.step if self.h else Step.PROPOSE

    def start_height(
        self, height: int, vset: ValidatorSet, proposer: ProposerSchedule
    ) -> list[Action]:
        self._proposer_fn = proposer
        self.h = _Height(height=height, vset=vset, proposers=[], votes=HeightVotes(height, vset))
        self._start_round(0)
        self._run_rules()  # the proposer's own proposal enables its prevote at once
        return self._drain()

    def on_proposal(self, proposal: Proposal, block: Block) -> list[Action]:
        h = self.h
        if h is None or proposal.height != h.height or h.decided is not None:
            return []
        if not self._admit_round(proposal.round):
            return []
        if proposal.proposer != self._proposer(proposal.round):
            return []
        if proposal.round in h.proposals:  # first proposal of a round wins
            return []
        if block.hash() != proposal.block_hash or block.header.height != h.height:
            return []
        if not -1 <= proposal.pol_round < proposal.round:
            return []
        v = h.vset.get(proposal.proposer)
        if v is None or not verify(
            v.pubkey, proposal.sign_bytes(self.chain_id), proposal.signature
        ):
            return []
        h.proposals[proposal.round] = proposal
        h.blocks[proposal.block_hash] = block
        assert h.votes is not None
        h.votes.note_sender(proposal.round, proposal.proposer)
        self._run_rules()
        return self._drain()

    def on_vote(self, vote: Vote) -> list[Action]:
        h = self.h
        if h is None or vote.height != h.height:
            return []
        if vote.type not in (PREVOTE, PRECOMMIT) or not self._admit_round(vote.round):
            return []
        assert h.votes is not None
        if h.votes.get(vote.round, vote.type).has(vote):
            return []  # a gossip repeat: already verified and counted
        v = h.vset.get(vote.validator)
        if v is None or not verify(v.pubkey, vote.sign_bytes(self.chain_id), vote.signature):
            return []
        counted, evidence = h.votes.add(vote)
        if evidence is not None:
            self._out.append(FoundEvidence(evidence))
        if counted and h.decided is None:
            self._run_rules()
        return self._drain()

    def on_block(self, block: Block) -> list[Action]:
        """A block fetched from a peer after :class:`NeedBlock` (or any block of this height)."""
        h = self.h
        if h is None or h.decided is not None or block.header.height != h.height:
            return []
        h.blocks.setdefault(block.hash(), block)
        self._run_rules()
        return self._drain()

    def on_timeout(self, height: int, round: int, step: Step) -> list[Action]:
        h = self.h
        if h is None or height != h.height or h.decided is not None:
            return []
        if step == Step.PROPOSE and round == h.round and h.step == Step.PROPOSE:  # line 57
            self._vote(PREVOTE, NIL)
            h.step = Step.PREVOTE
        elif step == Step.PREVOTE and round == h.round and h.step == Step.PREVOTE:  # line 61
            self._vote(PRECOMMIT, NIL)
            h.step = Step.PRECOMMIT
        elif step == Step.PRECOMMIT and round == h.round:  # line 65
            self._start_round(h.round + 1)
        self._run_rules()
        return self._drain()

    # ------------------------------------------------------------------ internals

    def _admit_round(self, round: int) -> bool:
        assert self.h is not None
        return 0 <= round <= self.h.round + MAX_ROUNDS_AHEAD

    def _proposer(self, round: int) -> bytes:
        h = self.h
        assert h is not None
        while len(h.proposers) <= round:
            h.proposers.append(self._proposer_fn(len(h.proposers)))
        return h.proposers[round]

    def _valid(self, block: Block) -> bool:
        h = self.h
        assert h is not None
        bh = block.hash()
        ok = h.validity.get(bh)
        if ok is None:
            ok = self.source.validate_block(block)
            h.validity[bh] = ok
        return ok

    def _start_round(self, round: int) -> None:  # line 11
        h = self.h
        assert h is not None
        h.round = round
        h.step = Step.PROPOSE
        if self.signer is not None and self._proposer(round) == self.address:
            block = h.valid_value or self.source.propose_block(h.height, round)
            try:
                proposal = self.signer.sign_proposal(h.height, round, h.valid_round, block.hash())
            except DoubleSignError:
                proposal = None
            if proposal is not None:
                h.blocks[proposal.block_hash] = block
                h.proposals[round] = proposal
                h.validity.setdefault(proposal.block_hash, True)  # we built it
                assert h.votes is not None
                h.votes.note_sender(round, self.address)
                self._out.append(BroadcastProposal(proposal, block))
        self._schedule(Step.PROPOSE)

    def _schedule(self, step: Step) -> None:
        h = self.h
        assert h is not None
        self._out.append(
            ScheduleTimeout(h.height, h.round, step, self.timeouts.for_step(step, h.round))
        )

    def _vote(self, typ: int, block_hash: bytes) -> None:
        h = self.h
        if self.signer is None or h is None or self.address not in h.vset:
            return
        try:
            vote = self.signer.sign_vote(typ, h.height, h.round, block_hash)
        except DoubleSignError:
            return
        assert h.votes is not None
        h.votes.add(vote)
        self._out.append(BroadcastVote(vote))

    def _run_rules(self) -> None:
        """Apply the upon-rules until none fires (each firing can enable another)."""
        for _ in range(64):  # each pass either changes state or stops; 64 is ample headroom
            if not self._apply_one_rule():
                return

    def _apply_one_rule(self) -> bool:
        h = self.h
        assert h is not None and h.votes is not None
        if h.decided is not None:
            return False
        votes = h.votes
        # line 49: decide on a block with > 2/3 precommits in any round
        for r in votes.precommit_rounds():
            bh = votes.precommits(r).quorum_block()
            if bh is None or bh == NIL:
                continue
            block = h.blocks.get(bh)
            if block is None:
                if bh not in h.need_block_sent:
                    h.need_block_sent.add(bh)
                    self._out.append(NeedBlock(h.height, bh))
                continue
            if self._valid(block):
                commit = Commit(h.height, r, bh, votes.precommits(r).commit_sigs(bh))
                h.decided = block
                h.step = Step.COMMIT
                self._out.append(Decide(block, commit))
                self._schedule(Step.COMMIT)
                return False
        # line 55: f+1 power at a higher round -> skip to it
        for r in votes.rounds_heard():
            if r > h.round and votes.power_seen(r) >= h.vset.one_third_plus():
                self._start_round(r)
                return True
        r = h.round
        proposal = h.proposals.get(r)
        block = h.blocks.get(proposal.block_hash) if proposal else None
        if h.step == Step.PROPOSE and proposal is not None and block is not None:
            if proposal.pol_round == -1:  # line 22
                ok = self._valid(block) and (h.locked_round == -1 or _same(h.locked_value, block))
                self._vote(PREVOTE, block.hash() if ok else NIL)
                h.step = Step.PREVOTE
                return True
            vr = proposal.pol_round  # line 28
            if votes.prevotes(vr).power_for(proposal.block_hash) >= h.vset.quorum():
                ok = self._valid(block) and (h.locked_round <= vr or _same(h.locked_value, block))
                self._vote(PREVOTE, block.hash() if ok else NIL)
                h.step = Step.PREVOTE
                return True
        prevotes = votes.prevotes(r)
        # line 34: any 2f+1 prevotes -> prevote timeout, once per round
        if h.step == Step.PREVOTE and prevotes.has_quorum_any() and r not in h.prevote_timeout_done:
            h.prevote_timeout_done.add(r)
            self._schedule(Step.PREVOTE)
            return True
        # line 36: proposal + 2f+1 prevotes for it -> lock and precommit, once per round
        if (
            proposal is not None
            and block is not None
            and h.step >= Step.PREVOTE
            and r not in h.line36_done
            and prevotes.power_for(proposal.block_hash) >= h.vset.quorum()
            and self._valid(block)
        ):
            h.line36_done.add(r)
            if h.step == Step.PREVOTE:
                h.locked_value, h.locked_round = block, r
                self._vote(PRECOMMIT, proposal.block_hash)
                h.step = Step.PRECOMMIT
            h.valid_value, h.valid_round = block, r
            return True
        # line 44: 2f+1 nil prevotes -> precommit nil
        if h.step == Step.PREVOTE and prevotes.power_for(NIL) >= h.vset.quorum():
            self._vote(PRECOMMIT, NIL)
            h.step = Step.PRECOMMIT
            return True
        # line 47: any 2f+1 precommits -> precommit timeout, once per round
        if votes.precommits(r).has_quorum_any() and r not in h.precommit_timeout_done:
            h.precommit_timeout_done.add(r)
            self._schedule(Step.PRECOMMIT)
            return True
        return False

    def _drain(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ introspection

    def proposer_of(self, round: int) -> bytes:
        """Address of the proposer of ``round`` at the current height."""
        return self._proposer(round)

    def locked(self) -> tuple[int, bytes | None]:
        h = self.h
        if h is None or h.locked_value is None:
            return -1, None
        return h.locked_round, h.locked_value.hash()

    def valid(self) -> tuple[int, bytes | None]:
        h = self.h
        if h is None or h.valid_value is None:
            return -1, None
        return h.valid_round, h.valid_value.hash()


def _same(a: Block | None, b: Block) -> bool:
    return a is not None and a.hash() == b.hash()

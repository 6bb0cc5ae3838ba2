"""Tendermint rules, driven by hand against one state machine (validator 0 of 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cifer.base.chain.types import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    Block,
    Header,
    Validator,
    ValidatorSet,
    Vote,
    vote_sign_bytes,
)
from cifer.base.consensus.machine import (
    BroadcastProposal,
    BroadcastVote,
    Decide,
    FoundEvidence,
    Machine,
    NeedBlock,
    ScheduleTimeout,
    Step,
    Timeouts,
)
from cifer.base.consensus.privval import Signer
from cifer.base.crypto.keys import PrivateKey

CHAIN = "test-chain"
KEYS = [PrivateKey.from_secret(f"machine-test-{i}") for i in range(4)]
VSET = ValidatorSet([Validator(k.public.raw, 10) for k in KEYS])
ADDR = [k.address for k in KEYS]


def make_block(height: int, tag: int) -> Block:
    h = Header(CHAIN, height, tag, b"", b"", b"", b"", b"", b"", b"", b"", ADDR[0])
    return Block(h, [], None, [])


@dataclass
class Source:
    """Block source whose validity verdicts a test controls."""

    invalid: set[bytes] = field(default_factory=set)
    made: int = 0

    def propose_block(self, height: int, round: int) -> Block:
        self.made += 1
        return make_block(height, 1000 + round)

    def validate_block(self, block: Block) -> bool:
        return block.hash() not in self.invalid


def vote(i: int, typ: int, height: int, round: int, block_hash: bytes) -> Vote:
    sig = KEYS[i].sign(vote_sign_bytes(CHAIN, typ, height, round, block_hash))
    return Vote(typ, height, round, block_hash, ADDR[i], sig)


def proposal_from(i: int, height: int, round: int, block: Block, pol_round: int = -1):
    return Signer(KEYS[i], CHAIN).sign_proposal(height, round, pol_round, block.hash())


def proposers(order: list[int]):
    return lambda r: ADDR[order[r % len(order)]]


def votes_of(actions, typ=None):
    return [
        a.vote
        for a in actions
        if isinstance(a, BroadcastVote) and (typ is None or a.vote.type == typ)
    ]


def new_machine(order: list[int], source: Source | None = None) -> tuple[Machine, list]:
    m = Machine(CHAIN, Signer(KEYS[0], CHAIN), source or Source(), Timeouts())
    return m, m.start_height(1, VSET, proposers(order))


def test_proposer_proposes_and_decides_with_quorum():
    m, acts = new_machine([0])
    props = [a for a in acts if isinstance(a, BroadcastProposal)]
    assert len(props) == 1
    block = props[0].block
    bh = block.hash()
    # own proposal processed: prevote for it
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [bh]
    acts = m.on_vote(vote(1, PREVOTE, 1, 0, bh))
    assert not votes_of(acts, PRECOMMIT)  # 2 of 4 is not a quorum
    acts = m.on_vote(vote(2, PREVOTE, 1, 0, bh))
    assert [v.block_hash for v in votes_of(acts, PRECOMMIT)] == [bh]
    assert m.locked() == (0, bh)
    acts = m.on_vote(vote(1, PRECOMMIT, 1, 0, bh))
    assert not any(isinstance(a, Decide) for a in acts)
    acts = m.on_vote(vote(2, PRECOMMIT, 1, 0, bh))
    decides = [a for a in acts if isinstance(a, Decide)]
    assert len(decides) == 1 and decides[0].block.hash() == bh
    commit = decides[0].commit
    assert {cs.validator for cs in commit.signatures} == {ADDR[0], ADDR[1], ADDR[2]}
    VSET.verify_commit(CHAIN, bh, commit)
    assert m.step == Step.COMMIT


def test_invalid_proposal_gets_nil_prevote():
    src = Source()
    m, _ = new_machine([1], src)
    block = make_block(1, 7)
    src.invalid.add(block.hash())
    acts = m.on_proposal(proposal_from(1, 1, 0, block), block)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [NIL]


def test_proposal_from_wrong_proposer_or_bad_signature_is_ignored():
    m, _ = new_machine([1])
    block = make_block(1, 7)
    assert m.on_proposal(proposal_from(2, 1, 0, block), block) == []
    p = proposal_from(1, 1, 0, block)
    forged = type(p)(p.height, p.round, p.pol_round, p.block_hash, p.proposer, b"\x00" * 64)
    assert m.on_proposal(forged, block) == []
    other = make_block(1, 8)
    assert m.on_proposal(p, other) == []  # block does not match the signed hash
    assert votes_of(m.on_proposal(p, block), PREVOTE)[0].block_hash == block.hash()


def test_propose_timeout_prevotes_nil_and_timeouts_grow():
    m, acts = new_machine([1, 2, 3])
    t0 = [a for a in acts if isinstance(a, ScheduleTimeout)]
    assert t0 == [ScheduleTimeout(1, 0, Step.PROPOSE, 3000)]
    acts = m.on_timeout(1, 0, Step.PROPOSE)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [NIL]
    # a stale timeout does nothing
    assert m.on_timeout(1, 0, Step.PROPOSE) == []
    # 2f+1 prevotes of any kind schedule the prevote timeout exactly once
    m.on_vote(vote(1, PREVOTE, 1, 0, NIL))
    acts = m.on_vote(vote(2, PREVOTE, 1, 0, b"\x01" * 32))
    assert ScheduleTimeout(1, 0, Step.PREVOTE, 1000) in acts
    acts = m.on_vote(vote(3, PREVOTE, 1, 0, b"\x02" * 32))
    assert not any(isinstance(a, ScheduleTimeout) for a in acts)
    acts = m.on_timeout(1, 0, Step.PREVOTE)
    assert [v.block_hash for v in votes_of(acts, PRECOMMIT)] == [NIL]
    for i in (1, 2):
        acts = m.on_vote(vote(i, PRECOMMIT, 1, 0, NIL))
    assert ScheduleTimeout(1, 0, Step.PRECOMMIT, 1000) in acts
    acts = m.on_timeout(1, 0, Step.PRECOMMIT)
    assert m.round == 1
    assert ScheduleTimeout(1, 1, Step.PROPOSE, 3500) in acts  # base + delta * round


def test_nil_prevote_quorum_precommits_nil_without_waiting():
    m, _ = new_machine([1])
    m.on_timeout(1, 0, Step.PROPOSE)
    m.on_vote(vote(1, PREVOTE, 1, 0, NIL))
    acts = m.on_vote(vote(2, PREVOTE, 1, 0, NIL))
    assert [v.block_hash for v in votes_of(acts, PRECOMMIT)] == [NIL]


def _lock_on(m: Machine, block: Block, round: int, proposer: int) -> None:
    m.on_proposal(proposal_from(proposer, 1, round, block), block)
    for i in (1, 2):
        m.on_vote(vote(i, PREVOTE, 1, round, block.hash()))
    assert m.locked() == (round, block.hash())


def _to_round(m: Machine, round: int) -> None:
    # f+1 = 2 validators seen at a higher round make the machine skip to it
    m.on_vote(vote(2, PRECOMMIT, 1, round, NIL))
    m.on_vote(vote(3, PRECOMMIT, 1, round, NIL))
    assert m.round == round


def test_locked_validator_prevotes_nil_for_a_different_new_proposal():
    m, _ = new_machine([1, 2, 3, 1])
    b0 = make_block(1, 10)
    _lock_on(m, b0, 0, 1)
    _to_round(m, 1)
    b1 = make_block(1, 11)
    acts = m.on_proposal(proposal_from(2, 1, 1, b1), b1)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [NIL]
    assert m.locked() == (0, b0.hash())


def test_locked_validator_prevotes_for_its_locked_value_again():
    m, _ = new_machine([1, 2, 3, 1])
    b0 = make_block(1, 10)
    _lock_on(m, b0, 0, 1)
    _to_round(m, 1)
    acts = m.on_proposal(proposal_from(2, 1, 1, b0), b0)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [b0.hash()]


def test_proof_of_lock_from_a_later_round_unlocks():
    m, _ = new_machine([1, 2, 3, 1])
    b0, b1 = make_block(1, 10), make_block(1, 11)
    _lock_on(m, b0, 0, 1)
    # round 1: others prevote b1 (we never saw that proposal in time)
    for i in (1, 2, 3):
        m.on_vote(vote(i, PREVOTE, 1, 1, b1.hash()))
    _to_round(m, 2)
    # round 2's proposer re-proposes b1 with POL round 1 > our lock round 0: we must prevote it
    acts = m.on_proposal(proposal_from(3, 1, 2, b1, pol_round=1), b1)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [b1.hash()]


def test_stale_proof_of_lock_does_not_unlock():
    m, _ = new_machine([1, 2, 3, 1])
    b0, b1 = make_block(1, 10), make_block(1, 11)
    for i in (1, 2, 3):  # round 0: quorum prevoted b1 ...
        m.on_vote(vote(i, PREVOTE, 1, 0, b1.hash()))
    _to_round(m, 1)
    _lock_on(m, b0, 1, 2)  # ... but we locked b0 in round 1
    _to_round(m, 2)
    acts = m.on_proposal(proposal_from(3, 1, 2, b1, pol_round=0), b1)
    assert [v.block_hash for v in votes_of(acts, PREVOTE)] == [NIL]


def test_proposer_reproposes_valid_value_with_its_round():
    m, _ = new_machine([1, 0])
    b0 = make_block(1, 10)
    _lock_on(m, b0, 0, 1)
    assert m.valid() == (0, b0.hash())
    _to_round(m, 1)  # we are round 1's proposer: we must re-propose b0, not a new block
    h = m.h
    assert h is not None and h.proposals[1].block_hash == b0.hash()
    assert h.proposals[1].pol_round == 0


def test_decides_on_precommit_quorum_from_an_earlier_round():
    m, _ = new_machine([1, 2])
    b0 = make_block(1, 10)
    m.on_proposal(proposal_from(1, 1, 0, b0), b0)
    _to_round(m, 1)
    acts = []
    for i in (1, 2, 3):
        acts = m.on_vote(vote(i, PRECOMMIT, 1, 0, b0.hash()))
    assert [a.block.hash() for a in acts if isinstance(a, Decide)] == [b0.hash()]


def test_precommit_quorum_for_unknown_block_asks_for_it_then_decides():
    m, _ = new_machine([1])
    b = make_block(1, 42)
    acts = []
    for i in (1, 2, 3):
        acts += m.on_vote(vote(i, PRECOMMIT, 1, 0, b.hash()))
    assert NeedBlock(1, b.hash()) in acts
    assert not any(isinstance(a, Decide) for a in acts)
    acts = m.on_block(b)
    assert [a.block.hash() for a in acts if isinstance(a, Decide)] == [b.hash()]


def test_f_plus_one_higher_round_messages_skip_rounds_but_f_do_not():
    m, _ = new_machine([1])
    m.on_vote(vote(2, PREVOTE, 1, 5, NIL))
    assert m.round == 0  # one validator (f) is not enough: it could be Byzantine
    m.on_vote(vote(3, PREVOTE, 1, 5, NIL))
    assert m.round == 5


def test_conflicting_votes_are_evidence_and_count_per_value():
    m, _ = new_machine([1])
    a = vote(2, PREVOTE, 1, 0, b"\x01" * 32)
    b = vote(2, PREVOTE, 1, 0, b"\x02" * 32)
    assert not any(isinstance(x, FoundEvidence) for x in m.on_vote(a))
    acts = m.on_vote(b)
    ev = [x.evidence for x in acts if isinstance(x, FoundEvidence)]
    assert len(ev) == 1
    ev[0].verify(CHAIN, VSET)
    h = m.h
    assert h is not None and h.votes is not None
    pv = h.votes.prevotes(0)
    # the equivocator counts once toward "any 2f+1", but toward each value it signed
    assert pv.total == 10
    assert pv.power_for(b"\x01" * 32) == 10 and pv.power_for(b"\x02" * 32) == 10
    # a third value still counts; past the cap (3 values) further ones are refused
    m.on_vote(vote(2, PREVOTE, 1, 0, b"\x03" * 32))
    m.on_vote(vote(2, PREVOTE, 1, 0, b"\x04" * 32))
    assert pv.power_for(b"\x03" * 32) == 10 and pv.power_for(b"\x04" * 32) == 0


def test_votes_with_bad_signatures_or_from_strangers_are_ignored():
    m, _ = new_machine([1])
    v = vote(1, PREVOTE, 1, 0, NIL)
    bad = Vote(v.type, v.height, v.round, v.block_hash, v.validator, b"\x00" * 64)
    stranger = PrivateKey.from_secret("stranger")
    sv = Vote(
        PREVOTE,
        1,
        0,
        NIL,
        stranger.address,
        stranger.sign(vote_sign_bytes(CHAIN, PREVOTE, 1, 0, NIL)),
    )
    other_chain = Vote(
        PREVOTE, 1, 0, NIL, ADDR[1], KEYS[1].sign(vote_sign_bytes("other", PREVOTE, 1, 0, NIL))
    )
    for x in (bad, sv, other_chain):
        m.on_vote(x)
    h = m.h
    assert h is not None and h.votes is not None and h.votes.prevotes(0).total == 0


def test_votes_absurdly_far_ahead_are_dropped():
    m, _ = new_machine([1])
    m.on_vote(vote(1, PREVOTE, 1, 10**6, NIL))
    m.on_vote(vote(2, PREVOTE, 1, 10**6, NIL))
    assert m.round == 0
    m.on_vote(vote(1, PREVOTE, 1, 999, NIL))
    m.on_vote(vote(2, PREVOTE, 1, 999, NIL))
    assert m.round == 999

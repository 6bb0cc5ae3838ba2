"""Vote bookkeeping for one height: power tallies per round and type, and equivocation.

A validator's first vote in a (round, type) is the one counted; a second, different signed
vote is returned as duplicate-vote evidence instead of being counted.
"""

from __future__ import annotations

from cifer.base.chain.types import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CommitSig,
    DuplicateVoteEvidence,
    ValidatorSet,
    Vote,
    make_evidence,
)


class VoteSet:
    """All votes of one type in one round of one height."""

    __slots__ = ("by_block", "by_validator", "total", "vset")

    def __init__(self, vset: ValidatorSet) -> None:
        self.vset = vset
        self.by_validator: dict[bytes, Vote] = {}
        self.by_block: dict[bytes, int] = {}  # block hash (NIL for nil) -> power
        self.total = 0

    def add(self, vote: Vote) -> tuple[bool, DuplicateVoteEvidence | None]:
        """Record a (signature-checked) vote. Returns (counted, evidence-if-equivocation)."""
        prev = self.by_validator.get(vote.validator)
        if prev is not None:
            if prev.block_hash == vote.block_hash:
                return False, None
            return False, make_evidence(prev, vote)
        power = self.vset.power(vote.validator)
        self.by_validator[vote.validator] = vote
        self.by_block[vote.block_hash] = self.by_block.get(vote.block_hash, 0) + power
        self.total += power
        return True, None

    def has_quorum_any(self) -> bool:
        return self.total >= self.vset.quorum()

    def quorum_block(self) -> bytes | None:
        """The block hash (possibly NIL) that has > 2/3 of the power, if any."""
        q = self.vset.quorum()
        for block_hash, power in self.by_block.items():
            if power >= q:
                return block_hash
        return None

    def power_for(self, block_hash: bytes) -> int:
        return self.by_block.get(block_hash, 0)

    def commit_sigs(self, block_hash: bytes) -> list[CommitSig]:
        """Signatures of the votes for ``block_hash``, ordered by validator address."""
        return [
            CommitSig(v.validator, v.signature)
            for addr, v in sorted(self.by_validator.items())
            if v.block_hash == block_hash
        ]


class HeightVotes:
    """Prevotes and precommits of every round at one height."""

    __slots__ = ("_seen_in_round", "_sets", "height", "vset")

    def __init__(self, height: int, vset: ValidatorSet) -> None:
        self.height = height
        self.vset = vset
        self._sets: dict[tuple[int, int], VoteSet] = {}
        # validators heard from per round (any message type), for the f+1 round skip rule
        self._seen_in_round: dict[int, set[bytes]] = {}

    def get(self, round: int, typ: int) -> VoteSet:
        vs = self._sets.get((round, typ))
        if vs is None:
            vs = VoteSet(self.vset)
            self._sets[(round, typ)] = vs
        return vs

    def prevotes(self, round: int) -> VoteSet:
        return self.get(round, PREVOTE)

    def precommits(self, round: int) -> VoteSet:
        return self.get(round, PRECOMMIT)

    def add(self, vote: Vote) -> tuple[bool, DuplicateVoteEvidence | None]:
        counted, evidence = self.get(vote.round, vote.type).add(vote)
        self.note_sender(vote.round, vote.validator)
        return counted, evidence

    def note_sender(self, round: int, validator: bytes) -> None:
        self._seen_in_round.setdefault(round, set()).add(validator)

    def power_seen(self, round: int) -> int:
        return sum(self.vset.power(a) for a in self._seen_in_round.get(round, ()))

    def rounds_heard(self) -> list[int]:
        return sorted(self._seen_in_round)

    def precommit_rounds(self) -> list[int]:
        return sorted(r for (r, t) in self._sets if t == PRECOMMIT)

    def all_votes(self) -> list[Vote]:
        return [v for vs in self._sets.values() for v in vs.by_validator.values()]


def is_nil(block_hash: bytes) -> bool:
    return block_hash == NIL

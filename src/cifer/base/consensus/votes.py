"""Vote bookkeeping for one height: power tallies per round and type, and equivocation.

A validator's first vote in a (round, type) is the one counted; a second, different signed
vote is returned as duplicate-vote evidence instead of being counted.
"""

from __future__ import annotations

from cifer.base.chain.types import (
    PRECOMMIT,
    PREVOTE,
    CommitSig,
    DuplicateVoteEvidence,
    ValidatorSet,
    Vote,
    make_evidence,
)

#: Distinct values one validator may have counted per (round, type); bounds memory under spam.
MAX_VALUES_PER_VALIDATOR = 3


class VoteSet:
    """All votes of one type in one round of one height.

    Power is tallied per block hash, each validator at most once per hash. An equivocating
    validator therefore counts toward each value it signed, exactly as the paper counts
    messages from distinct senders; safety is unaffected because two quorums still share an
    honest validator, and without this an honest replica that saw the "wrong" half of an
    equivocation first could never recognise a proof-of-lock (a liveness bug).
    """

    __slots__ = ("by_block", "by_validator", "total", "votes_for", "vset")

    def __init__(self, vset: ValidatorSet) -> None:
        self.vset = vset
        self.by_validator: dict[bytes, Vote] = {}  # first vote of each validator
        self.votes_for: dict[bytes, dict[bytes, Vote]] = {}  # block hash -> validator -> vote
        self.by_block: dict[bytes, int] = {}  # block hash (NIL for nil) -> power
        self.total = 0  # power of distinct validators that voted at all

    def has(self, vote: Vote) -> bool:
        return self.votes_for.get(vote.block_hash, {}).get(vote.validator) == vote

    def add(self, vote: Vote) -> tuple[bool, DuplicateVoteEvidence | None]:
        """Record a (signature-checked) vote. Returns (counted, evidence-if-equivocation)."""
        addr = vote.validator
        same = self.votes_for.get(vote.block_hash)
        if same is not None and addr in same:
            return False, None
        power = self.vset.power(addr)
        prev = self.by_validator.get(addr)
        evidence = None
        if prev is None:
            self.by_validator[addr] = vote
            self.total += power
        else:
            evidence = make_evidence(prev, vote)
            held = sum(1 for votes in self.votes_for.values() if addr in votes)
            if held >= MAX_VALUES_PER_VALIDATOR:
                return False, evidence
        self.votes_for.setdefault(vote.block_hash, {})[addr] = vote
        self.by_block[vote.block_hash] = self.by_block.get(vote.block_hash, 0) + power
        return True, evidence

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
        votes = self.votes_for.get(block_hash, {})
        return [CommitSig(addr, votes[addr].signature) for addr in sorted(votes)]


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

    def held(self) -> list[tuple[int, int, bytes]]:
        """(round, type, block hash) of every non-empty tally."""
        return sorted(
            (r, t, bh)
            for (r, t), vs in self._sets.items()
            for bh, votes in vs.votes_for.items()
            if votes
        )

    def bitmap(self, round: int, typ: int, block_hash: bytes) -> bytes:
        """Bit i set iff validator i's vote for ``block_hash`` is held."""
        vs = self._sets.get((round, typ))
        votes = vs.votes_for.get(block_hash, {}) if vs is not None else {}
        bits = bytearray((len(self.vset) + 7) // 8)
        for i, v in enumerate(self.vset.validators):
            if v.address in votes:
                bits[i // 8] |= 1 << (i % 8)
        return bytes(bits)

    def missing_from(self, round: int, typ: int, block_hash: bytes, bits: bytes) -> list[Vote]:
        """Votes for ``block_hash`` held here whose bit is not set in a peer's ``bits``."""
        vs = self._sets.get((round, typ))
        if vs is None:
            return []
        votes = vs.votes_for.get(block_hash, {})
        out = []
        for i, v in enumerate(self.vset.validators):
            have = i // 8 < len(bits) and bits[i // 8] >> (i % 8) & 1
            vote = votes.get(v.address)
            if vote is not None and not have:
                out.append(vote)
        return out

"""Byzantine validators for the simulator.

Each one runs an honest replica for its bookkeeping and rewrites what it sends, signing the
extra conflicting messages with its raw key (bypassing the double-sign guard, which is what
makes it Byzantine). Twins are not here: they are two honest replicas sharing one key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cifer.base.chain.types import (
    NIL,
    Block,
    Header,
    Proposal,
    Vote,
    data_hash,
    proposal_sign_bytes,
)
from cifer.base.consensus.messages import ProposalMsg, VoteMsg
from cifer.base.consensus.privval import unguarded_signer
from cifer.base.consensus.replica import Output, Send
from cifer.base.crypto.keys import PrivateKey

BEHAVIOURS = ("silent", "equivocate", "double_vote", "random_votes", "twins", "invalid_block")

#: What an ``invalid_block`` proposer slips into its blocks: not a decodable transaction.
GARBAGE_TX = b"\xc1 not a transaction"


@dataclass
class Rewriter:
    """Turns a Byzantine replica's honest outputs into per-peer sends."""

    behaviour: str
    key: PrivateKey
    chain_id: str
    peers: list[bytes]
    rng: random.Random
    alt_of: dict[bytes, bytes] = field(default_factory=dict)  # our block hash -> twin block

    def rewrite(self, outputs: list[Output]) -> list[Output]:
        out: list[Output] = []
        for o in outputs:
            if not isinstance(o, Send) or o.to is not None:
                out.append(o)
            elif isinstance(o.msg, ProposalMsg) and self.behaviour == "equivocate":
                out.extend(self._equivocate(o.msg))
            elif isinstance(o.msg, ProposalMsg) and self.behaviour == "invalid_block":
                out.append(Send(None, self._poison(o.msg)))
            elif isinstance(o.msg, VoteMsg) and self.behaviour in ("equivocate", "double_vote"):
                out.extend(self._double_vote(o.msg.vote))
            elif isinstance(o.msg, VoteMsg) and self.behaviour == "random_votes":
                fake = self._sign(o.msg.vote, self.rng.randbytes(32))
                out.append(Send(None, VoteMsg(fake)))
            else:
                out.append(o)
        return out

    def _halves(self) -> tuple[list[bytes], list[bytes]]:
        peers = list(self.peers)
        self.rng.shuffle(peers)
        cut = len(peers) // 2
        return peers[:cut], peers[cut:]

    def _sign(self, vote: Vote, block_hash: bytes) -> Vote:
        return unguarded_signer(self.key, self.chain_id)(
            vote.type, vote.height, vote.round, block_hash
        )

    def _equivocate(self, msg: ProposalMsg) -> list[Send]:
        """Two valid-looking blocks for one round, each shown to half of the peers."""
        b = msg.block
        alt = Block(_with(b.header, time_ms=b.header.time_ms + 1), b.txs, b.last_commit, b.evidence)
        twin = self._resign(msg.proposal, alt)
        self.alt_of[msg.proposal.block_hash] = alt.hash()
        a, c = self._halves()
        return [Send(x, msg) for x in a] + [Send(x, twin) for x in c]

    def _resign(self, p: Proposal, block: Block) -> ProposalMsg:
        sig = self.key.sign(
            proposal_sign_bytes(self.chain_id, p.height, p.round, p.pol_round, block.hash())
        )
        return ProposalMsg(
            Proposal(p.height, p.round, p.pol_round, block.hash(), p.proposer, sig), block
        )

    def _poison(self, msg: ProposalMsg) -> ProposalMsg:
        """A correctly signed proposal whose block carries a malformed tx (hashes consistent)."""
        b = msg.block
        txs = [*b.txs, GARBAGE_TX]
        header = _with(b.header, data_hash=data_hash(txs))
        return self._resign(msg.proposal, Block(header, txs, b.last_commit, b.evidence))

    def _double_vote(self, vote: Vote) -> list[Send]:
        """The honest vote to half of the peers, a conflicting one to the other half."""
        other = self.alt_of.get(vote.block_hash)
        if other is None:
            other = self.rng.randbytes(32) if vote.block_hash == NIL else NIL
        a, c = self._halves()
        twin = self._sign(vote, other)
        return [Send(x, VoteMsg(vote)) for x in a] + [Send(x, VoteMsg(twin)) for x in c]


def _with(header: Header, **changes: object) -> Header:
    fields = {f: getattr(header, f) for f in header.__struct_fields__}
    return Header(**(fields | changes))

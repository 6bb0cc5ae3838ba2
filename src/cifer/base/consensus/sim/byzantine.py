"""Byzantine validators for the simulator.

Each one runs an honest replica for its bookkeeping and rewrites what it sends, signing the
extra conflicting messages with its raw key (bypassing the double-sign guard, which is what
makes it Byzantine). Twins are not here: they are two honest replicas sharing one key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cifer.base.chain.types import NIL, Block, Header, Proposal, Vote, proposal_sign_bytes
from cifer.base.consensus.messages import ProposalMsg, VoteMsg
from cifer.base.consensus.privval import unguarded_signer
from cifer.base.consensus.replica import Output, Send
from cifer.base.crypto.keys import PrivateKey

BEHAVIOURS = ("silent", "equivocate", "double_vote", "random_votes", "twins")


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
        h = b.header
        alt_header = Header(
            **{f: getattr(h, f) for f in h.__struct_fields__} | {"time_ms": h.time_ms + 1}
        )
        alt = Block(alt_header, b.txs, b.last_commit, b.evidence)
        p = msg.proposal
        alt_p = Proposal(
            p.height,
            p.round,
            p.pol_round,
            alt.hash(),
            p.proposer,
            self.key.sign(
                proposal_sign_bytes(self.chain_id, p.height, p.round, p.pol_round, alt.hash())
            ),
        )
        self.alt_of[p.block_hash] = alt.hash()
        a, c = self._halves()
        return [Send(x, msg) for x in a] + [Send(x, ProposalMsg(alt_p, alt)) for x in c]

    def _double_vote(self, vote: Vote) -> list[Send]:
        """The honest vote to half of the peers, a conflicting one to the other half."""
        other = self.alt_of.get(vote.block_hash)
        if other is None:
            other = self.rng.randbytes(32) if vote.block_hash == NIL else NIL
        a, c = self._halves()
        twin = self._sign(vote, other)
        return [Send(x, VoteMsg(vote)) for x in a] + [Send(x, VoteMsg(twin)) for x in c]

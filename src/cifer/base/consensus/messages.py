"""Messages replicas exchange. Canonical structs, so the same bytes go over TCP or the simulator."""

from __future__ import annotations

from cifer.base import encoding
from cifer.base.chain.types import Block, Commit, DuplicateVoteEvidence, Proposal, Vote
from cifer.base.encoding import Canonical

#: Largest message a peer may send; bigger frames are refused before decoding.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_SYNC_BLOCKS = 16


class ProposalMsg(Canonical, tag="proposal"):
    proposal: Proposal
    block: Block


class VoteMsg(Canonical, tag="vote"):
    vote: Vote


class EvidenceMsg(Canonical, tag="evidence"):
    evidence: DuplicateVoteEvidence


class TxMsg(Canonical, tag="tx"):
    tx: bytes


class StatusMsg(Canonical, tag="status"):
    """A peer's height, sent periodically so laggards learn they are behind."""

    height: int  # last committed height


class VoteBits(Canonical):
    """Whose votes for one block at one (round, type) a replica holds (bit i = validator i)."""

    round: int
    type: int
    block_hash: bytes
    bits: bytes


class HasVotesMsg(Canonical, tag="has_votes"):
    """What a replica holds at its current height, so peers can send only what is missing.

    Relaying other validators' votes matters: Tendermint's liveness argument assumes any
    message one correct replica received eventually reaches all of them.
    """

    height: int
    round: int
    proposal_rounds: list[int]
    votes: list[VoteBits]


class SyncRequest(Canonical, tag="sync_req"):
    from_height: int


class DecidedBlock(Canonical):
    block: Block
    commit: Commit


class SyncResponse(Canonical, tag="sync_resp"):
    blocks: list[DecidedBlock]


class BlockRequest(Canonical, tag="block_req"):
    height: int
    block_hash: bytes


class BlockResponse(Canonical, tag="block_resp"):
    block: Block


Message = (
    ProposalMsg
    | VoteMsg
    | EvidenceMsg
    | TxMsg
    | StatusMsg
    | HasVotesMsg
    | SyncRequest
    | SyncResponse
    | BlockRequest
    | BlockResponse
)


def encode_message(msg: Message) -> bytes:
    return encoding.encode(msg)


def decode_message(data: bytes) -> Message:
    return encoding.decode(data, Message, max_bytes=MAX_MESSAGE_BYTES)  # type: ignore[arg-type]

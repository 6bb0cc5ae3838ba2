"""Messages replicas exchange. Canonical structs, so the same bytes go over TCP or the simulator."""

from __future__ import annotations

from cifer.base import encoding
from cifer.base.chain.types import Block, Commit, DuplicateVoteEvidence, Proposal, Vote
from cifer.base.encoding import Canonical

#: Largest message a peer may send; bigger frames are refused before decoding.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_SYNC_BLOCKS = 16


class ProposalMsg(Canonical, frozen=True, tag="proposal"):
    proposal: Proposal
    block: Block


class VoteMsg(Canonical, frozen=True, tag="vote"):
    vote: Vote


class EvidenceMsg(Canonical, frozen=True, tag="evidence"):
    evidence: DuplicateVoteEvidence


class TxMsg(Canonical, frozen=True, tag="tx"):
    tx: bytes


class TxsMsg(Canonical, frozen=True, tag="txs"):
    """Several txs in one frame: per-message costs dominate for small txs."""

    txs: list[bytes]


class StatusMsg(Canonical, frozen=True, tag="status"):
    """A peer's height, sent periodically so laggards learn they are behind."""

    height: int  # last committed height


class VoteBits(Canonical, frozen=True):
    """Whose votes for one block at one (round, type) a replica holds (bit i = validator i)."""

    round: int
    type: int
    block_hash: bytes
    bits: bytes


class HasVotesMsg(Canonical, frozen=True, tag="has_votes"):
    """What a replica holds at its current height, so peers can send only what is missing.

    Relaying other validators' votes matters: Tendermint's liveness argument assumes any
    message one correct replica received eventually reaches all of them.
    """

    height: int
    round: int
    proposal_rounds: list[int]
    votes: list[VoteBits]


class SyncRequest(Canonical, frozen=True, tag="sync_req"):
    from_height: int


class DecidedBlock(Canonical, frozen=True):
    block: Block
    commit: Commit


class SyncResponse(Canonical, frozen=True, tag="sync_resp"):
    blocks: list[DecidedBlock]


class BlockRequest(Canonical, frozen=True, tag="block_req"):
    height: int
    block_hash: bytes


class BlockResponse(Canonical, frozen=True, tag="block_resp"):
    block: Block


Message = (
    ProposalMsg
    | VoteMsg
    | EvidenceMsg
    | TxMsg
    | TxsMsg
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

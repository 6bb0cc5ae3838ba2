"""A consensus replica: the state machine wired to the executor, mempool and evidence pool.

Still free of I/O and clocks: the caller passes the current time in, delivers messages and
fires timers, and carries out the returned :class:`Send` and :class:`Schedule` outputs. The
simulator does that with a virtual network; the networked node does it with asyncio and TCP.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from cifer.base.chain.executor import BlockExecutor
from cifer.base.chain.mempool import Mempool
from cifer.base.chain.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    ValidationError,
    sha256,
)
from cifer.base.consensus.machine import (
    Action,
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
from cifer.base.consensus.messages import (
    MAX_SYNC_BLOCKS,
    BlockRequest,
    BlockResponse,
    DecidedBlock,
    EvidenceMsg,
    HasVotesMsg,
    Message,
    ProposalMsg,
    StatusMsg,
    SyncRequest,
    SyncResponse,
    TxMsg,
    TxsMsg,
    VoteBits,
    VoteMsg,
)
from cifer.base.consensus.privval import Signer

MAX_FUTURE_MESSAGES = 2000
MAX_VOTES_PER_REPLY = 256
MAX_TXS_PER_MSG = 10_000
SYNC_RETRY_MS = 250


@dataclass(frozen=True, slots=True)
class Send:
    to: bytes | None  # peer id, or None for every peer
    msg: Message


@dataclass(frozen=True, slots=True)
class Timer:
    height: int
    round: int
    step: Step


@dataclass(frozen=True, slots=True)
class Schedule:
    delay_ms: int
    timer: Timer


@dataclass(frozen=True, slots=True)
class Committed:
    """Observability: this replica committed a block."""

    height: int
    round: int
    block_hash: bytes
    app_hash: bytes
    n_txs: int
    time_ms: int = 0
    tx_hashes: tuple[bytes, ...] = ()


Output = Send | Schedule | Committed


class Replica:
    def __init__(
        self,
        executor: BlockExecutor,
        signer: Signer | None,
        mempool: Mempool | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.executor = executor
        self.signer = signer
        self.mempool = mempool or Mempool(executor.app)
        self.timeouts = timeouts or Timeouts.from_params(executor.params)
        self.machine = Machine(executor.chain_id, signer, self, self.timeouts)
        self.now_ms = 0
        self.evidence: OrderedDict[bytes, DuplicateVoteEvidence] = OrderedDict()
        self._last_commit: Commit | None = executor.blocks.load_commit(executor.state.last_height)
        self._future: list[Message] = []
        self._last_sync_req: dict[bytes, int] = {}
        self._out: list[Output] = []
        self.rejections: list[str] = []  # why blocks were judged invalid (diagnostics)
        self.decided_round: dict[int, int] = {}

    # ------------------------------------------------------------------ BlockSource

    def propose_block(self, height: int, round: int) -> Block:
        assert self.signer is not None
        p = self.executor.params
        txs = self.mempool.reap(p.max_block_bytes, p.max_block_txs)
        return self.executor.create_block(
            self.signer.address, txs, self._last_commit, list(self.evidence.values()), self.now_ms
        )

    def validate_block(self, block: Block) -> bool:
        try:
            self.executor.validate_block(block)
        except ValidationError as exc:
            self.rejections.append(f"h{block.header.height}: {exc}")
            del self.rejections[:-50]
            return False
        return True

    # ------------------------------------------------------------------ inputs

    @property
    def height(self) -> int:
        """Height being decided (last committed + 1)."""
        return self.executor.state.last_height + 1

    def start(self, now_ms: int) -> list[Output]:
        self.now_ms = now_ms
        self._begin_height()
        return self._drain()

    def on_message(self, sender: bytes | None, msg: Message, now_ms: int) -> list[Output]:
        self.now_ms = now_ms
        self._handle(sender, msg)
        return self._drain()

    def on_timer(self, timer: Timer, now_ms: int) -> list[Output]:
        self.now_ms = now_ms
        if timer.step == Step.COMMIT:
            if timer.height == self.height - 1 and self.machine.height == timer.height:
                self._begin_height()
        else:
            self._run(self.machine.on_timeout(timer.height, timer.round, timer.step))
        return self._drain()

    def gossip(self, now_ms: int) -> list[Output]:
        """Periodic status: the last committed height (for block sync) and what this replica
        holds at the current height (peers answer with what it lacks), so lost messages are
        made good once links work again."""
        self.now_ms = now_ms
        self._out.append(Send(None, StatusMsg(self.executor.state.last_height)))
        h = self.machine.h
        if h is not None and h.votes is not None:
            held = h.votes.held()
            bits = [VoteBits(r, t, bh, h.votes.bitmap(r, t, bh)) for r, t, bh in held]
            has = HasVotesMsg(h.height, h.round, sorted(h.proposals), bits)
            self._out.append(Send(None, has))
        return self._drain()

    def submit_txs(
        self, txs: list[bytes], now_ms: int
    ) -> tuple[list[tuple[bool, str]], list[Output]]:
        """Client txs: check each, and gossip the admitted ones together in one message."""
        self.now_ms = now_ms
        results, admitted = [], []
        for tx in txs:
            res = self.mempool.add(tx)
            results.append((res.ok, res.log))
            if res.ok:
                admitted.append(tx)
        if admitted:
            self._out.append(Send(None, TxsMsg(admitted)))
        return results, self._drain()

    def submit_tx(self, tx: bytes, now_ms: int) -> tuple[bool, str, list[Output]]:
        """A client tx: check it, and gossip it if admitted."""
        self.now_ms = now_ms
        res = self.mempool.add(tx)
        if res.ok:
            self._out.append(Send(None, TxMsg(tx)))
        return res.ok, res.log, self._drain()

    # ------------------------------------------------------------------ internals

    def _handle(self, sender: bytes | None, msg: Message) -> None:
        if isinstance(msg, VoteMsg | ProposalMsg):
            h = msg.vote.height if isinstance(msg, VoteMsg) else msg.proposal.height
            if h < self.machine.height or (h == self.machine.height and self._is_decided()):
                return  # a height this replica has finished
            if h > self.machine.height:
                # keep the next height's messages; anything further ahead is for block sync
                if h <= self.height + 1 and len(self._future) < MAX_FUTURE_MESSAGES:
                    self._future.append(msg)
                if sender is not None and h > self.height:
                    self._request_sync(sender)
                return
            if isinstance(msg, VoteMsg):
                self._run(self.machine.on_vote(msg.vote))
            else:
                self._run(self.machine.on_proposal(msg.proposal, msg.block))
        elif isinstance(msg, TxMsg):
            self.mempool.add(msg.tx)
        elif isinstance(msg, TxsMsg):
            for tx in msg.txs[:MAX_TXS_PER_MSG]:
                self.mempool.add(tx)
        elif isinstance(msg, EvidenceMsg):
            self._add_evidence(msg.evidence, gossip=True)
        elif isinstance(msg, StatusMsg):
            if sender is not None and msg.height >= self.height:
                self._request_sync(sender)
        elif isinstance(msg, HasVotesMsg):
            if sender is not None:
                self._serve_missing(sender, msg)
        elif isinstance(msg, SyncRequest):
            if sender is not None:
                self._serve_sync(sender, msg.from_height)
        elif isinstance(msg, SyncResponse):
            self._apply_synced(msg.blocks)
        elif isinstance(msg, BlockRequest):
            block = self._find_block(msg.height, msg.block_hash)
            if block is not None and sender is not None:
                self._out.append(Send(sender, BlockResponse(block)))
        elif isinstance(msg, BlockResponse) and msg.block.header.height == self.machine.height:
            self._run(self.machine.on_block(msg.block))

    def _request_sync(self, peer: bytes) -> None:
        last = self._last_sync_req.get(peer)
        if last is None or self.now_ms - last >= SYNC_RETRY_MS:
            self._last_sync_req[peer] = self.now_ms
            self._out.append(Send(peer, SyncRequest(self.height)))

    def _is_decided(self) -> bool:
        return self.machine.step == Step.COMMIT

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, BroadcastVote | BroadcastProposal):
                m: VoteMsg | ProposalMsg
                if isinstance(a, BroadcastVote):
                    m = VoteMsg(a.vote)
                else:
                    m = ProposalMsg(a.proposal, a.block)
                self._out.append(Send(None, m))
            elif isinstance(a, ScheduleTimeout):
                self._out.append(Schedule(a.delay_ms, Timer(a.height, a.round, a.step)))
            elif isinstance(a, Decide):
                self._commit(a.block, a.commit)
            elif isinstance(a, FoundEvidence):
                self._add_evidence(a.evidence, gossip=True)
            elif isinstance(a, NeedBlock):
                self._out.append(Send(None, BlockRequest(a.height, a.block_hash)))

    def _commit(self, block: Block, commit: Commit) -> None:
        result = self.executor.apply_block(block, commit)
        self._last_commit = commit
        self.decided_round[block.header.height] = commit.round
        self.mempool.update(block.txs)
        for e in block.evidence:
            self.evidence.pop(e.offense(), None)
        self._out.append(
            Committed(
                block.header.height,
                commit.round,
                block.hash(),
                result.app_hash,
                len(block.txs),
                block.header.time_ms,
                tuple(sha256(t) for t in block.txs),
            )
        )

    def _begin_height(self) -> None:
        ex = self.executor
        # drop evidence that has become too old or was committed meanwhile
        for k, e in list(self.evidence.items()):
            try:
                ex.check_evidence(e)
            except ValidationError:
                del self.evidence[k]
        self._run(
            self.machine.start_height(self.height, ex.validator_set(), ex.proposer_rotation())
        )
        pending, self._future = self._future, []
        for m in pending:
            self._handle(None, m)

    def _add_evidence(self, e: DuplicateVoteEvidence, gossip: bool) -> None:
        k = e.offense()
        if k in self.evidence:
            return
        try:
            self.executor.check_evidence(e)
        except ValidationError:
            # evidence for the height being decided is checked against the current set
            if e.height != self.height:
                return
            try:
                e.verify(self.executor.chain_id, self.executor.validator_set())
            except ValidationError:
                return
        self.evidence[k] = e
        if gossip:
            self._out.append(Send(None, EvidenceMsg(e)))

    def _serve_missing(self, to: bytes, msg: HasVotesMsg) -> None:
        h = self.machine.h
        if h is None or h.votes is None or msg.height != h.height:
            return
        theirs = {(vb.round, vb.type, vb.block_hash): vb.bits for vb in msg.votes}
        sent = 0
        for key in h.votes.held():
            for vote in h.votes.missing_from(*key, theirs.get(key, b"")):
                if sent >= MAX_VOTES_PER_REPLY:
                    break
                self._out.append(Send(to, VoteMsg(vote)))
                sent += 1
        # the proposal of the peer's round (and of ours) if it lacks them: blocks are big
        for r in sorted({msg.round, h.round}):
            p = h.proposals.get(r)
            if p is not None and r not in msg.proposal_rounds and p.block_hash in h.blocks:
                self._out.append(Send(to, ProposalMsg(p, h.blocks[p.block_hash])))

    def _serve_sync(self, to: bytes, from_height: int) -> None:
        store = self.executor.blocks
        out: list[DecidedBlock] = []
        h = max(1, from_height)
        while h <= store.height and len(out) < MAX_SYNC_BLOCKS:
            block, commit = store.load_block(h), store.load_commit(h)
            if block is None or commit is None:
                break
            out.append(DecidedBlock(block, commit))
            h += 1
        if out:
            self._out.append(Send(to, SyncResponse(out)))

    def _apply_synced(self, blocks: list[DecidedBlock]) -> None:
        advanced = False
        for d in blocks:
            if d.block.header.height != self.height:
                continue
            try:
                self.executor.verify_decided(d.block, d.commit)
            except ValidationError as exc:
                self.rejections.append(f"sync h{d.block.header.height}: {exc}")
                return
            self._commit(d.block, d.commit)
            advanced = True
        if advanced:
            self._begin_height()

    def _find_block(self, height: int, block_hash: bytes) -> Block | None:
        h = self.machine.h
        if h is not None and h.height == height and block_hash in h.blocks:
            return h.blocks[block_hash]
        block = self.executor.blocks.load_block(height)
        if block is not None and block.hash() == block_hash:
            return block
        return None

    def _drain(self) -> list[Output]:
        out, self._out = self._out, []
        return out

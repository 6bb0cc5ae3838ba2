"""The node process: the replica driven by asyncio, TCP peers, a WAL and the HTTP API.

All consensus logic lives in :class:`~cifer.base.consensus.replica.Replica`; this module is
the I/O edge. It feeds the replica peer messages and timer firings, carries out its
outputs (send, schedule, commit notifications), records the WAL, and serves the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cifer.app.application import CiferApp, default_modules
from cifer.app.fl_engine import BlobEngine
from cifer.app.node.config import Home, NodeConfig, read_key
from cifer.base.chain.executor import BlockExecutor
from cifer.base.chain.genesis import load_genesis
from cifer.base.chain.mempool import Mempool
from cifer.base.chain.types import sha256
from cifer.base.consensus.machine import Step
from cifer.base.consensus.messages import (
    Message,
    ProposalMsg,
    VoteMsg,
    decode_message,
    encode_message,
)
from cifer.base.consensus.privval import FileSignStateStore, Signer
from cifer.base.consensus.replica import Committed, Output, Replica, Schedule, Send, Timer
from cifer.base.consensus.wal import WAL, WalMessage, WalTimeout
from cifer.base.encoding import EncodingError
from cifer.base.p2p.network import Limits, PeerAddress, PeerNetwork
from cifer.base.store.blocks import BlockStore
from cifer.base.store.state import StateStore
from cifer.compute.blobs import BlobFetcher, BlobStore

log = logging.getLogger("cifer.node")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class BlockEvent:
    height: int
    hash: bytes
    round: int
    time_ms: int
    app_hash: bytes
    tx_hashes: list[bytes]


class Node:
    def __init__(self, home: Path) -> None:
        self.home = Home(home)
        self.config = NodeConfig.load(self.home.config_file)
        self.genesis = load_genesis(self.home.genesis_file)
        self.node_key = read_key(self.home.node_key_file)
        self.validator_key = (
            read_key(self.home.validator_key_file)
            if self.home.validator_key_file.exists()
            else None
        )
        data = self.home.data
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        self.blobs = BlobStore(data / "blobs", cfg.blob_max_bytes)
        self.blob_fetcher = BlobFetcher(self.blobs, cfg.blob_peers, cfg.blob_fetch_timeout_s)
        engine = BlobEngine(self.blobs, self.blob_fetcher, fetch_timeout_s=cfg.blob_fetch_timeout_s)
        self.app = CiferApp(StateStore(data / "state.db"), default_modules(engine))
        self.blocks = BlockStore(data / "blocks.db")
        self.executor = BlockExecutor(
            self.genesis, self.app, self.blocks, chain_db=str(data / "chain.db")
        )
        self.replayed_blocks = self.executor.handshake()
        signer = None
        if self.validator_key is not None:
            signer = Signer(
                self.validator_key,
                self.genesis.chain_id,
                FileSignStateStore(data / "sign_state.bin"),
            )
        mempool = Mempool(self.app, self.config.mempool_txs, self.config.mempool_bytes)
        self.replica = Replica(self.executor, signer, mempool)
        self.wal = WAL(data / "cs.wal")
        self._replaying = False
        self.network = PeerNetwork(
            self.node_key,
            self.genesis.chain_id,
            (cfg.p2p_host, cfg.p2p_port),
            [PeerAddress.parse(p) for p in cfg.persistent_peers],
            self._on_frame,
            Limits(
                max_frame=cfg.max_frame_bytes,
                bytes_per_s=cfg.bytes_per_s,
                msgs_per_s=cfg.msgs_per_s,
            ),
        )
        self._timers: set[asyncio.TimerHandle] = set()
        self._commit_waiters: dict[bytes, list[asyncio.Future[int]]] = {}
        self.subscribers: set[asyncio.Queue[BlockEvent]] = set()
        self.halted: str | None = None
        self._model_sync: asyncio.Future[list[bytes]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        from cifer.app.node.api import serve_api

        await self.network.start()
        self.resume()
        gossip = asyncio.create_task(self._gossip_loop())
        api = asyncio.create_task(serve_api(self, stop))
        log.info(
            "node %s up: height %d (%d blocks replayed), p2p %s:%d, api http://%s:%d",
            self.config.moniker,
            self.executor.state.last_height,
            self.replayed_blocks,
            self.config.p2p_host,
            self.config.p2p_port,
            self.config.api_host,
            self.config.api_port,
        )
        try:
            await stop.wait()
        finally:
            gossip.cancel()
            for t in self._timers:
                t.cancel()
            await self.network.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(api, 5)
            self.wal.flush()
            self.wal.close()
            log.info("node %s stopped cleanly", self.config.moniker)

    async def _gossip_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gossip_ms / 1000)
            self.wal.flush()
            self._safe(lambda: self.replica.gossip(now_ms()))

    # ------------------------------------------------------------------ inputs

    def _on_frame(self, peer: bytes, data: bytes) -> bool:
        try:
            msg = decode_message(data)
        except EncodingError as exc:
            log.debug("undecodable message from %s: %s", peer.hex()[:12], exc)
            return False
        if isinstance(msg, VoteMsg | ProposalMsg) and not self._replaying:
            self.wal.write(WalMessage(peer, data))
        return self._safe(lambda: self.replica.on_message(peer, msg, now_ms()))

    def _fire(self, timer: Timer, handle: list[asyncio.TimerHandle]) -> None:
        self._timers.discard(handle[0])
        if timer.step != Step.COMMIT:
            self.wal.write(WalTimeout(timer.height, timer.round, int(timer.step)))
        self._safe(lambda: self.replica.on_timer(timer, now_ms()))

    def _safe(self, step: Callable[[], list[Output]]) -> bool:
        """Run a replica step; a bug triggered by a peer must not take the node down."""
        from cifer.app.module import InvariantViolation

        if self.halted:
            return True
        try:
            outs = step()
        except InvariantViolation as exc:
            self.halted = f"state invariant violated: {exc}"
            log.critical("HALTING: %s", self.halted)
            return True
        except Exception:
            log.exception("error while processing an event")
            return False
        self._process(outs)
        return True

    def submit_txs(self, txs: list[bytes]) -> list[tuple[bool, str]]:
        """A batch of client txs, checked in order and gossiped as one message."""
        if self.halted:
            return [(False, f"node halted: {self.halted}")] * len(txs)
        results, outs = self.replica.submit_txs(txs, now_ms())
        self._process(outs)
        return results

    async def submit_tx(self, tx: bytes, wait_commit: float | None = None) -> tuple[bool, str, int]:
        """Check and gossip a client tx; optionally wait for its block. -> (ok, log, height)."""
        h = sha256(tx)
        fut: asyncio.Future[int] | None = None
        if wait_commit is not None:
            fut = asyncio.get_running_loop().create_future()
            self._commit_waiters.setdefault(h, []).append(fut)
        ok, reason, outs = self.replica.submit_tx(tx, now_ms())
        self._process(outs)
        if not ok or fut is None:
            if fut is not None:
                self._commit_waiters.pop(h, None)
            return ok, reason, 0
        try:
            height = await asyncio.wait_for(fut, wait_commit)
        except TimeoutError:
            return True, "accepted, but not committed before the timeout", 0
        finally:
            self._commit_waiters.pop(h, None)
        return True, "", height

    # ------------------------------------------------------------------ outputs

    def _process(self, outs: list[Output]) -> None:
        for o in outs:
            if isinstance(o, Send):
                data = encode_message(o.msg)
                if self._own(o.msg) and not self._replaying:
                    # Own votes are made durable before they leave. An own proposal is only
                    # written: the fsync of the vote that depends on it covers it as well.
                    self.wal.write(WalMessage(b"", data), sync=isinstance(o.msg, VoteMsg))
                if o.to is None:
                    self.network.broadcast(data)
                else:
                    self.network.send(o.to, data)
            elif isinstance(o, Schedule):
                loop = asyncio.get_running_loop()
                holder: list[asyncio.TimerHandle] = []
                handle = loop.call_later(o.delay_ms / 1000, self._fire, o.timer, holder)
                holder.append(handle)
                self._timers.add(handle)
            elif isinstance(o, Committed):
                self._on_commit(o)

    def _own(self, msg: Message) -> bool:
        me = self.replica.signer.address if self.replica.signer else None
        if me is None:
            return False
        if isinstance(msg, VoteMsg):
            return msg.vote.validator == me
        if isinstance(msg, ProposalMsg):
            return msg.proposal.proposer == me
        return False

    def _on_commit(self, c: Committed) -> None:
        if not self._replaying:
            self.wal.start_height(c.height + 1)
            self._sync_models()
        hashes = list(c.tx_hashes)
        ev = BlockEvent(c.height, c.block_hash, c.round, c.time_ms, c.app_hash, hashes)
        for h in hashes:
            for fut in self._commit_waiters.pop(h, []):
                if not fut.done():
                    fut.set_result(c.height)
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)

    def _sync_models(self) -> None:
        """Fetch, in the background, job models this node does not hold.

        A node that applied aggregates from block sync or replay (which never recompute
        them) would otherwise lack the blobs it must serve to clients and verify against.
        The scan runs in a worker thread too, so it costs the consensus loop nothing.
        """
        if self._model_sync is not None and not self._model_sync.done():
            return
        if not self.blob_fetcher.peers:
            return
        with contextlib.suppress(RuntimeError):  # no running loop (tests driving by hand)
            self._model_sync = asyncio.get_running_loop().run_in_executor(
                None, self._fetch_missing_models
            )

    def _fetch_missing_models(self) -> list[bytes]:
        from cifer.app.contracts.fl import FlModule

        state, _ = self.app.view()
        missing = [job.model for job in FlModule.jobs(state) if not self.blobs.has(job.model)]
        return self.blob_fetcher.fetch_missing(missing) if missing else []

    def resume(self) -> None:
        """Start consensus at the next height, then replay this height's WAL.

        The WAL is read (and, if it belongs to another height, reset) before the replica
        starts, since starting may already produce messages, such as this node's own
        proposal, that must land in the log after the height marker.
        """
        height, entries = WAL.read(self.wal.path)
        if height != self.replica.height:
            self.wal.start_height(self.replica.height)
            entries = []
        self._process(self.replica.start(now_ms()))
        self._replaying = True
        try:
            for e in entries:
                if isinstance(e, WalMessage):
                    try:
                        msg = decode_message(e.msg)
                    except EncodingError:
                        continue
                    self._safe(partial(self.replica.on_message, e.sender or None, msg, now_ms()))
                elif isinstance(e, WalTimeout):
                    t = Timer(e.height, e.round, Step(e.step))
                    self._safe(partial(self.replica.on_timer, t, now_ms()))
        finally:
            self._replaying = False
        if entries:
            log.info("replayed %d WAL records at height %d", len(entries), height)

"""Peer-to-peer network: secure connections to a set of peers, with limits and reconnection.

Delivery is best effort: consensus tolerates loss (replicas re-request what they lack), so a
slow or misbehaving peer loses messages or its connection, and never stalls the node. Each
peer has a token bucket on bytes and messages, a bounded outbound queue, and a strike count
for undecodable messages. Persistent peers are redialled with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cifer.base.crypto.keys import PrivateKey
from cifer.base.p2p.secure import DEFAULT_MAX_FRAME, FrameError, SecureStream, handshake

log = logging.getLogger("cifer.p2p")

#: What the node does with a frame: True if it was understood, False for a strike.
Handler = Callable[[bytes, bytes], bool]


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int
    key: bytes | None = None  # expected node key, if known

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """``KEYHEX@host:port`` or ``host:port``."""
        key = None
        if "@" in text:
            key_hex, text = text.split("@", 1)
            try:
                key = bytes.fromhex(key_hex)
            except ValueError:
                raise ValueError(f"peer key {key_hex!r} is not hex") from None
            if len(key) != 32:
                raise ValueError(f"peer key {key_hex!r} is not 32 bytes")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"peer address {text!r} must look like host:port")
        return cls(host, int(port), key)


@dataclass
class Limits:
    max_frame: int = DEFAULT_MAX_FRAME
    bytes_per_s: float = 32 * 1024 * 1024
    msgs_per_s: float = 20_000
    burst_s: float = 2.0
    outbound_queue: int = 20_000
    max_strikes: int = 20
    ban_s: float = 30.0


class _Bucket:
    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, burst_s: float) -> None:
        self.rate = rate
        self.capacity = rate * burst_s
        self.tokens = self.capacity
        self.last = time.monotonic()

    def take(self, n: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


@dataclass
class _Peer:
    stream: SecureStream
    outbound: bool
    dialer_key: bytes  # key of the side that opened the TCP connection
    queue: asyncio.Queue[bytes]
    bytes_bucket: _Bucket
    msgs_bucket: _Bucket
    strikes: int = 0
    dropped: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(frozen=True)
class PeerInfo:
    key: bytes
    address: str
    outbound: bool
    bytes_in: int
    bytes_out: int
    dropped: int


class PeerNetwork:
    def __init__(
        self,
        node_key: PrivateKey,
        network_id: str,
        listen: tuple[str, int],
        peers: list[PeerAddress],
        handler: Handler,
        limits: Limits | None = None,
        on_connect: Callable[[bytes], None] | None = None,
    ) -> None:
        self.key = node_key
        self.my_key = node_key.public.raw
        self.network_id = network_id
        self.listen = listen
        self.persistent = peers
        self.handler = handler
        self.limits = limits or Limits()
        self.on_connect = on_connect
        self._peers: dict[bytes, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._banned: dict[bytes, float] = {}
        self._isolated_until = 0.0
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, port = self.listen
        self._server = await asyncio.start_server(self._accept, host, port)
        for addr in self.persistent:
            self._tasks.append(asyncio.create_task(self._dial_loop(addr)))

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        for key in list(self._peers):
            self._drop(key, "shutting down")
        await asyncio.sleep(0)

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    # ------------------------------------------------------------------ sending

    def send(self, peer: bytes, data: bytes) -> None:
        p = self._peers.get(peer)
        if p is not None:
            self._enqueue(p, data)

    def broadcast(self, data: bytes) -> None:
        for p in list(self._peers.values()):
            self._enqueue(p, data)

    def _enqueue(self, p: _Peer, data: bytes) -> None:
        try:
            p.queue.put_nowait(data)
        except asyncio.QueueFull:
            p.dropped += 1  # a slow peer loses messages; consensus re-requests them

    def peers(self) -> list[PeerInfo]:
        out = []
        for key, p in self._peers.items():
            peername = p.stream.writer.get_extra_info("peername")
            addr = f"{peername[0]}:{peername[1]}" if peername else "?"
            out.append(
                PeerInfo(key, addr, p.outbound, p.stream.bytes_in, p.stream.bytes_out, p.dropped)
            )
        return out

    def isolate(self, seconds: float) -> None:
        """Fault injection: drop every connection and refuse new ones for ``seconds``."""
        self._isolated_until = time.monotonic() + seconds
        for key in list(self._peers):
            self._drop(key, "isolated by fault injection")

    def isolated(self) -> bool:
        return time.monotonic() < self._isolated_until

    # ------------------------------------------------------------------ connections

    async def _dial_loop(self, addr: PeerAddress) -> None:
        backoff = 0.1
        while not self._closing:
            if addr.key is not None and addr.key in self._peers:
                await asyncio.sleep(0.5)
                continue
            if self.isolated():
                await asyncio.sleep(0.2)
                continue
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(addr.host, addr.port), 3.0
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            ok = await self._setup(reader, writer, outbound=True, expect=addr.key)
            if ok:
                backoff = 0.1
                while not self._closing and addr.key in self._peers and addr.key is not None:
                    await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 5.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.isolated() or self._closing:
            writer.close()
            return
        await self._setup(reader, writer, outbound=False, expect=None)

    async def _setup(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        outbound: bool,
        expect: bytes | None,
    ) -> bool:
        try:
            stream = await handshake(
                reader,
                writer,
                self.key,
                self.network_id,
                expect_peer=expect,
                max_frame=self.limits.max_frame,
            )
        except ConnectionError as exc:
            log.info("handshake with %s failed: %s", writer.get_extra_info("peername"), exc)
            writer.close()
            return False
        key = stream.peer_key
        if self._banned.get(key, 0.0) > time.monotonic() or self.isolated():
            stream.close()
            return False
        dialer = self.my_key if outbound else key
        existing = self._peers.get(key)
        if existing is not None:
            # Both sides dialled each other: keep the connection the lower key opened,
            # a rule both ends apply identically.
            keep_new = dialer < existing.dialer_key
            if not keep_new:
                stream.close()
                return True
            self._drop(key, "replaced by a duplicate connection")
        lim = self.limits
        peer = _Peer(
            stream,
            outbound,
            dialer,
            asyncio.Queue(lim.outbound_queue),
            _Bucket(lim.bytes_per_s, lim.burst_s),
            _Bucket(lim.msgs_per_s, lim.burst_s),
        )
        self._peers[key] = peer
        peer.tasks = [
            asyncio.create_task(self._reader(key, peer)),
            asyncio.create_task(self._writer(key, peer)),
        ]
        log.info("connected to peer %s (%s)", key.hex()[:12], "out" if outbound else "in")
        if self.on_connect is not None:
            self.on_connect(key)
        return True

    async def _reader(self, key: bytes, p: _Peer) -> None:
        reason = "closed"
        try:
            while True:
                data = await p.stream.recv()
                if not p.bytes_bucket.take(len(data)) or not p.msgs_bucket.take(1):
                    p.dropped += 1
                    continue
                if not self.handler(key, data):
                    p.strikes += 1
                    if p.strikes >= self.limits.max_strikes:
                        self._banned[key] = time.monotonic() + self.limits.ban_s
                        reason = f"{p.strikes} undecodable messages: banned"
                        break
        except FrameError as exc:
            reason = str(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            reason = "connection lost"
        except asyncio.CancelledError:
            return
        if self._peers.get(key) is p:
            self._drop(key, reason)

    async def _writer(self, key: bytes, p: _Peer) -> None:
        try:
            while True:
                data = await p.queue.get()
                frames = [p.stream.encrypt_frame(data)]
                while not p.queue.empty() and len(frames) < 256:  # coalesce bursts
                    frames.append(p.stream.encrypt_frame(p.queue.get_nowait()))
                blob = b"".join(frames)
                p.stream.writer.write(blob)
                p.stream.bytes_out += len(blob)
                await p.stream.writer.drain()
        except (ConnectionError, OSError, FrameError):
            if self._peers.get(key) is p:
                self._drop(key, "write failed")
        except asyncio.CancelledError:
            return

    def _drop(self, key: bytes, reason: str) -> None:
        p = self._peers.pop(key, None)
        if p is None:
            return
        log.info("dropped peer %s: %s", key.hex()[:12], reason)
        for t in p.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        with contextlib.suppress(Exception):
            p.stream.close()

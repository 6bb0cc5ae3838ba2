"""The secure transport: who a peer is, and what a frame may be."""

from __future__ import annotations

import asyncio
import struct

import pytest

from cifer.base.crypto.keys import PrivateKey
from cifer.base.p2p.secure import FrameError, HandshakeError, handshake

A, B = PrivateKey.from_secret("p2p-a"), PrivateKey.from_secret("p2p-b")


async def _pair(net_a="net", net_b="net", expect=None, max_frame=1 << 20):
    """Handshake A (server) and B (client) over a loopback socket."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_conn(r, w):
        try:
            done.set_result(await handshake(r, w, A, net_a, max_frame=max_frame))
        except Exception as exc:
            done.set_exception(exc)

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        client = await handshake(r, w, B, net_b, expect_peer=expect, max_frame=max_frame)
    except HandshakeError:
        w.close()
        await asyncio.gather(done, return_exceptions=True)  # the server side fails too
        raise
    finally:
        server.close()
    return await done, client


def test_handshake_binds_identities_and_frames_flow_both_ways() -> None:
    async def go():
        a, b = await _pair()
        assert a.peer_key == B.public.raw and b.peer_key == A.public.raw
        await b.send(b"ping")
        assert await a.recv() == b"ping"
        await a.send(b"pong" * 1000)
        assert await b.recv() == b"pong" * 1000
        a.close()
        b.close()

    asyncio.run(go())


def test_other_network_and_wrong_expected_peer_are_refused() -> None:
    with pytest.raises(HandshakeError):
        asyncio.run(_pair(net_b="other"))
    with pytest.raises(HandshakeError, match="expected peer"):
        asyncio.run(_pair(expect=PrivateKey.from_secret("someone-else").public.raw))


def test_tampered_replayed_and_oversize_frames_are_rejected() -> None:
    async def go():
        a, b = await _pair(max_frame=4096)
        frame = b.encrypt_frame(b"hello")
        tampered = frame[:-1] + bytes([frame[-1] ^ 1])
        b.writer.write(tampered)
        await b.writer.drain()
        with pytest.raises(FrameError, match="authentication"):
            await a.recv()

        a2, b2 = await _pair(max_frame=4096)
        frame = b2.encrypt_frame(b"once")
        b2.writer.write(frame + frame)  # the same frame twice: the nonce has moved on
        await b2.writer.drain()
        assert await a2.recv() == b"once"
        with pytest.raises(FrameError):
            await a2.recv()

        a3, b3 = await _pair(max_frame=4096)
        b3.writer.write(struct.pack(">I", 1 << 30))  # announces 1 GiB: refused before reading
        await b3.writer.drain()
        with pytest.raises(FrameError, match="limit"):
            await a3.recv()
        with pytest.raises(FrameError):
            b3.encrypt_frame(b"x" * 5000)

    asyncio.run(go())

"""Authenticated, encrypted peer connections (in the spirit of CometBFT's SecretConnection).

Handshake, over a fresh TCP stream:

1. each side sends a fresh X25519 public key;
2. both derive two ChaCha20-Poly1305 keys (one per direction) with HKDF-SHA256 from the
   shared secret, salted by a transcript hash of both ephemeral keys;
3. each side sends, encrypted, its long-term Ed25519 node key and a signature over the
   transcript and the network id.

A peer is its Ed25519 key: a wrong signature, another network, or (when dialling a known
peer) a different key than expected ends the connection. Ephemeral keys give forward
secrecy; per-direction keys and counter nonces stop reflection, replay and reordering.
Frames are a 4-byte length and a ciphertext; a length above the limit is refused before
anything is read or allocated.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cifer.base.crypto.keys import PUBKEY_LEN, SIGNATURE_LEN, PrivateKey, verify

PROTOCOL = b"cifer/p2p/v1"
TAG_LEN = 16
HANDSHAKE_TIMEOUT_S = 5.0
DEFAULT_MAX_FRAME = 8 * 1024 * 1024 + 1024


class HandshakeError(ConnectionError):
    """The peer did not prove who it is, or is on another network."""


class FrameError(ConnectionError):
    """A frame was oversized, truncated or failed authentication."""


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


class SecureStream:
    """A duplex stream of authenticated frames with a known peer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        send_key: bytes,
        recv_key: bytes,
        peer_key: bytes,
        max_frame: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._send_n = 0
        self._recv_n = 0
        self.peer_key = peer_key
        self.max_frame = max_frame
        self.bytes_in = 0
        self.bytes_out = 0

    def encrypt_frame(self, data: bytes) -> bytes:
        if len(data) + TAG_LEN > self.max_frame:
            raise FrameError(f"frame of {len(data)} bytes exceeds {self.max_frame}")
        ct = self._send.encrypt(_nonce(self._send_n), data, None)
        self._send_n += 1
        return struct.pack(">I", len(ct)) + ct

    async def send(self, data: bytes) -> None:
        frame = self.encrypt_frame(data)
        self.writer.write(frame)
        self.bytes_out += len(frame)
        await self.writer.drain()

    async def recv(self) -> bytes:
        head = await self.reader.readexactly(4)
        (n,) = struct.unpack(">I", head)
        if n < TAG_LEN or n > self.max_frame:
            raise FrameError(f"peer announced a frame of {n} bytes (limit {self.max_frame})")
        ct = await self.reader.readexactly(n)
        self.bytes_in += 4 + n
        try:
            data = self._recv.decrypt(_nonce(self._recv_n), ct, None)
        except InvalidTag:
            raise FrameError("frame failed authentication") from None
        self._recv_n += 1
        return data

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _auth_message(transcript: bytes, network: str) -> bytes:
    return PROTOCOL + b"/auth" + transcript + network.encode()


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    node_key: PrivateKey,
    network: str,
    *,
    expect_peer: bytes | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> SecureStream:
    """Run the handshake on a connected stream; returns the secure stream or raises."""
    try:
        return await asyncio.wait_for(
            _handshake(reader, writer, node_key, network, expect_peer, max_frame), timeout_s
        )
    except TimeoutError:
        raise HandshakeError("handshake timed out") from None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        if isinstance(exc, HandshakeError):
            raise
        raise HandshakeError(f"connection lost during handshake: {exc}") from None


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    node_key: PrivateKey,
    network: str,
    expect_peer: bytes | None,
    max_frame: int,
) -> SecureStream:
    eph = X25519PrivateKey.generate()
    my_eph = eph.public_key().public_bytes_raw()
    writer.write(PROTOCOL + my_eph)
    await writer.drain()
    hello = await reader.readexactly(len(PROTOCOL) + 32)
    if hello[: len(PROTOCOL)] != PROTOCOL:
        raise HandshakeError("peer does not speak the cifer p2p protocol")
    their_eph = hello[len(PROTOCOL) :]
    if their_eph == my_eph:
        raise HandshakeError("peer echoed our ephemeral key")
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(their_eph))
    except ValueError:
        raise HandshakeError("peer sent an invalid X25519 key") from None
    lo, hi = sorted((my_eph, their_eph))
    transcript = hashlib.sha256(PROTOCOL + lo + hi).digest()
    keys = HKDF(algorithm=hashes.SHA256(), length=64, salt=transcript, info=PROTOCOL).derive(shared)
    k_lo, k_hi = keys[:32], keys[32:]
    send_key, recv_key = (k_lo, k_hi) if my_eph == lo else (k_hi, k_lo)
    stream = SecureStream(reader, writer, send_key, recv_key, b"", max_frame)
    sig = node_key.sign(_auth_message(transcript, network))
    await stream.send(node_key.public.raw + sig)
    auth = await stream.recv()
    if len(auth) != PUBKEY_LEN + SIGNATURE_LEN:
        raise HandshakeError("malformed authentication message")
    peer_key, peer_sig = auth[:PUBKEY_LEN], auth[PUBKEY_LEN:]
    if not verify(peer_key, _auth_message(transcript, network), peer_sig):
        raise HandshakeError("peer failed to prove its node key (or is on another network)")
    if peer_key == node_key.public.raw:
        raise HandshakeError("connected to ourselves")
    if expect_peer is not None and peer_key != expect_peer:
        raise HandshakeError(
            f"expected peer {expect_peer.hex()[:16]}..., got {peer_key.hex()[:16]}..."
        )
    stream.peer_key = peer_key
    return stream

"""The blob store (disk and memory) and fetching/replicating blobs over HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cifer.compute.blobs import (
    REPLICA_HEADER,
    BlobError,
    BlobFetcher,
    BlobStore,
    blob_hash,
    parse_blob_hash,
)


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs" if request.param == "disk" else None, max_bytes=1024)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- store


def test_put_get_has_size_and_idempotence(store: BlobStore) -> None:
    data = b"model update"
    h = store.put(data)
    assert h == blob_hash(data) and len(h) == 32
    assert store.get(h) == data and store.has(h) and store.size(h) == len(data)
    assert store.insert(data) == (h, False)  # already there: not new
    assert store.put(data, expected=h) == h
    other = blob_hash(b"other")
    assert store.get(other) is None and not store.has(other) and store.size(other) is None


def test_mismatch_and_oversize_refused_and_nothing_written(
    store: BlobStore, tmp_path: Path
) -> None:
    wrong = blob_hash(b"something else")
    with pytest.raises(BlobError, match=f"blob hash mismatch: expected {wrong.hex()}"):
        store.put(b"payload", expected=wrong)
    with pytest.raises(BlobError, match="blob is 1,025 bytes, the limit is 1,024"):
        store.put(b"x" * 1025)
    assert not store.has(wrong) and not store.has(blob_hash(b"payload"))
    assert not store.has(blob_hash(b"x" * 1025))
    if store.root is not None:
        assert files(store.root) == []


def test_malformed_hashes_refused(store: BlobStore) -> None:
    with pytest.raises(BlobError, match="not a 32-byte SHA-256 hash"):
        store.get(b"short")
    with pytest.raises(BlobError, match="not a 32-byte SHA-256 hash"):
        store.put(b"data", expected=b"\x00" * 31)
    with pytest.raises(BlobError, match="not a 32-byte SHA-256 hash: 'zz' is not hex"):
        parse_blob_hash("zz")
    with pytest.raises(BlobError, match="is 2 bytes"):
        parse_blob_hash("abcd")
    h = blob_hash(b"a")
    assert parse_blob_hash(h.hex()) == h == parse_blob_hash("0x" + h.hex())


def test_disk_layout_atomic_write_and_no_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    h = store.put(b"weights")
    name = h.hex()
    assert files(tmp_path / "blobs") == [tmp_path / "blobs" / name[:2] / name]
    # a crash mid-write leaves only a temp file, which reopening the store removes
    stale = tmp_path / "blobs" / name[:2] / ".tmp-crashed"
    stale.write_bytes(b"half a blo")
    BlobStore(tmp_path / "blobs")
    assert not stale.exists()


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"weights")
    assert files(tmp_path / "blobs") == []
    assert not store.has(blob_hash(b"weights"))


def test_corrupted_file_detected_deleted_and_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlobStore(tmp_path / "blobs")
    h = store.put(b"good bytes")
    path = tmp_path / "blobs" / h.hex()[:2] / h.hex()
    path.write_bytes(b"bad bytes!")
    with caplog.at_level("WARNING", logger="cifer.blobs"):
        assert store.get(h) is None
    assert "corrupted" in caplog.text
    assert not path.exists() and not store.has(h)
    # a corrupted copy is also replaced by a put of the right bytes
    path.write_bytes(b"bad again")
    assert store.insert(b"good bytes") == (h, True)
    assert store.get(h) == b"good bytes"


def test_concurrent_puts_and_gets(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blobs = [bytes([i]) * 5000 for i in range(8)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                data = blobs[(i + _) % len(blobs)]
                h = store.put(data)
                assert store.get(h) == data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(files(tmp_path / "blobs")) == len(blobs)


# ---------------------------------------------------------------------------- peers


class Peer:
    """A tiny blob server on loopback: serves ``blobs`` (any bytes, to fake bad peers),
    sleeps ``delay_s`` before answering GETs, and records PUTs."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.delay_s = 0.0
        self.puts: list[tuple[str, str | None]] = []
        self.closing = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _key(self) -> str:
                return self.path.removeprefix("/blobs/")

            def do_GET(self) -> None:
                if peer.closing.wait(peer.delay_s):
                    return
                data = peer.blobs.get(self._key())
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.send_response(200 if self._key() in peer.blobs else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                peer.blobs[self._key()] = body
                peer.puts.append((self._key(), self.headers.get(REPLICA_HEADER)))
                self.send_response(201)
                self.send_header("content-length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that gave up (the timeout test) are expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    ps = [Peer(), Peer()]
    try:
        yield ps
    finally:
        for p in ps:
            p.close()


def test_fetch_missing_from_peers(peers: list[Peer]) -> None:
    store = BlobStore(None)
    blobs = [f"update {i}".encode() for i in range(10)]
    hashes = [blob_hash(b) for b in blobs]
    for i, (h, b) in enumerate(zip(hashes, blobs, strict=True)):
        peers[i % 2].blobs[h.hex()] = b  # each blob on one peer only
    have = store.put(b"already here")
    fetcher = BlobFetcher(store, [peers[0].url, peers[1].url + "/"], timeout_s=5.0)
    assert fetcher.fetch_missing([*hashes, have, hashes[0]]) == []
    assert [store.get(h) for h in hashes] == blobs


def test_peer_serving_wrong_bytes_is_refused(peers: list[Peer]) -> None:
    store = BlobStore(None)
    h = blob_hash(b"the real update")
    peers[0].blobs[h.hex()] = b"a poisoned update"
    fetcher = BlobFetcher(store, [peers[0].url], timeout_s=2.0)
    assert fetcher.fetch_missing([h]) == [h]
    assert not store.has(h) and store.get(blob_hash(b"a poisoned update")) is None
    # with an honest peer as well, the right bytes are taken from it
    peers[1].blobs[h.hex()] = b"the real update"
    fetcher = BlobFetcher(store, [peers[0].url, peers[1].url])
    assert fetcher.fetch_missing([h]) == []
    assert store.get(h) == b"the real update"


def test_fetch_times_out_and_reports_missing(peers: list[Peer]) -> None:
    store = BlobStore(None)
    slow = [blob_hash(bytes([i])) for i in range(6)]
    for i, h in enumerate(slow):
        peers[0].blobs[h.hex()] = bytes([i])
    peers[0].delay_s = 3.0
    absent = blob_hash(b"nobody has this")
    fetcher = BlobFetcher(store, [peers[0].url, peers[1].url])
    start = time.monotonic()
    missing = fetcher.fetch_missing([*slow, absent], timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert missing == [*slow, absent]
    assert elapsed < 1.5, elapsed  # one overall deadline, not one per blob
    # no peers at all: everything missing at once
    assert BlobFetcher(store, []).fetch_missing([absent]) == [absent]


def test_replicate_pushes_to_peers_lacking_the_blob(peers: list[Peer]) -> None:
    store = BlobStore(None)
    data = b"new aggregate"
    h = store.put(data)
    peers[1].blobs[h.hex()] = data  # already has it: HEAD says so, no PUT
    fetcher = BlobFetcher(store, [peers[0].url, peers[1].url])
    asyncio.run(fetcher.replicate(h, data))
    assert peers[0].puts == [(h.hex(), "1")] and peers[1].puts == []
    data2 = b"another"
    h2 = store.put(data2)
    fetcher.replicate_sync(h2, data2)
    assert {p.blobs.get(h2.hex()) for p in peers} == {data2}


def test_replicate_never_raises_on_dead_peers() -> None:
    fetcher = BlobFetcher(BlobStore(None), ["http://127.0.0.1:9"], timeout_s=0.5)
    h = blob_hash(b"x")
    asyncio.run(fetcher.replicate(h, b"x"))
    fetcher.replicate_sync(h, b"x")

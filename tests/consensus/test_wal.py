"""The consensus WAL keeps one height, survives torn writes, and rejects corruption."""

from __future__ import annotations

from pathlib import Path

from cifer.base.consensus.wal import WAL, WalMessage, WalTimeout


def test_round_trip_and_truncation_per_height(tmp_path: Path) -> None:
    p = tmp_path / "cs.wal"
    w = WAL(p)
    w.start_height(5)
    w.write(WalMessage(b"peer", b"m1"))
    w.write(WalTimeout(5, 0, 1), sync=True)
    assert WAL.read(p) == (5, [WalMessage(b"peer", b"m1"), WalTimeout(5, 0, 1)])
    w.start_height(6)
    w.write(WalMessage(b"", b"own"), sync=True)
    w.close()
    assert WAL.read(p) == (6, [WalMessage(b"", b"own")])


def test_torn_tail_and_corrupt_records_stop_the_replay(tmp_path: Path) -> None:
    p = tmp_path / "cs.wal"
    w = WAL(p)
    w.start_height(3)
    for i in range(3):
        w.write(WalMessage(b"p", b"m%d" % i), sync=True)
    w.close()
    full = p.read_bytes()
    p.write_bytes(full[:-3])  # a crash in the middle of the last write
    assert WAL.read(p) == (3, [WalMessage(b"p", b"m0"), WalMessage(b"p", b"m1")])
    flipped = bytearray(full)
    flipped[-1] ^= 0xFF  # a bit flip in the last record's payload: its checksum fails
    p.write_bytes(bytes(flipped))
    assert WAL.read(p)[1] == [WalMessage(b"p", b"m0"), WalMessage(b"p", b"m1")]
    assert WAL.read(tmp_path / "missing.wal") == (0, [])
    (tmp_path / "junk.wal").write_bytes(b"\x00\x00\x00\x05junkjunk")
    assert WAL.read(tmp_path / "junk.wal") == (0, [])

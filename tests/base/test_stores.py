"""SQLite state and block stores: atomic commits, reopen, prefix scans, block order."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer.base import encoding
from cifer.base.chain import types as t
from cifer.base.chain.types import Block, Commit, CommitSig, Header
from cifer.base.store import state as state_mod
from cifer.base.store.blocks import BlockStore
from cifer.base.store.sqlite import MEMORY, connect
from cifer.base.store.state import StateStore


class Boom(RuntimeError):
    pass


class FailingDB:
    """Wraps a sqlite3 connection and raises from the Nth ``executemany`` call.

    The real call runs first when ``after_write`` is set, so the failure lands after rows
    were already written inside the open transaction.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        fail_on: int,
        after_write: bool = True,
        exc: BaseException | None = None,
    ) -> None:
        self._db = db
        self._fail_on = fail_on
        self._after_write = after_write
        self._exc = exc or Boom("disk on fire")
        self.calls = 0

    def executemany(self, sql: str, rows: Any) -> Any:
        self.calls += 1
        if self.calls == self._fail_on:
            if self._after_write:
                self._db.executemany(sql, rows)
            raise self._exc
        return self._db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def snapshot(s: StateStore) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes | None]:
    return s.height, s.app_hash, list(s.iter_prefix(b"")), s.get_meta("validators")


# ---------------------------------------------------------------- StateStore basics


def test_empty_store() -> None:
    s = StateStore(MEMORY)
    assert s.height == 0
    assert s.app_hash == b""
    assert s.get(b"k") is None
    assert list(s.iter_prefix(b"")) == []
    assert s.get_meta("height") is None


def test_commit_puts_deletes_and_meta() -> None:
    s = StateStore(MEMORY)
    s.commit(1, b"h1", {b"a": b"1", b"b": b"2", b"c": b"3"}, meta={"validators": b"v1"})
    assert (s.height, s.app_hash) == (1, b"h1")
    assert s.get(b"a") == b"1"
    assert s.get_meta("validators") == b"v1"
    s.commit(2, b"h2", {b"a": None, b"b": b"22", b"zz": None})
    assert (s.height, s.app_hash) == (2, b"h2")
    assert s.get(b"a") is None
    assert s.get(b"b") == b"22"
    assert list(s.iter_prefix(b"")) == [(b"b", b"22"), (b"c", b"3")]
    assert s.get_meta("validators") == b"v1"  # untouched meta persists
    assert s.get_meta("height") == (2).to_bytes(8, "big")


def test_empty_values_and_keys_are_stored() -> None:
    s = StateStore(MEMORY)
    s.commit(1, b"h", {b"": b"root", b"k": b""})
    assert s.get(b"") == b"root"
    assert s.get(b"k") == b""  # empty value is not a delete


def test_lower_height_rejected_and_state_untouched() -> None:
    s = StateStore(MEMORY)
    s.commit(5, b"h5", {b"k": b"v5"})
    with pytest.raises(ValueError, match="below stored height"):
        s.commit(4, b"h4", {b"k": b"v4"})
    assert (s.height, s.app_hash, s.get(b"k")) == (5, b"h5", b"v5")


def test_large_height_round_trips() -> None:
    s = StateStore(MEMORY)
    s.commit(2**40 + 3, b"h", {})
    assert s.height == 2**40 + 3


# ---------------------------------------------------------------- iter_prefix


KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"\x01",
    b"a",
    b"a\x00",
    b"a\xfe\xff",
    b"a\xff",
    b"a\xff\x00",
    b"a\xff\xff",
    b"a\xff\xff\xff",
    b"b",
    b"b\x00",
    b"\xfe",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
    b"\xff\xfe",
    b"\xff\xff",
    b"\xff\xff\x00",
    b"\xff\xff\xff",
]
PREFIXES = [
    b"",
    b"\x00",
    b"\x00\xff",
    b"a",
    b"a\xff",
    b"a\xff\xff",
    b"a\xfe",
    b"b",
    b"\xfe",
    b"\xff",
    b"\xff\xff",
    b"\xff\xff\xff",
    b"\xff\xff\xff\xff",
    b"c",
]


@pytest.fixture(scope="module")
def prefix_store() -> StateStore:
    s = StateStore(MEMORY)
    s.commit(1, b"h", {k: b"v" + k for k in KEYS})
    return s


@pytest.mark.parametrize("prefix", PREFIXES)
def test_iter_prefix_boundaries(prefix_store: StateStore, prefix: bytes) -> None:
    got = list(prefix_store.iter_prefix(prefix))
    want = [(k, b"v" + k) for k in sorted(KEYS) if k.startswith(prefix)]
    assert got == want


def test_prefix_end() -> None:
    end = state_mod._prefix_end
    assert end(b"a") == b"b"
    assert end(b"a\xff") == b"b"
    assert end(b"a\xff\xff") == b"b"
    assert end(b"\x00") == b"\x01"
    assert end(b"\x01\xfe") == b"\x01\xff"
    assert end(b"\xff") is None
    assert end(b"\xff\xff") is None
    assert end(b"") is None


@settings(max_examples=80, deadline=None)
@given(
    keys=st.sets(st.binary(max_size=4).map(lambda b: b.replace(b"\x01", b"\xff")), max_size=30),
    prefix=st.binary(max_size=3).map(lambda b: b.replace(b"\x01", b"\xff")),
)
def test_iter_prefix_matches_brute_force(keys: set[bytes], prefix: bytes) -> None:
    s = StateStore(MEMORY)
    s.commit(1, b"h", {k: k for k in keys})
    assert list(s.iter_prefix(prefix)) == [(k, k) for k in sorted(keys) if k.startswith(prefix)]


# ---------------------------------------------------------------- StateStore atomicity


def _seed_file_store(path: Path) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes | None]:
    s = StateStore(path)
    s.commit(1, b"h1", {b"a": b"1", b"b": b"2", b"c": b"3"}, meta={"validators": b"v1"})
    snap = snapshot(s)
    s.close()
    return snap


def _failing_commit(s: StateStore) -> None:
    s.commit(2, b"h2", {b"a": b"NEW", b"d": b"4", b"b": None}, meta={"validators": b"v2"})


@pytest.mark.parametrize(
    "fail_on,after_write",
    [(1, False), (1, True), (2, True), (3, False), (3, True)],
    ids=["puts-before", "puts-after", "deletes-after", "meta-before", "meta-after"],
)
def test_failure_inside_commit_leaves_previous_state(
    tmp_path: Path, fail_on: int, after_write: bool
) -> None:
    path = tmp_path / "state.sqlite"
    before = _seed_file_store(path)
    s = StateStore(path)
    failing = FailingDB(s._db, fail_on, after_write)
    s._db = failing  # type: ignore[assignment]
    with pytest.raises(Boom):
        _failing_commit(s)
    assert failing.calls == fail_on  # the failure really was mid-commit
    assert snapshot(s) == before  # visible through the same connection...
    s._db = failing._db
    s.close()
    reopened = StateStore(path)
    assert snapshot(reopened) == before  # ... and on disk
    # The store is usable afterwards: no transaction left open.
    _failing_commit(reopened)
    assert reopened.height == 2 and reopened.get(b"a") == b"NEW" and reopened.get(b"b") is None
    reopened.close()


def test_keyboard_interrupt_inside_commit_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    before = _seed_file_store(path)
    s = StateStore(path)
    s._db = FailingDB(s._db, 1, True, KeyboardInterrupt())  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        _failing_commit(s)
    s._db = s._db._db  # type: ignore[attr-defined]
    s.close()
    assert snapshot(StateStore(path)) == before


def test_bad_value_type_mid_commit_rolls_back(tmp_path: Path) -> None:
    # The first row is written, the second cannot be bound: nothing may stick.
    path = tmp_path / "state.sqlite"
    before = _seed_file_store(path)
    s = StateStore(path)
    writes: dict[bytes, Any] = {b"a": b"NEW", b"z": object()}
    with pytest.raises(sqlite3.Error):
        s.commit(2, b"h2", writes)
    assert snapshot(s) == before
    s.close()
    reopened = StateStore(path)
    assert snapshot(reopened) == before
    reopened.commit(2, b"h2", {b"a": b"NEW"})
    assert reopened.get(b"a") == b"NEW"


def test_bad_height_type_rolls_back(tmp_path: Path) -> None:
    # Writes are applied before the height is encoded; a height that cannot be encoded
    # (beyond 8 bytes) must undo them.
    path = tmp_path / "state.sqlite"
    before = _seed_file_store(path)
    s = StateStore(path)
    with pytest.raises(OverflowError):
        s.commit(2**64, b"h", {b"a": b"NEW"})
    s.close()
    assert snapshot(StateStore(path)) == before


def test_reopen_gives_last_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite"  # parent directory is created
    s = StateStore(path)
    for h in range(1, 6):
        s.commit(h, f"app{h}".encode(), {f"k{h}".encode(): f"v{h}".encode(), b"k1": None})
    expected = snapshot(s)
    s.close()
    again = StateStore(path)
    assert snapshot(again) == expected
    assert again.height == 5 and again.app_hash == b"app5"
    assert again.get(b"k1") is None and again.get(b"k5") == b"v5"
    again.close()


def test_committed_data_visible_to_a_second_connection_without_close(tmp_path: Path) -> None:
    # A crash after commit() returns (no close) must not lose the block.
    path = tmp_path / "state.sqlite"
    s = StateStore(path)
    s.commit(1, b"h1", {b"k": b"v"})
    other = StateStore(path)
    assert (other.height, other.get(b"k")) == (1, b"v")
    other.close()
    s.close()


def test_file_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


# ---------------------------------------------------------------- BlockStore


def mk_block(height: int, txs: list[bytes]) -> tuple[Block, Commit]:
    last = None if height == 1 else Commit(height - 1, 0, b"\x01" * 32, [])
    h = Header(
        chain_id="c",
        height=height,
        time_ms=height,
        last_block_hash=b"",
        last_commit_hash=t.commit_hash(last),
        data_hash=t.data_hash(txs),
        app_hash=b"",
        last_results_hash=b"",
        validators_hash=b"",
        next_validators_hash=b"",
        evidence_hash=t.evidence_hash([]),
        proposer=b"\x00" * 20,
    )
    blk = Block(h, txs, last, [])
    commit = Commit(height, 0, blk.hash(), [CommitSig(b"\x02" * 20, b"\x03" * 64)])
    return blk, commit


def test_block_store_save_and_load() -> None:
    bs = BlockStore(MEMORY)
    assert bs.height == 0
    assert bs.load_block(1) is None and bs.load_commit(1) is None
    assert bs.block_hash(1) is None and bs.load_block_bytes(1) is None
    saved = []
    for h in range(1, 4):
        blk, c = mk_block(h, [f"tx{h}-{i}".encode() for i in range(h)])
        bs.save(blk, c)
        saved.append((blk, c))
        assert bs.height == h
    for blk, c in saved:
        h = blk.header.height
        assert bs.load_block(h) == blk
        assert bs.load_commit(h) == c
        assert bs.block_hash(h) == blk.hash()
        assert bs.load_block_bytes(h) == encoding.encode(blk)
    assert bs.load_block(4) is None


@pytest.mark.parametrize("bad_height", [0, 1, 3, 5])
def test_block_store_enforces_save_order(bad_height: int) -> None:
    bs = BlockStore(MEMORY)
    bs.save(*mk_block(1, [b"a"]))
    with pytest.raises(ValueError, match="at height 1 cannot take block"):
        bs.save(*mk_block(bad_height, [b"b"]))
    assert bs.height == 1
    assert bs.load_block(bad_height) is None or bad_height == 1
    bs.save(*mk_block(2, [b"b"]))
    assert bs.height == 2


def test_first_block_must_be_height_one() -> None:
    bs = BlockStore(MEMORY)
    with pytest.raises(ValueError):
        bs.save(*mk_block(2, []))
    assert bs.height == 0


def test_tx_index() -> None:
    bs = BlockStore(MEMORY)
    bs.save(*mk_block(1, [b"a", b"b"]))
    bs.save(*mk_block(2, [b"c", b"a", b"d", b"c"]))
    assert bs.tx_location(t.sha256(b"a")) == (1, 0)  # first inclusion wins
    assert bs.tx_location(t.sha256(b"b")) == (1, 1)
    assert bs.tx_location(t.sha256(b"c")) == (2, 0)  # duplicate inside a block: first index
    assert bs.tx_location(t.sha256(b"d")) == (2, 2)
    assert bs.tx_location(t.sha256(b"zzz")) is None
    assert bs.tx_location(b"a") is None  # the index is keyed by hash, not by raw bytes


def test_block_store_reopen(tmp_path: Path) -> None:
    path = tmp_path / "blocks.sqlite"
    bs = BlockStore(path)
    blocks = [mk_block(h, [f"t{h}".encode()]) for h in range(1, 4)]
    for blk, c in blocks:
        bs.save(blk, c)
    bs.close()
    again = BlockStore(path)
    assert again.height == 3
    assert again.load_block(2) == blocks[1][0]
    assert again.load_commit(3) == blocks[2][1]
    assert again.tx_location(t.sha256(b"t2")) == (2, 0)
    with pytest.raises(ValueError):
        again.save(*mk_block(3, []))
    again.save(*mk_block(4, []))
    assert again.height == 4
    again.close()


@pytest.mark.parametrize("after_write", [False, True])
def test_block_store_failure_mid_save_is_atomic(tmp_path: Path, after_write: bool) -> None:
    path = tmp_path / "blocks.sqlite"
    bs = BlockStore(path)
    b1 = mk_block(1, [b"a"])
    bs.save(*b1)
    real = bs._db
    bs._db = FailingDB(real, 1, after_write)  # type: ignore[assignment]
    b2 = mk_block(2, [b"x", b"y"])
    with pytest.raises(Boom):
        bs.save(*b2)  # block row inserted, tx index write fails
    assert bs.height == 1
    assert bs.load_block(2) is None
    assert bs.tx_location(t.sha256(b"x")) is None
    bs._db = real
    bs.close()
    again = BlockStore(path)
    assert again.height == 1
    assert again.load_block(2) is None and again.block_hash(2) is None
    assert again.tx_location(t.sha256(b"x")) is None
    assert again.load_block(1) == b1[0]
    again.save(*b2)  # retry succeeds
    assert again.height == 2 and again.tx_location(t.sha256(b"y")) == (2, 1)
    again.close()

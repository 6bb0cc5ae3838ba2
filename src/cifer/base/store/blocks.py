"""Block store: decided blocks, the commit that decided each, and a tx-hash index."""

from __future__ import annotations

from pathlib import Path

from cifer.base import encoding
from cifer.base.chain.types import Block, Commit, sha256
from cifer.base.store.sqlite import connect


class BlockStore:
    def __init__(self, path: str | Path) -> None:
        self._db = connect(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS blocks (
                height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE,
                block BLOB NOT NULL, commit_ BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS txs (
                hash BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL) WITHOUT ROWID;
            """
        )
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        self._height: int = row[0] or 0

    @property
    def height(self) -> int:
        return self._height

    def save(self, block: Block, commit: Commit) -> None:
        """Persist a decided block with its commit, atomically, before the app executes it."""
        h = block.header.height
        if h != self._height + 1:
            raise ValueError(f"block store at height {self._height} cannot take block {h}")
        if commit.height != h or commit.block_hash != block.hash():
            raise ValueError(f"commit does not belong to block {h}")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO blocks (height, hash, block, commit_) VALUES (?, ?, ?, ?)",
                (h, block.hash(), encoding.encode(block), encoding.encode(commit)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO txs (hash, height, idx) VALUES (?, ?, ?)",
                [(sha256(tx), h, i) for i, tx in enumerate(block.txs)],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._height = h

    def load_block(self, height: int) -> Block | None:
        row = self._db.execute("SELECT block FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else encoding.decode(bytes(row[0]), Block)

    def load_block_bytes(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT block FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def load_commit(self, height: int) -> Commit | None:
        row = self._db.execute("SELECT commit_ FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else encoding.decode(bytes(row[0]), Commit)

    def block_hash(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        row = self._db.execute("SELECT height, idx FROM txs WHERE hash = ?", (tx_hash,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def close(self) -> None:
        self._db.close()

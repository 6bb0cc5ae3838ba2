"""Committed application state: a key-value map plus the height and app hash it belongs to.

A block's writes land in one SQLite transaction together with the new height and app hash,
so after a crash the store holds exactly the last committed block's state, never half of one.

The same transaction also appends the block's net changeset to a ``changes`` history
(height, key, value; a NULL value is a delete) and its app hash to ``app_hashes``. The app
hash of a height folds in that changeset's Merkle root and the previous app hash, so with
the history a node can prove what any key was set to at any height against a block header
(:mod:`cifer.base.chain.proofs`), long after later blocks overwrote it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from cifer.base.store.sqlite import connect


class StateStore:
    def __init__(self, path: str | Path) -> None:
        self._db = connect(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS changes (
                height INTEGER NOT NULL, key BLOB NOT NULL, value BLOB,
                PRIMARY KEY (height, key)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS changes_by_key ON changes (key, height);
            CREATE TABLE IF NOT EXISTS app_hashes (
                height INTEGER PRIMARY KEY, app_hash BLOB NOT NULL);
            """
        )

    def get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys starting with ``prefix`` in byte order."""
        if not prefix:
            cur = self._db.execute("SELECT key, value FROM kv ORDER BY key")
        else:
            end = _prefix_end(prefix)
            if end is None:
                cur = self._db.execute(
                    "SELECT key, value FROM kv WHERE key >= ? ORDER BY key", (prefix,)
                )
            else:
                cur = self._db.execute(
                    "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                    (prefix, end),
                )
        for k, v in cur.fetchall():
            yield bytes(k), bytes(v)

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    @property
    def height(self) -> int:
        raw = self.get_meta("height")
        return 0 if raw is None else int.from_bytes(raw, "big")

    @property
    def app_hash(self) -> bytes:
        return self.get_meta("app_hash") or b""

    def commit(
        self,
        height: int,
        app_hash: bytes,
        writes: Mapping[bytes, bytes | None],
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """Apply ``writes`` (None deletes) and record height and app hash, all or nothing."""
        if height < self.height:
            raise ValueError(f"cannot commit height {height} below stored height {self.height}")
        if meta and {"height", "app_hash"} & set(meta):
            raise ValueError("meta may not overwrite the reserved keys height and app_hash")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            puts = [(k, v) for k, v in writes.items() if v is not None]
            dels = [(k,) for k, v in writes.items() if v is None]
            if puts:
                db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", puts)
            if dels:
                db.executemany("DELETE FROM kv WHERE key = ?", dels)
            items = {"height": height.to_bytes(8, "big"), "app_hash": app_hash}
            if meta:
                items.update(meta)
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(items.items())
            )
            if writes:
                # OR REPLACE: a second commit at the same height (genesis retried on a fresh
                # store) merges into that height's history like it merges into the state.
                db.executemany(
                    "INSERT OR REPLACE INTO changes (height, key, value) VALUES (?, ?, ?)",
                    [(height, k, v) for k, v in writes.items()],
                )
            db.execute(
                "INSERT OR REPLACE INTO app_hashes (height, app_hash) VALUES (?, ?)",
                (height, app_hash),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ history

    def app_hash_at(self, height: int) -> bytes | None:
        """App hash committed at ``height`` (None if this store never committed it)."""
        row = self._db.execute(
            "SELECT app_hash FROM app_hashes WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def changeset(self, height: int) -> dict[bytes, bytes | None]:
        """Net writes of ``height`` sorted by key (None = delete); {} if none were recorded."""
        cur = self._db.execute(
            "SELECT key, value FROM changes WHERE height = ? ORDER BY key", (height,)
        )
        return {bytes(k): None if v is None else bytes(v) for k, v in cur.fetchall()}

    def change_at(self, key: bytes, height: int) -> tuple[bool, bytes | None]:
        """(written, value) of ``key`` at ``height``: written is False if it did not change."""
        row = self._db.execute(
            "SELECT value FROM changes WHERE height = ? AND key = ?", (height, key)
        ).fetchone()
        if row is None:
            return False, None
        return True, None if row[0] is None else bytes(row[0])

    def change_heights(
        self, key: bytes, *, at_most: int | None = None, limit: int = 100
    ) -> list[int]:
        """Heights at which ``key`` changed, newest first (at or below ``at_most``)."""
        top = self.height if at_most is None else at_most
        cur = self._db.execute(
            "SELECT height FROM changes WHERE key = ? AND height <= ? ORDER BY height DESC LIMIT ?",
            (key, top, limit),
        )
        return [int(r[0]) for r in cur.fetchall()]

    def first_recorded_height(self) -> int | None:
        """Lowest height with a recorded app hash: history below it cannot be proven
        (a store written before the history was kept starts at its next commit)."""
        row = self._db.execute("SELECT MIN(height) FROM app_hashes").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        self._db.close()


def _prefix_end(prefix: bytes) -> bytes | None:
    """Smallest byte string greater than every key with ``prefix`` (None if unbounded)."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return None
    b[-1] += 1
    return bytes(b)

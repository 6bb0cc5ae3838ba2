"""Committed application state: a key-value map plus the height and app hash it belongs to.

A block's writes land in one SQLite transaction together with the new height and app hash,
so after a crash the store holds exactly the last committed block's state, never half of one.
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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

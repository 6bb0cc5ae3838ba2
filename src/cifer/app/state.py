"""Block-scoped state overlay and the app hash.

Modules never write to the :class:`~cifer.base.store.state.StateStore` directly: they read
and write a :class:`StateOverlay`, which keeps pending writes in memory, supports nested
snapshots (a failed tx's messages are undone while its fee and nonce stay) and hands the
net changeset to ``StateStore.commit`` in one atomic transaction.

App hash
--------
The app hash of block ``h`` is::

    SHA-256(b"cifer/apphash/v1" || prev_app_hash || h as 8 bytes big-endian || R)

where ``R`` is the Merkle root (:func:`cifer.base.crypto.merkle.root`) of the block's
changeset entries ``encode((key, value or b"", deleted))`` sorted by key. The changeset is
the *net* difference against the committed state (a write that leaves a key unchanged, or a
key set and then deleted within the block, is not in it), so the hash depends only on the
state transition, not on the order modules happened to write in.

Because each hash folds in the previous one, the app hash is a hash chain over changesets:
given the genesis state (whose own changeset is hashed at height 0 from an empty previous
hash), it commits to the whole state at every height, without a Merkle tree over all keys.
A single key's value is proven by the write that set it: that block's changeset entry,
its Merkle path to ``R`` and the previous app hash (:mod:`cifer.base.chain.proofs`).

Values in state are canonical encodings of integers, bytes and strings, never floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final, TypeVar

from cifer.base import encoding
from cifer.base.chain.proofs import app_hash_from_root, changeset_leaf
from cifer.base.crypto import merkle
from cifer.base.store.state import StateStore

T = TypeVar("T")


class _Missing:
    """Sentinel: the key had no pending write before (distinct from a pending delete)."""


_MISSING: Final = _Missing()

Changeset = dict[bytes, bytes | None]


class StateOverlay:
    """Pending writes over a committed :class:`StateStore`, with nested snapshots.

    ``None`` in the write map is a pending delete. Reads of the committed store are cached:
    the store does not change while an overlay is alive (the app discards overlays at commit).
    """

    __slots__ = ("_cache", "_journal", "_store", "_writes")

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._writes: dict[bytes, bytes | None] = {}
        # (key, previous pending entry) so revert can restore it; _MISSING = had none.
        self._journal: list[tuple[bytes, bytes | _Missing | None]] = []
        self._cache: dict[bytes, bytes | None] = {}

    @property
    def store(self) -> StateStore:
        return self._store

    # ------------------------------------------------------------------ raw access

    def committed(self, key: bytes) -> bytes | None:
        """Value of ``key`` in the committed store, ignoring pending writes."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._store.get(key)
            self._cache[key] = value
            return value

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self.committed(key)

    def has(self, key: bytes) -> bool:
        return self.get(key) is not None

    def set(self, key: bytes, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"state values are bytes, got {type(value).__name__}")
        self._record(key)
        self._writes[key] = value

    def delete(self, key: bytes) -> None:
        self._record(key)
        self._writes[key] = None

    def _record(self, key: bytes) -> None:
        self._journal.append((key, self._writes.get(key, _MISSING)))

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Live ``(key, value)`` pairs under ``prefix`` in key order, pending writes merged."""
        merged = dict(self._store.iter_prefix(prefix))
        for k, v in self._writes.items():
            if k.startswith(prefix):
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        for k in sorted(merged):
            yield k, merged[k]

    # ------------------------------------------------------------------ typed access

    def get_obj(self, key: bytes, typ: type[T], default: T) -> T:
        raw = self.get(key)
        return default if raw is None else encoding.decode_trusted(raw, typ)

    def set_obj(self, key: bytes, obj: object) -> None:
        self.set(key, encoding.encode(obj))

    def get_int(self, key: bytes, default: int = 0) -> int:
        return self.get_obj(key, int, default)

    def set_int(self, key: bytes, value: int) -> None:
        if type(value) is not int:
            raise TypeError(f"state integers must be int, got {type(value).__name__}")
        self.set_obj(key, value)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> int:
        """A mark to :meth:`revert` to; snapshots nest (revert to an outer one undoes all)."""
        return len(self._journal)

    def revert(self, snap: int) -> None:
        """Undo every write made since :meth:`snapshot` returned ``snap``."""
        if not 0 <= snap <= len(self._journal):
            raise ValueError(f"snapshot {snap} is not live (journal has {len(self._journal)})")
        while len(self._journal) > snap:
            key, prev = self._journal.pop()
            if isinstance(prev, _Missing):
                del self._writes[key]
            else:
                self._writes[key] = prev

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Run a block of writes all-or-nothing: any exception reverts them and propagates."""
        snap = self.snapshot()
        try:
            yield
        except BaseException:
            self.revert(snap)
            raise

    # ------------------------------------------------------------------ changeset

    def changeset(self) -> Changeset:
        """Net difference against the committed store, sorted by key (None = delete)."""
        out: Changeset = {}
        for k in sorted(self._writes):
            v = self._writes[k]
            if v != self.committed(k):
                out[k] = v
        return out

    def __len__(self) -> int:
        """Number of keys with a pending write (not necessarily a net change)."""
        return len(self._writes)


def changeset_root(changes: Mapping[bytes, bytes | None]) -> bytes:
    """Merkle root of the sorted changeset entries ``encode((key, value or b"", deleted))``."""
    return merkle.root([changeset_leaf(k, v) for k, v in sorted(changes.items())])


def app_hash(prev_app_hash: bytes, height: int, changes: Mapping[bytes, bytes | None]) -> bytes:
    """The app hash after applying ``changes`` at ``height`` (see the module docstring); the
    formula lives with the proofs that light clients check against it."""
    return app_hash_from_root(prev_app_hash, height, changeset_root(changes))

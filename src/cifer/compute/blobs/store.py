"""A content-addressed (SHA-256) blob store, on disk or in memory.

A blob's name is the SHA-256 of its bytes, so anything read back is checked against its
name: a blob served from here is exactly the blob whose hash is on chain, or nothing.

On disk a blob lives at ``root/ab/abcdef...`` (lowercase hex). Writes go to a temporary
file in the same directory, are fsynced and then renamed into place, so a crash never
leaves a half-written blob under its final name; leftover temporary files are removed when
the store is opened. Reads re-hash the file: a corrupted file is deleted and reported
missing, so the node fetches a good copy from a peer instead of serving bad bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("cifer.blobs")

HASH_BYTES = 32
_TMP_PREFIX = ".tmp-"


class BlobError(ValueError):
    """A blob or blob hash was refused: malformed hash, too large, or bytes not matching."""


def blob_hash(data: bytes) -> bytes:
    """The name of a blob: SHA-256 of its bytes (32 bytes)."""
    return hashlib.sha256(data).digest()


def parse_blob_hash(text: str) -> bytes:
    """A blob hash from 64 hex characters (an optional ``0x`` prefix is accepted)."""
    try:
        h = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise BlobError(f"not a 32-byte SHA-256 hash: {text[:80]!r} is not hex") from None
    if len(h) != HASH_BYTES:
        raise BlobError(
            f"not a 32-byte SHA-256 hash: {text[:80]!r} is {len(h)} bytes "
            f"(expected 64 hex characters)"
        )
    return h


def check_blob_hash(h: object) -> bytes:
    """``h`` itself if it is a 32-byte hash; raises BlobError otherwise."""
    if not isinstance(h, bytes) or len(h) != HASH_BYTES:
        shown = h.hex() if isinstance(h, bytes) else repr(h)
        raise BlobError(f"not a 32-byte SHA-256 hash: {shown[:80]}")
    return h


class BlobStore:
    """Blobs by SHA-256. ``root=None`` keeps them in memory (tests, simulations).

    Thread-safe: the node calls it from its event loop and from worker threads. Writers
    never block readers; the lock only orders the final rename against the deletion of a
    corrupted file, so a good copy that has just landed is never deleted by mistake.
    """

    def __init__(self, root: Path | None, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._mem: dict[bytes, bytes] = {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            self._remove_temp_files()

    # ------------------------------------------------------------------ public API

    def put(self, data: bytes, expected: bytes | None = None) -> bytes:
        """Store ``data``; returns its hash. Idempotent. Raises BlobError (nothing stored)
        if ``data`` exceeds ``max_bytes`` or does not hash to ``expected``."""
        return self.insert(data, expected)[0]

    def insert(self, data: bytes, expected: bytes | None = None) -> tuple[bytes, bool]:
        """Like :meth:`put`, also telling whether the blob is new here: (hash, created)."""
        if expected is not None:
            check_blob_hash(expected)
        if len(data) > self.max_bytes:
            raise BlobError(f"blob is {len(data):,} bytes, the limit is {self.max_bytes:,}")
        h = blob_hash(data)
        if expected is not None and h != expected:
            raise BlobError(
                f"blob hash mismatch: expected {expected.hex()}, content hashes to {h.hex()}"
            )
        if self.root is None:
            with self._lock:
                created = h not in self._mem
                self._mem.setdefault(h, bytes(data))
            return h, created
        path = self._path(h)
        if self._read_valid(path, h) is not None:
            return h, False
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock:
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
        return h, True

    def get(self, h: bytes) -> bytes | None:
        """The blob's bytes, verified against ``h``; None if absent (or found corrupted)."""
        check_blob_hash(h)
        if self.root is None:
            with self._lock:
                return self._mem.get(h)
        path = self._path(h)
        data = self._read_valid(path, h)
        if data is None and path.exists():
            with self._lock:  # re-check: a good copy may have just replaced the bad one
                data = self._read_valid(path, h)
                if data is None and path.exists():
                    log.warning("blob %s is corrupted on disk; deleted it", h.hex())
                    with contextlib.suppress(OSError):
                        path.unlink()
        return data

    def has(self, h: bytes) -> bool:
        """Whether the blob is here (not re-verified; :meth:`get` does that)."""
        check_blob_hash(h)
        if self.root is None:
            with self._lock:
                return h in self._mem
        return self._path(h).is_file()

    def size(self, h: bytes) -> int | None:
        """The blob's length in bytes, or None if absent."""
        check_blob_hash(h)
        if self.root is None:
            with self._lock:
                data = self._mem.get(h)
            return None if data is None else len(data)
        try:
            return self._path(h).stat().st_size
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ internals

    def _path(self, h: bytes) -> Path:
        assert self.root is not None
        name = h.hex()
        return self.root / name[:2] / name

    def _read_valid(self, path: Path, h: bytes) -> bytes | None:
        """The file's bytes if it exists and hashes to ``h``, else None."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data if blob_hash(data) == h else None

    def _remove_temp_files(self) -> None:
        """Temporary files left by a crash mid-write (never visible as blobs)."""
        assert self.root is not None
        for tmp in self.root.glob(f"??/{_TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); platforms without directory fds skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)

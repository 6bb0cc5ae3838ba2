"""Consensus write-ahead log: what a replica saw at the current height, to resume after a crash.

Tendermint's safety argument needs a validator to keep its lock across restarts. The
signer's guard stops it from signing twice at one position; this log lets it rebuild the
rest (proposals, votes, fired timeouts) by replaying them into a fresh replica. Its own
messages are written with fsync before they are sent; received ones are buffered (a peer
re-sends anything lost). Records are length-prefixed with a checksum, and reading stops at
the first torn or corrupt record, which is what a crash mid-write leaves behind.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from cifer.base import encoding
from cifer.base.encoding import Canonical, EncodingError

MAX_RECORD = 16 * 1024 * 1024


class WalHeight(Canonical, frozen=True, tag="height"):
    height: int


class WalMessage(Canonical, frozen=True, tag="msg"):
    sender: bytes  # peer key; empty for this replica's own messages
    msg: bytes  # the encoded consensus message


class WalTimeout(Canonical, frozen=True, tag="timeout"):
    height: int
    round: int
    step: int


WalEntry = WalHeight | WalMessage | WalTimeout


class WAL:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - held for the node's lifetime

    def write(self, entry: WalEntry, *, sync: bool = False) -> None:
        data = encoding.encode(entry)
        rec = struct.pack(">I", len(data)) + hashlib.sha256(data).digest()[:4] + data
        self._fh.write(rec)
        if sync:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def flush(self) -> None:
        self._fh.flush()

    def start_height(self, height: int) -> None:
        """Drop the finished height's records; the log only ever holds one height."""
        self._fh.close()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            data = encoding.encode(WalHeight(height))
            fh.write(struct.pack(">I", len(data)) + hashlib.sha256(data).digest()[:4] + data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._fh = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._fh.close()

    @staticmethod
    def read(path: Path) -> tuple[int, list[WalEntry]]:
        """(height, entries after its marker); (0, []) if there is no usable log."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0, []
        entries: list[WalEntry] = []
        pos = 0
        while pos + 8 <= len(raw):
            (n,) = struct.unpack(">I", raw[pos : pos + 4])
            if n > MAX_RECORD or pos + 8 + n > len(raw):
                break  # torn tail
            check, data = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]
            if hashlib.sha256(data).digest()[:4] != check:
                break
            try:
                entries.append(encoding.decode(data, WalEntry))  # type: ignore[arg-type]
            except EncodingError:
                break
            pos += 8 + n
        if not entries or not isinstance(entries[0], WalHeight):
            return 0, []
        return entries[0].height, entries[1:]

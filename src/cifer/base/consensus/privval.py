"""Validator signer with double-sign protection.

Before a vote or proposal signature leaves the signer, the (height, round, step) it is for is
made durable. A later request for an earlier position is refused, and a request for the same
position is answered only with the very same signature (a resend after a crash), never with a
signature over different content. This is what keeps a restarted validator from equivocating.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cifer.base import encoding
from cifer.base.chain.types import (
    PRECOMMIT,
    PREVOTE,
    Proposal,
    Vote,
    proposal_sign_bytes,
    vote_sign_bytes,
)
from cifer.base.crypto.keys import PrivateKey
from cifer.base.encoding import Canonical

STEP_PROPOSE = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3
_STEP_OF_VOTE = {PREVOTE: STEP_PREVOTE, PRECOMMIT: STEP_PRECOMMIT}


class DoubleSignError(RuntimeError):
    """Signing this would contradict something this key already signed."""


class LastSigned(Canonical, frozen=True):
    height: int
    round: int
    step: int
    sign_bytes: bytes
    signature: bytes


class SignStateStore:
    """Where the last signed position lives. The base class keeps it in memory (simulator)."""

    def __init__(self) -> None:
        self._state: LastSigned | None = None

    def load(self) -> LastSigned | None:
        return self._state

    def save(self, state: LastSigned) -> None:
        self._state = state


class FileSignStateStore(SignStateStore):
    """Durable store: write a temp file, fsync it, rename over the old one, fsync the dir."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        if path.exists():
            self._state = encoding.decode(path.read_bytes(), LastSigned)

    def save(self, state: LastSigned) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = encoding.encode(state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._state = state


class Signer:
    """Signs votes and proposals for one validator key, guarded by a :class:`SignStateStore`."""

    def __init__(self, key: PrivateKey, chain_id: str, store: SignStateStore | None = None) -> None:
        self.key = key
        self.address = key.address
        self.chain_id = chain_id
        self.store = store or SignStateStore()

    def sign_vote(self, typ: int, height: int, round: int, block_hash: bytes) -> Vote:
        msg = vote_sign_bytes(self.chain_id, typ, height, round, block_hash)
        sig = self._guarded_sign(height, round, _STEP_OF_VOTE[typ], msg)
        return Vote(typ, height, round, block_hash, self.address, sig)

    def sign_proposal(self, height: int, round: int, pol_round: int, block_hash: bytes) -> Proposal:
        msg = proposal_sign_bytes(self.chain_id, height, round, pol_round, block_hash)
        sig = self._guarded_sign(height, round, STEP_PROPOSE, msg)
        return Proposal(height, round, pol_round, block_hash, self.address, sig)

    def _guarded_sign(self, height: int, round: int, step: int, msg: bytes) -> bytes:
        last = self.store.load()
        if last is not None:
            here, there = (height, round, step), (last.height, last.round, last.step)
            if here < there:
                raise DoubleSignError(f"already signed at {there}, refusing {here}")
            if here == there:
                if msg == last.sign_bytes:
                    return last.signature
                raise DoubleSignError(f"already signed different content at {here}")
        sig = self.key.sign(msg)
        self.store.save(LastSigned(height, round, step, msg, sig))  # durable before release
        return sig


def unguarded_signer(key: PrivateKey, chain_id: str) -> Callable[[int, int, int, bytes], Vote]:
    """A raw vote signer with no protection: only for simulating Byzantine validators."""

    def sign(typ: int, height: int, round: int, block_hash: bytes) -> Vote:
        msg = vote_sign_bytes(chain_id, typ, height, round, block_hash)
        return Vote(typ, height, round, block_hash, key.address, key.sign(msg))

    return sign

"""Merkle proofs of state records and transactions against block headers.

The app hash of height ``h`` (see :mod:`cifer.app.state`) is::

    SHA-256(b"cifer/apphash/v1" || prev_app_hash || h as 8 bytes big-endian || R)

with ``R`` the Merkle root of the block's net changeset entries ``encode((key, value or
b"", deleted))`` sorted by key. Header ``h+1`` carries that app hash. So what key ``k`` was
set to (or that it was deleted) at height ``h`` is proven by the entry, its Merkle path to
``R`` and ``prev_app_hash``: recompute the app hash and compare it with header ``h+1``,
whose own authenticity a light client (:mod:`cifer.base.chain.light`) establishes from
the genesis validators. Nothing here trusts the node that built the proof.

A proof says what a record was set to *at* ``h``, not that no later block changed it;
records meant to be proven (registrations, usage records) are written once.

The hashing is restated here rather than imported from the app layer, which the base layer
must not depend on; a test checks both compute the same hash.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cifer.base import encoding
from cifer.base.chain.types import Block, Header, ValidationError
from cifer.base.crypto import merkle
from cifer.base.crypto.merkle import MerkleProof
from cifer.base.encoding import Canonical
from cifer.base.store.state import StateStore

APP_HASH_TAG: Final = b"cifer/apphash/v1"


class ProofError(ValidationError):
    """A proof cannot be built (no such record) or does not verify; the message says why."""


class NotYetProvable(ProofError):
    """The record exists but the header that commits to it (height + 1) is not decided yet."""


def changeset_leaf(key: bytes, value: bytes | None) -> bytes:
    """The Merkle leaf of one changeset entry (``None`` = the key was deleted)."""
    return encoding.encode((key, b"" if value is None else value, value is None))


def app_hash_from_root(prev_app_hash: bytes, height: int, root: bytes) -> bytes:
    """The app hash of ``height`` given its changeset root (the formula of the module doc)."""
    if height < 0:
        raise ValueError("height must be non-negative")
    h = hashlib.sha256(APP_HASH_TAG)
    h.update(prev_app_hash)
    h.update(height.to_bytes(8, "big"))
    h.update(root)
    return h.digest()


class StateProof(Canonical, frozen=True):
    """``key`` was set to ``value`` (or deleted) by the block at ``height``."""

    height: int
    key: bytes
    value: bytes  # b"" when deleted
    deleted: bool
    proof: MerkleProof  # path of the entry to the changeset root of ``height``
    prev_app_hash: bytes  # app hash of height - 1 (b"" for genesis, height 0)

    @property
    def header_height(self) -> int:
        """Height of the header whose app hash this proof is checked against."""
        return self.height + 1

    def leaf(self) -> bytes:
        return changeset_leaf(self.key, None if self.deleted else self.value)

    def app_hash(self) -> bytes:
        """The app hash this proof implies; raises :class:`ProofError` if it is malformed."""
        if self.height < 0:
            raise ProofError(f"state proof height {self.height} is negative")
        if self.deleted and self.value:
            raise ProofError("state proof marks the key deleted but carries a value")
        if merkle.leaf_hash(self.leaf()) != self.proof.leaf_hash:
            raise ProofError(
                f"state proof entry for key {self.key.hex()} does not hash to the proof's leaf "
                "(key, value or deleted flag altered)"
            )
        try:
            root = self.proof.compute_root()
        except ValueError as exc:
            raise ProofError(f"state proof Merkle path is malformed: {exc}") from None
        return app_hash_from_root(self.prev_app_hash, self.height, root)


def verify_state_proof(proof: StateProof, app_hash: bytes) -> None:
    """Check ``proof`` against ``app_hash``, the app hash in the (trusted) header at
    ``proof.height + 1``; raises :class:`ProofError` naming what does not match."""
    got = proof.app_hash()
    if got != app_hash:
        raise ProofError(
            f"state proof for key {proof.key.hex()} at height {proof.height} implies app hash "
            f"{got.hex()[:16]}..., header {proof.header_height} commits to "
            f"{app_hash.hex()[:16]}... (wrong height, entry or path)"
        )


def build_state_proof(store: StateStore, key: bytes, height: int) -> StateProof:
    """Proof of what the block at ``height`` wrote to ``key``, from the store's history.

    Raises :class:`ProofError` if the store has no history for ``height`` or the key did not
    change at that height (:meth:`StateStore.change_heights` lists the heights it did).
    """
    if height < 0:
        raise ProofError(f"height {height} is negative")
    this = store.app_hash_at(height)
    prev = b"" if height == 0 else store.app_hash_at(height - 1)
    if this is None or prev is None:
        first = store.first_recorded_height()
        if height > store.height:
            raise ProofError(f"height {height} is not committed (state is at {store.height})")
        raise ProofError(
            f"this node keeps no state history for height {height} "
            f"(history starts at {first if first is not None else 'no height'})"
        )
    changes = store.changeset(height)
    if key not in changes:
        raise ProofError(
            f"key {key.hex()} was not written at height {height} "
            f"({len(changes)} keys changed there)"
        )
    keys = list(changes)  # the store returns them sorted
    leaves = [changeset_leaf(k, changes[k]) for k in keys]
    value = changes[key]
    proof = StateProof(
        height=height,
        key=key,
        value=b"" if value is None else value,
        deleted=value is None,
        proof=merkle.prove(leaves, keys.index(key)),
        prev_app_hash=prev,
    )
    # The history must reproduce the hash the store committed; if not, it is corrupt and
    # any proof from it would fail at the client with a less useful message.
    if proof.app_hash() != this:
        raise ProofError(f"state history at height {height} does not reproduce its app hash")
    return proof


# --------------------------------------------------------------------------- transactions


class TxProof(Canonical, frozen=True):
    """``tx`` is transaction number ``proof.index`` of the block at ``height``."""

    height: int
    tx: bytes
    proof: MerkleProof  # path to the header's data_hash


def build_tx_proof(block: Block, index: int) -> TxProof:
    if not 0 <= index < len(block.txs):
        raise ProofError(f"block {block.header.height} has no tx {index}")
    return TxProof(block.header.height, block.txs[index], merkle.prove(block.txs, index))


def verify_tx_proof(proof: TxProof, header: Header) -> None:
    """Check ``proof`` against ``header`` (trusted, at ``proof.height``); raises ProofError."""
    if header.height != proof.height:
        raise ProofError(f"tx proof is for height {proof.height}, header is {header.height}")
    if not proof.proof.verify(header.data_hash, proof.tx):
        raise ProofError(
            f"tx is not in block {proof.height}: its Merkle path does not reach the header's "
            "data hash"
        )


__all__ = [
    "APP_HASH_TAG",
    "NotYetProvable",
    "ProofError",
    "StateProof",
    "TxProof",
    "app_hash_from_root",
    "build_state_proof",
    "build_tx_proof",
    "changeset_leaf",
    "verify_state_proof",
    "verify_tx_proof",
]

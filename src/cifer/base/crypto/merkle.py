"""Binary Merkle tree with inclusion proofs (RFC 6962 layout, as CometBFT uses).

Leaves are hashed as SHA-256(0x00 || leaf) and inner nodes as SHA-256(0x01 || l || r), so a
leaf can never be passed off as an inner node. The split point is the largest power of two
below n, which makes the tree shape depend on n only.
"""

from __future__ import annotations

import hashlib

import msgspec

EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleProof(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Proof that the leaf at ``index`` of a ``total``-leaf tree hashes up to a root."""

    total: int
    index: int
    leaf_hash: bytes
    aunts: list[bytes]

    def compute_root(self) -> bytes:
        if self.total <= 0 or not 0 <= self.index < self.total:
            raise ValueError(f"proof index {self.index} out of range for {self.total} leaves")
        root = _root_from_aunts(self.index, self.total, self.leaf_hash, list(self.aunts))
        if root is None:
            raise ValueError("proof has the wrong number of aunts for its tree size")
        return root

    def verify(self, root: bytes, leaf: bytes) -> bool:
        """True iff ``leaf`` is at ``index`` in the tree whose root is ``root``."""
        if leaf_hash(leaf) != self.leaf_hash:
            return False
        try:
            return self.compute_root() == root
        except ValueError:
            return False


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    k = 1 << (n - 1).bit_length() - 1
    return k if k < n else k >> 1


def _root_of_hashes(hashes: list[bytes]) -> bytes:
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return inner_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def root(leaves: list[bytes]) -> bytes:
    return _root_of_hashes([leaf_hash(x) for x in leaves])


def prove(leaves: list[bytes], index: int) -> MerkleProof:
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    hashes = [leaf_hash(x) for x in leaves]
    aunts: list[bytes] = []
    _collect_aunts(hashes, index, aunts)
    return MerkleProof(total=len(leaves), index=index, leaf_hash=hashes[index], aunts=aunts)


def _collect_aunts(hashes: list[bytes], index: int, out: list[bytes]) -> None:
    # Aunts are listed bottom-up, like CometBFT's proof format.
    n = len(hashes)
    if n == 1:
        return
    k = _split(n)
    if index < k:
        _collect_aunts(hashes[:k], index, out)
        out.append(_root_of_hashes(hashes[k:]))
    else:
        _collect_aunts(hashes[k:], index - k, out)
        out.append(_root_of_hashes(hashes[:k]))


def _root_from_aunts(index: int, total: int, leaf: bytes, aunts: list[bytes]) -> bytes | None:
    if total == 1:
        return leaf if not aunts else None
    if not aunts:
        return None
    k = _split(total)
    last = aunts[-1]
    if index < k:
        left = _root_from_aunts(index, k, leaf, aunts[:-1])
        return None if left is None else inner_hash(left, last)
    right = _root_from_aunts(index - k, total - k, leaf, aunts[:-1])
    return None if right is None else inner_hash(last, right)

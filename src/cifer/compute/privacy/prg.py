"""Seeded pseudorandom expansion of a 32-byte seed into a vector of group elements.

The keystream of ChaCha20 (OpenSSL through ``cryptography``) under the seed, read as
little-endian words: a few GB/s, so a 1M-element mask costs about a millisecond, where a
Python loop would cost a second. The nonce is fixed because every seed is used for exactly one
vector (self-mask seeds are fresh per round and pairwise seeds are bound to job, round and
pair by HKDF), so key reuse cannot happen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

SEED_BYTES = 32
MIN_BITS = 16
MAX_BITS = 64
_NONCE = bytes(16)  # 4-byte block counter then 12-byte nonce, both zero (see module doc)


def group_dtype(bits: int) -> np.dtype[Any]:
    """The unsigned dtype that holds Z_{2^bits}: its native wraparound is reduction modulo
    2^32 or 2^64, and 2^bits divides both, so masking at the end reduces modulo 2^bits."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"modulus must be 2^{MIN_BITS}..2^{MAX_BITS}, got 2^{bits}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce(vec: NDArray[Any], bits: int) -> NDArray[Any]:
    """``vec`` modulo 2^bits, in place (a no-op for the native widths)."""
    if bits not in (32, 64):
        vec &= vec.dtype.type((1 << bits) - 1)
    return vec


def expand(seed: bytes, length: int, bits: int) -> NDArray[Any]:
    """``length`` uniform elements of Z_{2^bits} from ``seed`` (read-only unless reduced)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"PRG length must be non-negative, got {length}")
    dtype = group_dtype(bits)
    enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = enc.update(bytes(length * dtype.itemsize))
    out = np.frombuffer(stream, dtype=dtype.newbyteorder("<"), count=length)
    if bits in (32, 64):
        return out
    return reduce(out.astype(dtype), bits)


class MaskExpander:
    """Adds or subtracts PRG(seed) into an accumulator, reusing one keystream buffer:
    allocating fresh pages for every mask costs several times the keystream itself. Words are
    added at the dtype's full width; the caller reduces modulo 2^bits once at the end."""

    def __init__(self, length: int, bits: int) -> None:
        self.length = length
        self.dtype = group_dtype(bits)
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._buf = bytearray(nbytes + 64)  # update_into wants slack beyond the data length

    def apply(self, acc: NDArray[Any], seed: bytes, *, subtract: bool = False) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        if acc.shape != (self.length,) or acc.dtype != self.dtype:
            raise ValueError(f"accumulator must be {self.dtype} of length {self.length}")
        enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        enc.update_into(self._zeros, self._buf)
        words = np.frombuffer(self._buf, dtype=self.dtype.newbyteorder("<"), count=self.length)
        if subtract:
            np.subtract(acc, words, out=acc)
        else:
            np.add(acc, words, out=acc)

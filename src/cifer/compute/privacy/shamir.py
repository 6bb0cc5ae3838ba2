"""Shamir secret sharing over GF(2^521 - 1), for the 32-byte secrets of secure aggregation.

The field is the Mersenne prime 2^521 - 1: it is larger than every 32-byte secret (so a seed or
an X25519 private key is shared as is, with no reduction and no special case) and its primality
is textbook. A share is the pair (x, y) with x the holder's 1-based roster position, public,
and y a field element written as 66 big-endian bytes. Arithmetic is Python integers: this
module is protocol, not a primitive.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
_MASK = (1 << 521) - 1


class ShamirError(ValueError):
    """A share or sharing parameter is malformed."""


def random_element(randbytes: Callable[[int], bytes]) -> int:
    """A uniform field element (the value p itself, i.e. 0, has probability 2^-521 extra)."""
    return (int.from_bytes(randbytes(SHARE_BYTES), "big") & _MASK) % PRIME


def split(
    secret: int, threshold: int, xs: Sequence[int], randbytes: Callable[[int], bytes]
) -> list[int]:
    """y-values of a random degree ``threshold - 1`` polynomial with constant term ``secret``
    at each of ``xs``: any ``threshold`` of them give the secret, fewer give nothing."""
    if not 0 <= secret < PRIME:
        raise ShamirError("secret is not a field element")
    if threshold < 1:
        raise ShamirError(f"threshold must be at least 1, got {threshold}")
    _check_xs(xs)
    if len(xs) < threshold:
        raise ShamirError(f"{len(xs)} holders cannot meet threshold {threshold}")
    coeffs = [secret] + [random_element(randbytes) for _ in range(threshold - 1)]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out.append(acc)
    return out


def reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """The polynomial's value at 0 by Lagrange interpolation through exactly ``points``."""
    if not points:
        raise ShamirError("no shares to reconstruct from")
    xs = tuple(x for x, _ in points)
    _check_xs(xs)
    for _, y in points:
        if not 0 <= y < PRIME:
            raise ShamirError("share value is not a field element")
    coeffs = _lagrange_at_zero(xs)
    return sum(c * y for c, (_, y) in zip(coeffs, points, strict=True)) % PRIME


def share_to_bytes(y: int) -> bytes:
    if not 0 <= y < PRIME:
        raise ShamirError("share value is not a field element")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Parse a share value, refusing a wrong length or a value outside the field."""
    if len(data) != SHARE_BYTES:
        raise ShamirError(f"share must be {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ShamirError("share value is not a field element (>= 2^521 - 1)")
    return y


def _check_xs(xs: Sequence[int]) -> None:
    if any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share x-coordinates must be nonzero field elements")
    if len(set(xs)) != len(xs):
        raise ShamirError("share x-coordinates must be distinct")


@functools.lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values at 0; cached because the server reuses holder sets."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)

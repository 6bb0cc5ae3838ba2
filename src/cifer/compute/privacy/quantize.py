"""Fixed-point quantization of float updates into Z_{2^bits} and back.

A value x is clipped to [-clip, clip] and mapped to the integer round(x * scale) with
scale = (2^(value_bits-1) - 1) / clip, so every level lies in [-L, L], L = 2^(value_bits-1) - 1.
Negative levels are represented modulo 2^bits (two's complement), so a sum of n levels is
recovered exactly, as a signed integer, when n * L < 2^(bits-1): the caller states n and the
parameters refuse anything that could wrap. Rounding is deterministic (half to even) by
default; stochastic rounding (unbiased, from a seeded generator) is optional. Floats appear
only here, on the client before masking and after unmasking, never in what validators
compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cifer.compute.privacy.prg import group_dtype, reduce

MAX_VALUE_BITS = 53  # levels are computed in float64, exact up to 2^53


class QuantizationError(ValueError):
    """A vector cannot be quantized (non-finite values) or the parameters are unusable."""


class Quantizer:
    """Float vectors to signed integer levels and back, for one job's clip range and bits."""

    def __init__(self, clip: float, value_bits: int) -> None:
        if not (np.isfinite(clip) and clip > 0):
            raise QuantizationError(f"clip range must be a positive finite number, got {clip}")
        if not 2 <= value_bits <= MAX_VALUE_BITS:
            raise QuantizationError(f"value bits must be 2..{MAX_VALUE_BITS}, got {value_bits}")
        self.clip = float(clip)
        self.value_bits = value_bits
        self.max_level = (1 << (value_bits - 1)) - 1
        self.scale = self.max_level / self.clip

    def quantize(
        self, x: NDArray[Any], *, rng: np.random.Generator | None = None
    ) -> NDArray[np.int64]:
        """Levels of ``x`` (any float array, flattened); with ``rng``, stochastic rounding."""
        v = np.array(x, dtype=np.float64).ravel()  # a private copy, then in place
        if not np.all(np.isfinite(v)):
            raise QuantizationError("cannot quantize a vector with NaN or infinite values")
        np.clip(v, -self.clip, self.clip, out=v)
        v *= self.scale
        if rng is None:
            np.rint(v, out=v)
        else:  # floor(v + u), u ~ U[0, 1), rounds up with probability frac(v): unbiased
            v += rng.random(v.shape)
            np.floor(v, out=v)
        lim = float(self.max_level)
        np.clip(v, -lim, lim, out=v)
        return v.astype(np.int64)

    def dequantize(self, levels: NDArray[Any]) -> NDArray[np.float64]:
        """Floats from levels, or from a sum of levels (then the result is the float sum)."""
        return np.asarray(levels, dtype=np.float64) / self.scale


def to_group(levels: NDArray[Any], bits: int) -> NDArray[Any]:
    """Signed integer levels as elements of Z_{2^bits} (two's complement)."""
    dtype = group_dtype(bits)
    return reduce(np.asarray(levels, dtype=np.int64).astype(dtype), bits)


def from_group(vec: NDArray[Any], bits: int) -> NDArray[np.int64]:
    """Elements of Z_{2^bits} as signed integers in [-2^(bits-1), 2^(bits-1))."""
    dtype = group_dtype(bits)
    arr = np.asarray(vec)
    if arr.dtype != dtype:
        raise QuantizationError(f"group vector must be {dtype}, got {arr.dtype}")
    if bits == 64:
        return arr.view(np.int64).copy()
    out = arr.astype(np.int64)
    out[out >= (1 << (bits - 1))] -= 1 << bits
    return out

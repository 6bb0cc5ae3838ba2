"""Coordinate-wise rules: median and trimmed mean (Yin et al. 2018).

Both sort each coordinate's n values. Column blocks are transposed to a contiguous
(block, n) layout and sorted along rows: numpy's SIMD sort of short contiguous rows
measured about 7x faster than per-coordinate ``np.partition`` (introselect) on a
50 x 10^6 float32 matrix (0.12 s vs 0.86 s). A full sort also makes the result exactly
independent of client order: the sorted values, and so every sum over them, are the same
for any permutation of the clients.

Median of an even number of values: like ``numpy.median`` (and so Flower's
``aggregate_median``, which calls it, and byzfl's numpy backend), we return the mean of the
two middle values. byzfl's torch backend calls ``torch.median``, which returns the lower of
the two, so on even n it can differ from us by half the middle gap. The midpoint is formed
in float64 (exact for float32 inputs, then rounded once), which equals ``numpy.median``
except where numpy's float32 sum would overflow.

Client-reported weights are ignored by both rules: an order statistic has no sound notion
of a weight an attacker cannot inflate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cifer.compute.fl.aggregators.base import (
    SORT_BLOCK,
    AggContext,
    AggResult,
    F64Array,
    FloatArray,
    all_true,
    check_inputs,
    column_blocks,
    require,
    sorted_columns,
)


def median_of_sorted(s: FloatArray) -> F64Array:
    """Row-wise median of a (B, n) array sorted along rows (mean of the middle two if n is
    even)."""
    n = s.shape[1]
    m = n // 2
    if n % 2:
        mid: F64Array = s[:, m].astype(np.float64)
        return mid
    lo: F64Array = s[:, m - 1].astype(np.float64)
    hi: F64Array = s[:, m].astype(np.float64)
    if s.dtype == np.float32:
        return (lo + hi) * 0.5  # exact in float64
    return lo * 0.5 + hi * 0.5  # avoids overflow of lo + hi near float64 max


def _round_like(v: F64Array, dtype: np.dtype[Any]) -> F64Array:
    """``v`` rounded to ``dtype`` (the output's precision) and back, for distances."""
    return v.astype(dtype).astype(np.float64)


def _dist2(block: FloatArray, agg: F64Array, dtype: np.dtype[Any]) -> F64Array:
    diff = block - _round_like(agg, dtype)
    out: F64Array = np.einsum("ij,ij->i", diff, diff)
    return out


def coordinate_median(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Coordinate-wise median. Needs n >= 2f + 1 (an honest majority per coordinate).

    Scores: Euclidean distance of each update to the aggregate. Accepted: all clients (the
    median excludes values, not clients).
    """
    x, _ = check_inputs(updates, weights, ctx, rule="median")
    n, d = x.shape
    require(n >= 2 * ctx.f + 1, "median", f"needs n >= 2f+1, got n={n}, f={ctx.f}")
    out = np.empty(d, dtype=x.dtype)
    dist2 = np.zeros(n, dtype=np.float64)
    for sl in column_blocks(d, SORT_BLOCK):
        block = x[:, sl]
        med = median_of_sorted(sorted_columns(block))
        out[sl] = med
        dist2 += _dist2(block, med, x.dtype)
    return AggResult(out, all_true(n), np.sqrt(dist2))


def trimmed_mean(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Coordinate-wise trimmed mean: drop the k smallest and k largest values, average the rest.

    k = f by default, or floor(beta * n) when parameter ``beta`` (a fraction in [0, 0.5))
    is given. Needs n > 2k. Scores: distance of each update to the aggregate. Accepted: all.
    """
    x, _ = check_inputs(updates, weights, ctx, rule="trimmed_mean")
    n, d = x.shape
    if ctx.params.get("beta") is not None:
        beta = ctx.param_float("beta", 0.0, low=0.0, high=0.5)
        require(beta < 0.5, "trimmed_mean", f"beta must be < 0.5, got {beta}")
        k = math.floor(beta * n)
    else:
        k = ctx.f
    require(n > 2 * k, "trimmed_mean", f"needs n > 2k (k trimmed per side), got n={n}, k={k}")
    out = np.empty(d, dtype=x.dtype)
    dist2 = np.zeros(n, dtype=np.float64)
    for sl in column_blocks(d, SORT_BLOCK):
        block = x[:, sl]
        s = sorted_columns(block)
        mean = s[:, k : n - k].sum(axis=1, dtype=np.float64) / (n - 2 * k)
        out[sl] = mean
        dist2 += _dist2(block, mean, x.dtype)
    return AggResult(out, all_true(n), np.sqrt(dist2), {"trimmed_per_side": k})


def mean_around_median(s: FloatArray, beta: int) -> F64Array:
    """Row-wise mean of the ``beta`` values closest to the median (Bulyan's stage 2).

    ``s`` is (B, theta), sorted along rows. The beta values closest to the median form a
    contiguous window of a sorted row, so per row we pick the window whose farthest member
    is closest to the median. Ties go to the lowest window: a choice that depends on the
    values only, never on client order.
    """
    theta = s.shape[1]
    med = median_of_sorted(s)
    s64 = s.astype(np.float64)
    best_cost = np.full(s.shape[0], np.inf)
    best_start = np.zeros(s.shape[0], dtype=np.intp)
    for j in range(theta - beta + 1):  # 2f + 1 windows; vectorised over coordinates
        cost = np.maximum(med - s64[:, j], s64[:, j + beta - 1] - med)
        better = cost < best_cost
        best_cost = np.where(better, cost, best_cost)
        best_start = np.where(better, j, best_start)
    cols = best_start[:, None] + np.arange(beta, dtype=np.intp)[None, :]
    picked = np.take_along_axis(s64, cols, axis=1)
    result: F64Array = picked.sum(axis=1) / beta
    return result

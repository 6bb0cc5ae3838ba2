"""Geometric median by the smoothed Weiszfeld algorithm (RFA, Pillutla, Kakade, Harchaoui,
IEEE TSP 2022).

Each iterate is a convex combination of the updates, v = sum_j c_j x_j, so the distances
||v - x_i||^2 = G_ii - 2 (G c)_i + c^T G c come from the Gram matrix G: the iterations run
on n coefficients and the d-dimensional aggregate is formed once at the end. That makes
100 iterations cost less than one pass over a 50 x 10^6 matrix.
"""

from __future__ import annotations

import numpy as np

from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggResult,
    F64Array,
    FloatArray,
    all_true,
    check_inputs,
    combine,
    gram,
    require,
)


def _distances(g: F64Array, c: F64Array) -> F64Array:
    """||x_i - sum_j c_j x_j|| for all i, from the Gram matrix."""
    gc = g @ c
    d2 = np.diag(g) - 2.0 * gc + float(c @ gc)
    result: F64Array = np.sqrt(np.maximum(d2, 0.0))
    return result


def geometric_median(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Approximate argmin_v sum_i a_i ||v - x_i|| (smoothed Weiszfeld). Needs n >= 2f + 1.

    Parameters: ``nu`` (smoothing, default 1e-6): distances below nu count as nu, which
    keeps the step defined when the iterate lands on an update; ``max_iter`` (default 100);
    ``tol`` (default 1e-6): stop when the objective improves by less than tol relative.
    ``weighted`` (default False): a_i = 1 (client weights ignored, so a reported sample
    count buys no pull); if True, a_i = min(w_i, median(w)), which honours small clients'
    sizes while capping any claim at the median. The start is the (a-weighted) mean.
    Scores: distance of each update to the aggregate. Accepted: all.
    """
    x, w = check_inputs(updates, weights, ctx, rule="geometric_median")
    n = x.shape[0]
    require(n >= 2 * ctx.f + 1, "geometric_median", f"needs n >= 2f+1, got n={n}, f={ctx.f}")
    nu = ctx.param_float("nu", 1e-6, low=0.0, strict_low=True)
    max_iter = ctx.param_int("max_iter", 100, low=1)
    tol = ctx.param_float("tol", 1e-6, low=0.0)
    if ctx.param_bool("weighted", False):
        a = np.minimum(w, np.median(w))
        require(float(a.sum()) > 0, "geometric_median", "all capped weights are zero")
    else:
        a = np.ones(n, dtype=np.float64)
    a = a / a.sum()
    g = gram(x)
    c = a.copy()
    dist = _distances(g, c)
    obj = float(a @ dist)
    iters = 0
    for iters in range(1, max_iter + 1):  # noqa: B007 - iteration count is reported
        beta = a / np.maximum(dist, nu)
        c = beta / beta.sum()
        dist = _distances(g, c)
        new_obj = float(a @ dist)
        done = abs(obj - new_obj) <= tol * max(new_obj, np.finfo(np.float64).tiny)
        obj = new_obj
        if done:
            break
    agg = combine(x, c).astype(x.dtype)
    return AggResult(agg, all_true(n), dist, {"iterations": iters, "objective": obj})

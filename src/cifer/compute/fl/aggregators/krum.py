"""Distance-based selection: Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi
et al. 2018).

All three read pairwise squared distances from one Gram matrix (one streamed pass over the
updates), so their cost is one BLAS syrk plus O(n^2 log n) bookkeeping.

Krum score of client i: the sum of squared distances to its n - f - 2 nearest other
clients, as in the paper and in Flower. (byzfl sums over n - f - 1 neighbours; the
selection can differ on small n.) Ties in a score are broken by the updates' values
(lexicographic order), then by client index, so the selection does not depend on the
order of the clients unless two updates are identical (and then neither does the
aggregate). Exact ties are not exotic: with one neighbour, as in Bulyan's last rounds, two
mutually nearest updates always tie.

Client-reported weights are ignored for selection. Krum returns one update as is; Multi-
Krum averages the selected uniformly unless ``weighted=True``, in which case each selected
client's weight is capped at the median weight of the selected set (Flower's Multi-Krum
uses raw sample counts, which lets a selected attacker claim a huge dataset). Bulyan
ignores weights.
"""

from __future__ import annotations

from functools import cmp_to_key
from itertools import pairwise

import numpy as np

from cifer.compute.fl.aggregators.base import (
    SORT_BLOCK,
    AggContext,
    AggResult,
    BoolArray,
    F64Array,
    FloatArray,
    IntArray,
    check_inputs,
    combine,
    ensure_finite,
    gram,
    require,
    run_lanes,
    sorted_columns,
    sq_distances,
)
from cifer.compute.fl.aggregators.coordinate import mean_around_median


def krum_scores(dist: F64Array, f: int, members: IntArray | None = None) -> F64Array:
    """Krum scores of ``members`` (default: all) computed within that subset.

    The neighbour count is m - f - 2 for a subset of size m, clamped to [1, m - 1] so the
    shrinking sets of Bulyan's iterated Krum stay well defined (as Flower does).
    """
    sub = dist if members is None else dist[np.ix_(members, members)]
    m = sub.shape[0]
    if m == 1:
        return np.zeros(1, dtype=np.float64)
    k = min(max(m - f - 2, 1), m - 1)
    masked = sub.copy()
    np.fill_diagonal(masked, np.inf)
    nearest = np.sort(masked, axis=1)[:, :k]  # sorted, so the sum order is fixed
    scores: F64Array = nearest.sum(axis=1)
    return scores


def _lex_cmp(a: FloatArray, b: FloatArray) -> int:
    """Lexicographic comparison of two vectors (first differing coordinate decides)."""
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return 0
    i = diff[0]
    return -1 if a[i] < b[i] else 1


def rank_clients(scores: F64Array, x: FloatArray, members: IntArray) -> IntArray:
    """``members`` ordered by score, ties by update value, then by client index.

    ``scores[k]`` belongs to ``members[k]``. Only runs of exactly equal scores are
    re-sorted, so the usual (tie-free) cost is one argsort.
    """
    order = np.argsort(scores, kind="stable")
    ranked = members[order]
    s = scores[order]
    if s.size < 2:
        return ranked
    starts = np.flatnonzero(np.diff(s) != 0) + 1
    bounds = [0, *starts.tolist(), s.size]

    def cmp(i: int, j: int) -> int:
        return _lex_cmp(x[i], x[j]) or (i - j)

    for lo, hi in pairwise(bounds):
        if hi - lo > 1:
            ranked[lo:hi] = sorted(ranked[lo:hi].tolist(), key=cmp_to_key(cmp))
    return ranked


def _distances(x: FloatArray, rule: str) -> F64Array:
    """Pairwise squared distances; also the NaN/inf check (from the Gram diagonal)."""
    g = gram(x)
    ensure_finite(bool(np.isfinite(np.diagonal(g)).all()), x, rule)
    return sq_distances(g)


def _one_hot(n: int, idx: IntArray) -> BoolArray:
    mask = np.zeros(n, dtype=np.bool_)
    mask[idx] = True
    return mask


def krum(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Krum: return the update with the lowest Krum score. Needs n >= 2f + 3.

    Scores: Krum score (lower is more central). Accepted: only the selected client.
    """
    x, _ = check_inputs(updates, weights, ctx, rule="krum", scan_finite=False)
    n = x.shape[0]
    f = ctx.f
    require(n >= 2 * f + 3, "krum", f"needs n >= 2f+3, got n={n}, f={f}")
    scores = krum_scores(_distances(x, "krum"), f)
    best = int(rank_clients(scores, x, np.arange(n, dtype=np.intp))[0])
    sel = np.array([best], dtype=np.intp)
    return AggResult(x[best].copy(), _one_hot(n, sel), scores, {"selected": (best,)})


def multi_krum(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Multi-Krum: average the ``m`` updates with the lowest Krum scores (default m = n - f).

    Needs n >= 2f + 3 and 1 <= m <= n. Parameter ``weighted`` (default False): see the
    module docstring. Scores: Krum score. Accepted: the m selected clients.
    """
    x, w = check_inputs(updates, weights, ctx, rule="multi_krum", scan_finite=False)
    n = x.shape[0]
    f = ctx.f
    require(n >= 2 * f + 3, "multi_krum", f"needs n >= 2f+3, got n={n}, f={f}")
    m = ctx.param_int("m", n - f, low=1)
    require(m <= n, "multi_krum", f"m={m} exceeds the number of clients n={n}")
    weighted = ctx.param_bool("weighted", False)
    scores = krum_scores(_distances(x, "multi_krum"), f)
    sel = np.sort(rank_clients(scores, x, np.arange(n, dtype=np.intp))[:m])
    coef = np.zeros(n, dtype=np.float64)
    if weighted:
        ws = w[sel]
        capped = np.minimum(ws, np.median(ws))
        total = float(capped.sum())
        require(total > 0, "multi_krum", "the selected clients' weights are all zero")
        coef[sel] = capped / total
    else:
        coef[sel] = 1.0 / m
    agg = combine(x, coef).astype(x.dtype)
    return AggResult(agg, _one_hot(n, sel), scores, {"selected": tuple(int(i) for i in sel)})


def bulyan(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Bulyan over Krum. Needs n >= 4f + 3.

    Stage 1: theta = n - 2f clients are selected by Krum applied repeatedly, each time to
    the clients not yet selected. Stage 2: per coordinate, the mean of the beta = n - 4f
    selected values closest to their median. Scores: Krum scores over all n clients (the
    first round of stage 1). Accepted: the theta clients selected in stage 1.

    The last Krum round runs on 2f + 1 updates with f - 1 neighbours, so a clump of f
    identical attackers scores 0 there and one of them is selected; stage 2 is what
    discards it. This is the paper's procedure (and Flower's), not a deviation.
    """
    x, _ = check_inputs(updates, weights, ctx, rule="bulyan", scan_finite=False)
    n, d = x.shape
    f = ctx.f
    require(n >= 4 * f + 3, "bulyan", f"needs n >= 4f+3, got n={n}, f={f}")
    theta = n - 2 * f
    beta = theta - 2 * f
    dist = _distances(x, "bulyan")
    scores = krum_scores(dist, f)
    remaining = np.arange(n, dtype=np.intp)
    order: list[int] = []
    for _ in range(theta):  # iterations of Krum, not a loop over pairs
        local = krum_scores(dist, f, remaining)
        pick = int(rank_clients(local, x, remaining)[0])
        order.append(pick)
        remaining = remaining[remaining != pick]
    sel = np.sort(np.array(order, dtype=np.intp))
    out = np.empty(d, dtype=x.dtype)

    def lane(blocks: list[slice]) -> None:  # lanes write disjoint columns of out
        for sl in blocks:
            out[sl] = mean_around_median(sorted_columns(x[sel, sl]), beta)

    run_lanes(lane, d, SORT_BLOCK)
    return AggResult(out, _one_hot(n, sel), scores, {"selected": tuple(order), "beta": beta})

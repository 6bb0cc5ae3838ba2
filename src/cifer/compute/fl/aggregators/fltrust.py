"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021): trust bootstrapped from a server root dataset.

Trust score TS_i = ReLU(cos(x_i, g_0)) where g_0 is the server's update on its small clean
root dataset; each update is rescaled to ||g_0||, and the aggregate is
sum_i TS_i * (||g_0|| / ||x_i||) x_i / sum_i TS_i. Rescaling caps any client's magnitude
at the root update's, and the ReLU drops clients pointing away from it.
"""

from __future__ import annotations

import numpy as np

from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggregationError,
    AggResult,
    FloatArray,
    check_inputs,
    check_vector,
    combine,
    gram,
)


def fltrust(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """FLTrust against ``ctx.root_update`` (required, non-zero).

    Client weights are ignored (the paper weights by trust only). A client with a zero
    update gets trust 0. If every trust score is 0 the aggregate is the zero vector (the
    model does not move) and ``info["all_distrusted"]`` is True; the paper leaves this case
    open. No bound on f: the rule does not rely on an honest majority. Scores: trust score
    in [0, 1]. Accepted: clients with positive trust.
    """
    x, _ = check_inputs(updates, weights, ctx, rule="fltrust")
    n, d = x.shape
    if ctx.root_update is None:
        raise AggregationError("fltrust: ctx.root_update (the server's root update) is required")
    g0 = check_vector(ctx.root_update, d, "root_update", "fltrust")
    g = gram(x, (g0,))
    norms = np.sqrt(np.diag(g)[:n])
    root_norm = float(np.sqrt(g[n, n]))
    if root_norm == 0.0:
        raise AggregationError("fltrust: root_update has zero norm")
    dots = g[:n, n]
    safe = np.where(norms > 0, norms, 1.0)
    cos = np.where(norms > 0, dots / (safe * root_norm), 0.0)
    trust = np.clip(cos, 0.0, 1.0)  # ReLU; the upper clip only absorbs rounding above 1
    total = float(trust.sum())
    if total == 0.0:
        zero = np.zeros(d, dtype=x.dtype)
        return AggResult(zero, trust > 0, trust, {"all_distrusted": True})
    coef = trust * (root_norm / safe) / total
    agg = combine(x, coef).astype(x.dtype)
    return AggResult(agg, trust > 0, trust, {"all_distrusted": False})

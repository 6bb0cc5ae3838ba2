"""Averaging rules: FedAvg and reputation-weighted averaging.

Neither is Byzantine-robust: one client can move the average arbitrarily far. They exist
because they are the baseline (FedAvg) and because averaging is the only rule that works on
masked or encrypted updates, where the ledger's reputation and a norm bound are the only
defences (see the design's privacy section).
"""

from __future__ import annotations

import numpy as np

from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggregationError,
    AggResult,
    F64Array,
    FloatArray,
    as_output,
    check_inputs,
    combine,
    row_sq_norms,
)

#: Reputation is an integer in parts per million on chain.
PPM = 1_000_000


def fedavg(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Weighted mean sum_i w_i x_i / sum_i w_i (McMahan et al. 2017).

    Weights are the clients' self-reported sample counts and are used as given: FedAvg
    trusts clients, which is why it is only a baseline. Scores: each client's normalised
    weight. Accepted: clients with a positive weight.
    """
    x, w = check_inputs(updates, weights, ctx, rule="fedavg")
    total = float(w.sum())
    if total <= 0.0:
        raise AggregationError("fedavg: all weights are zero")
    coef = w / total
    return AggResult(as_output(combine(x, coef), x), w > 0, coef)


def reputation_weighted(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Average weighted by reputation (ppm) x sample count, with optional norm clipping.

    Parameters: ``clip_norm`` (optional): each update is scaled by min(1, C / ||x_i||)
    before averaging, bounding any client's pull to C times its weight share;
    ``max_samples`` (optional): caps each self-reported sample count, so a client cannot
    buy influence by claiming a huge dataset. Clipping shrinks a contribution, it does not
    renormalise, so a clipped attacker cannot regain weight. Needs ``ctx.reputation``.
    Scores: normalised effective weight. Accepted: clients with a positive effective weight.
    """
    x, w = check_inputs(updates, weights, ctx, rule="reputation")
    n = x.shape[0]
    rep = _check_reputation(ctx, n)
    max_samples = ctx.param_optional_float("max_samples")
    clip = ctx.param_optional_float("clip_norm")
    if max_samples is not None:
        w = np.minimum(w, max_samples)
    eff = (rep / PPM) * w
    total = float(eff.sum())
    if total <= 0.0:
        raise AggregationError("reputation: no client has a positive reputation x weight")
    share = eff / total
    coef = share
    if clip is not None:
        norms = np.sqrt(row_sq_norms(x))
        factor = np.minimum(1.0, clip / np.maximum(norms, np.finfo(np.float64).tiny))
        coef = share * factor
    return AggResult(as_output(combine(x, coef), x), eff > 0, share)


def _check_reputation(ctx: AggContext, n: int) -> F64Array:
    rep = ctx.reputation
    if rep is None:
        raise AggregationError("reputation: ctx.reputation (ppm per client) is required")
    if not isinstance(rep, np.ndarray) or rep.shape != (n,) or rep.dtype.kind not in "iuf":
        shape = getattr(rep, "shape", None)
        raise AggregationError(f"reputation: ctx.reputation must be a real ({n},) array: {shape}")
    r = rep.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(r) | (r < 0) | (r > PPM))
    if bad.size:
        i = int(bad[0])
        raise AggregationError(
            f"reputation: client {i}: reputation {r[i]} outside [0, {PPM}] ppm", client=i
        )
    return r

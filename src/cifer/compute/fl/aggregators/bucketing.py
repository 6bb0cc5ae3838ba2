"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR 2022): a wrapper that makes any robust rule tolerate non-IID clients.

Clients are shuffled by a random permutation, split into ceil(n/s) buckets of s
consecutive clients (the last may be smaller), each bucket is averaged, and the inner rule
aggregates the bucket means. Averaging shrinks honest heterogeneity by ~sqrt(s) while f
attackers still contaminate at most f buckets, so the inner rule keeps the same f.

The permutation is drawn from ``ctx.rng`` and nothing else; without it the rule refuses to
run, because validators must be able to re-execute it from a seed.
"""

from __future__ import annotations

import math

import numpy as np

from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggregationError,
    Aggregator,
    AggResult,
    F64Array,
    FloatArray,
    IntArray,
    check_inputs,
    run_lanes,
)


def bucket_means(x: FloatArray, perm: IntArray, s: int) -> F64Array:
    """Means (float64) of buckets of s consecutive clients in permutation order."""
    n, d = x.shape
    nb = math.ceil(n / s)
    out = np.empty((nb, d), dtype=np.float64)
    full = n // s

    def lane(blocks: list[slice]) -> None:  # lanes write disjoint columns of out
        for sl in blocks:
            blk = x[perm, sl].astype(np.float64)
            if full:
                out[:full, sl] = blk[: full * s].reshape(full, s, -1).sum(axis=1) / s
            if nb > full:
                out[full, sl] = blk[full * s :].sum(axis=0) / (n - full * s)

    run_lanes(lane, d)
    return out


def apply_bucketing(
    inner: Aggregator,
    updates: FloatArray,
    weights: FloatArray,
    ctx: AggContext,
    bucket_size: int,
) -> AggResult:
    """Run ``inner`` on bucket means; map its accepted/scores back to member clients.

    Bucket weight = sum of its members' weights; bucket reputation = its members' minimum
    (one low-reputation member taints the bucket). Scores and acceptance of a client are
    those of its bucket. ``info["buckets"]`` lists each bucket's member indices.
    """
    x, w = check_inputs(updates, weights, ctx, rule="bucketing")
    n = x.shape[0]
    if ctx.rng is None:
        raise AggregationError("bucketing: ctx.rng (a seeded numpy Generator) is required")
    if bucket_size < 1:
        raise AggregationError(f"bucketing: bucket_size must be >= 1, got {bucket_size}")
    s = min(bucket_size, n)
    perm = ctx.rng.permutation(n).astype(np.intp)
    nb = math.ceil(n / s)
    bucket_of = np.empty(n, dtype=np.intp)
    bucket_of[perm] = np.arange(n, dtype=np.intp) // s
    means = bucket_means(x, perm, s)
    bw = np.bincount(bucket_of, weights=w, minlength=nb).astype(np.float64)
    inner_ctx = ctx
    if ctx.reputation is not None:
        rep = ctx.reputation
        if not isinstance(rep, np.ndarray) or rep.shape != (n,) or rep.dtype.kind not in "iuf":
            raise AggregationError(f"bucketing: ctx.reputation must be a real ({n},) array")
        brep = np.full(nb, np.inf)
        np.minimum.at(brep, bucket_of, rep.astype(np.float64))
        inner_ctx = ctx.with_(reputation=brep)
    try:
        res = inner(means, bw, inner_ctx)
    except AggregationError as exc:
        raise AggregationError(f"bucketing over {nb} buckets of size {s}: {exc}") from exc
    buckets = tuple(tuple(int(i) for i in np.sort(perm[b * s : (b + 1) * s])) for b in range(nb))
    info = {"buckets": buckets, "inner": dict(res.info)}
    return AggResult(
        np.asarray(res.aggregate, dtype=x.dtype),
        np.asarray(res.accepted, dtype=np.bool_)[bucket_of],
        np.asarray(res.scores, dtype=np.float64)[bucket_of],
        info,
    )


def bucketing(inner: Aggregator | str, bucket_size: int = 2) -> Aggregator:
    """An aggregator that applies ``inner`` (a rule or a registered name) to bucket means."""
    if isinstance(inner, str):
        from cifer.compute.fl.aggregators.registry import get_aggregator

        inner_fn = get_aggregator(inner)
    else:
        inner_fn = inner

    def rule(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
        return apply_bucketing(inner_fn, updates, weights, ctx, bucket_size)

    rule.__name__ = f"bucketing_{getattr(inner_fn, '__name__', 'rule')}"
    return rule


def bucketed(updates: FloatArray, weights: FloatArray, ctx: AggContext) -> AggResult:
    """Registered form: parameters ``inner`` (registered rule name, default "median") and
    ``bucket_size`` (s, default 2). The inner rule sees the same ``ctx`` (so its own
    parameters sit next to these) with the bucket means as its clients."""
    from cifer.compute.fl.aggregators.registry import get_aggregator

    name = ctx.param_str("inner", "median")
    if name == "bucketing":
        raise AggregationError("bucketing: inner rule cannot be bucketing itself")
    s = ctx.param_int("bucket_size", 2, low=1)
    return apply_bucketing(get_aggregator(name, allow_plugins=False), updates, weights, ctx, s)

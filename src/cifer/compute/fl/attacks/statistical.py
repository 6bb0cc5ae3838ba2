"""Attacks that hide inside the honest distribution: ALIE (Baruch, Baruch, Goldberg,
NeurIPS 2019) and min-max / min-sum (Shejwalkar, Houmansadr, NDSS 2021, AGR-agnostic)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from cifer.compute.fl.aggregators.base import (
    blas_single_thread,
    column_blocks,
    gram,
    sq_distances,
)
from cifer.compute.fl.attacks.base import (
    AttackContext,
    AttackError,
    F64Array,
    FloatArray,
    check_honest,
    need_honest,
    tile,
)
from cifer.compute.fl.attacks.simple import honest_mean


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n).

    s is the number of honest clients the attackers need on their side to hold a
    majority; z is how many standard deviations they may shift while staying closer to
    the mean than that many honest clients. Needs 0 < s < n, i.e. f <= floor(n/2).
    """
    if n < 1 or f < 0 or f > n:
        raise AttackError(f"alie: need 0 <= f <= n and n >= 1, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    if not 0 < s < n:
        raise AttackError(f"alie: z is undefined for n={n}, f={f} (s = {s} must be in (0, n))")
    return NormalDist().inv_cdf((n - s) / n)


def alie(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """A little is enough: every attacker sends mean - z * std (coordinate-wise).

    Parameters: ``z`` (default :func:`alie_z` of n and f), ``ddof`` (default 1, the
    sample standard deviation, as torch.std in the authors' and byzfl's code). The sign
    is a convention (byzfl adds z * std, we subtract it); coordinate-wise defences are
    symmetric in it.
    """
    x = check_honest(honest, ctx, "alie")
    ddof = ctx.param_int("ddof", 1)
    need_honest(x, ddof + 1, "alie")
    z = ctx.param_float("z", 0.0) if "z" in ctx.params else alie_z(ctx.n, ctx.f)
    std = x.std(axis=0, ddof=ddof, dtype=np.float64)
    return tile(honest_mean(x) - z * std, ctx.f, x.dtype)


_DEVIATIONS = ("unit_vec", "std", "sign")


def matvec(x: FloatArray, p: F64Array) -> F64Array:
    """x @ p in float64, streamed over column blocks (no full float64 copy of x)."""
    out = np.zeros(x.shape[0], dtype=np.float64)
    with blas_single_thread():
        for sl in column_blocks(x.shape[1]):
            out += x[:, sl].astype(np.float64) @ p[sl]
    return out


def _deviation(x: FloatArray, mean: F64Array, kind: str) -> F64Array:
    """The perturbation direction p; the attack sends mean - gamma * p."""
    if kind == "unit_vec":
        norm = float(np.linalg.norm(mean))
        if norm == 0.0:
            raise AttackError("min-max/min-sum: unit_vec deviation needs a non-zero honest mean")
        out: F64Array = mean / norm
        return out
    if kind == "sign":
        sign: F64Array = np.sign(mean)
        return sign
    std: F64Array = x.std(axis=0, ddof=1, dtype=np.float64)
    return std


def _search_gamma(ok_fn: _Predicate, gamma_init: float, tol: float) -> float:
    """The authors' search: start at gamma_init, step +/- step/2, halve the step, stop when
    the last success and the current candidate differ by <= tol; return the last success
    (0 if none). Its reach is ~2 * gamma_init, as in their code."""
    lam = gamma_init
    step = gamma_init
    succ = 0.0
    for _ in range(200):  # guard; tol is reached in ~log2(gamma_init / tol) steps
        if abs(succ - lam) <= tol:
            break
        if ok_fn(lam):
            succ = lam
            lam = lam + step / 2
        else:
            lam = lam - step / 2
        step /= 2
    return succ


class _Predicate:
    """Typed callable for the search (a Protocol would do; this keeps mypy simple)."""

    def __init__(self, a: F64Array, b: F64Array, c: float, bound: float, kind: str) -> None:
        self.a, self.b, self.c, self.bound, self.kind = a, b, c, bound, kind

    def __call__(self, gamma: float) -> bool:
        # ||x_i - (mu - gamma p)||^2 = a_i + 2 gamma b_i + gamma^2 c
        d2 = self.a + 2.0 * gamma * self.b + gamma * gamma * self.c
        value = float(d2.max()) if self.kind == "max" else float(d2.sum())
        return value <= self.bound


def _min_max_sum(honest: FloatArray, ctx: AttackContext, kind: str, name: str) -> FloatArray:
    x = check_honest(honest, ctx, name)
    need_honest(x, 2, name)
    dev = ctx.param_str("deviation", "unit_vec", _DEVIATIONS)
    gamma_init = ctx.param_float("gamma_init", 10.0)
    tol = ctx.param_float("tol", 1e-5)
    if gamma_init <= 0 or tol <= 0:
        raise AttackError(f"{name}: gamma_init and tol must be > 0")
    mean = honest_mean(x)
    p = _deviation(x, mean, dev)
    g = gram(x)  # one streamed pass; everything below is h x h or h-vectors
    pair = sq_distances(g)  # honest pairwise squared distances
    h = x.shape[0]
    gm = g.sum(axis=1) / h
    a = np.maximum(np.diag(g) - 2.0 * gm + float(gm.sum()) / h, 0.0)  # ||x_i - mean||^2
    b = matvec(x, p) - float(mean @ p)  # <x_i - mean, p>
    c = float(p @ p)
    # min-max: the farthest honest client must be no farther than the honest diameter;
    # min-sum: the sum of squared distances no larger than any honest client's sum.
    bound = float(pair.max()) if kind == "max" else float(pair.sum(axis=1).max())
    gamma = _search_gamma(_Predicate(a, b, c, bound, kind), gamma_init, tol)
    return tile(mean - gamma * p, ctx.f, x.dtype)


def min_max(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Min-max: mean - gamma * p with the largest gamma (binary search) such that the
    malicious update's largest distance to an honest update is at most the largest
    distance between two honest updates. Parameters: ``deviation`` in {"unit_vec"
    (default, p = mean/||mean||), "std" (p = coordinate std), "sign" (p = sign(mean))},
    ``gamma_init`` (default 10.0, the authors'), ``tol`` (default 1e-5)."""
    return _min_max_sum(honest, ctx, "max", "min_max")


def min_sum(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Min-sum: like :func:`min_max`, but the malicious update's sum of squared distances to
    the honest updates must not exceed the largest such sum of an honest update."""
    return _min_max_sum(honest, ctx, "sum", "min_sum")

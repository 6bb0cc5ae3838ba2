"""Simple model-poisoning attacks: sign flip, Gaussian noise, IPM, mimic, scaling."""

from __future__ import annotations

import numpy as np

from cifer.compute.fl.attacks.base import (
    AttackContext,
    AttackError,
    F64Array,
    FloatArray,
    check_honest,
    need_honest,
    tile,
)


def honest_mean(honest: FloatArray) -> F64Array:
    """Coordinate-wise mean of the honest updates, in float64."""
    mean: F64Array = honest.mean(axis=0, dtype=np.float64)
    return mean


def sign_flip(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Sign flip ("bit flip", BF).

    Parameter ``mode``: ``"mean"`` (default; every attacker sends minus the honest mean,
    the omniscient form used by byzfl after Allen-Zhu et al. 2020) or ``"own"`` (each
    attacker negates the update it would have sent, ``ctx.own_updates``, the form of
    the original bit-flip experiments where attackers know only their own gradient).
    """
    x = check_honest(honest, ctx, "sign_flip")
    mode = ctx.param_str("mode", "mean", ("mean", "own"))
    if mode == "own":
        own = _own(ctx, x.shape[1], "sign_flip")
        return (-own).astype(x.dtype)
    need_honest(x, 1, "sign_flip")
    return tile(-honest_mean(x), ctx.f, x.dtype)


def gaussian(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Gaussian noise: each attacker sends an independent N(mu, sigma^2 I) vector.

    Parameters ``sigma`` (default 1.0) and ``mu`` (default 0.0; a scalar added to every
    coordinate). Needs ``ctx.rng``.
    """
    x = check_honest(honest, ctx, "gaussian")
    rng = ctx.require_rng("gaussian")
    sigma = ctx.param_float("sigma", 1.0)
    mu = ctx.param_float("mu", 0.0)
    if sigma < 0:
        raise AttackError(f"gaussian: sigma must be >= 0, got {sigma}")
    noise = rng.standard_normal((ctx.f, x.shape[1]), dtype=np.float64)
    return (mu + sigma * noise).astype(x.dtype)


def ipm(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Inner product manipulation (Xie, Koyejo, Gupta, UAI 2019): send -epsilon * mean.

    Parameter ``epsilon`` (default 0.1). A small epsilon keeps the attack close to the
    honest cloud (it beats Krum-type rules); a large one (the paper also uses 100) makes
    the average point away from the honest mean.
    """
    x = check_honest(honest, ctx, "ipm")
    need_honest(x, 1, "ipm")
    eps = ctx.param_float("epsilon", 0.1)
    return tile(-eps * honest_mean(x), ctx.f, x.dtype)


def mimic(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Mimic (Karimireddy, He, Jaggi, ICLR 2022): every attacker copies one honest client.

    Parameter ``target``: ``"variance"`` (default) copies the honest client with the
    largest projection (in absolute value) on the top principal direction of the honest
    updates, the direction the paper picks to over-weight. The paper estimates that
    direction over the first rounds; we recompute it from the current round alone so the
    attack is stateless. An integer target copies that honest row (its index among the
    honest updates). Ties go to the lowest index.
    """
    x = check_honest(honest, ctx, "mimic")
    need_honest(x, 1, "mimic")
    target = ctx.params.get("target", "variance")
    if target == "variance":
        idx = top_variance_client(x)
    elif isinstance(target, int | np.integer) and not isinstance(target, bool):
        idx = int(target)
        if not 0 <= idx < x.shape[0]:
            raise AttackError(f"mimic: target {idx} is not an honest index in [0, {x.shape[0]})")
    else:
        raise AttackError(f"mimic: target must be 'variance' or an int, got {target!r}")
    return tile(x[idx], ctx.f, x.dtype)


def top_variance_client(x: FloatArray) -> int:
    """Index of the row with the largest |projection| on the top principal component.

    With C = X_c X_c^T (the centered h x h Gram matrix) and u its top eigenvector, the
    projections of the rows on the top principal direction are proportional to u, so no
    d x d covariance is ever formed.
    """
    h = x.shape[0]
    if h == 1:
        return 0
    xc = x.astype(np.float64) - honest_mean(x)
    c = xc @ xc.T
    _, vecs = np.linalg.eigh(c)  # ascending eigenvalues
    u = np.abs(vecs[:, -1])
    # Round so eigen-solver noise cannot flip a tie between symmetric rows.
    return int(np.argmax(np.round(u, 12)))


def scaling(honest: FloatArray, ctx: AttackContext) -> FloatArray:
    """Scaling / model replacement (Bagdasaryan et al., AISTATS 2020).

    Each attacker multiplies its own (e.g. backdoored) update ``ctx.own_updates`` by
    ``scale``; without own updates it scales the honest mean, i.e. it amplifies a benign
    direction. Default scale = n (model replacement with server learning rate 1: the
    attacker's update survives averaging over n clients at full size).
    """
    x = check_honest(honest, ctx, "scaling")
    scale = ctx.param_float("scale", float(ctx.n))
    if ctx.own_updates is not None:
        return (scale * _own(ctx, x.shape[1], "scaling").astype(np.float64)).astype(x.dtype)
    need_honest(x, 1, "scaling")
    return tile(scale * honest_mean(x), ctx.f, x.dtype)


def _own(ctx: AttackContext, d: int, attack: str) -> FloatArray:
    own = ctx.own_updates
    if own is None:
        raise AttackError(f"{attack}: needs ctx.own_updates (the attackers' own updates)")
    if not isinstance(own, np.ndarray) or own.shape != (ctx.f, d):
        raise AttackError(f"{attack}: own_updates must have shape ({ctx.f}, {d})")
    return own

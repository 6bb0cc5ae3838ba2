"""Aggregator registry: rules by name, plug-ins by ``module:function`` path, and
:func:`aggregate`, the checked entry point the simulator and the fl contract call."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cifer.compute.fl._registry import Registry
from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggregationError,
    Aggregator,
    AggResult,
    FloatArray,
)
from cifer.compute.fl.aggregators.bucketing import bucketed
from cifer.compute.fl.aggregators.clipping import centered_clipping
from cifer.compute.fl.aggregators.coordinate import coordinate_median, trimmed_mean
from cifer.compute.fl.aggregators.fltrust import fltrust
from cifer.compute.fl.aggregators.geomed import geometric_median
from cifer.compute.fl.aggregators.krum import bulyan, krum, multi_krum
from cifer.compute.fl.aggregators.mean import fedavg, reputation_weighted

_REGISTRY: Registry[Aggregator] = Registry("aggregator", AggregationError)

_REGISTRY.register("fedavg", fedavg, (), "weighted mean (not robust)")
_REGISTRY.register("krum", krum, (), "Krum, Blanchard et al. 2017")
_REGISTRY.register("multi_krum", multi_krum, ("m", "weighted"), "Multi-Krum")
_REGISTRY.register("bulyan", bulyan, (), "Bulyan over Krum, El Mhamdi et al. 2018")
_REGISTRY.register("median", coordinate_median, (), "coordinate-wise median")
_REGISTRY.register("trimmed_mean", trimmed_mean, ("beta",), "coordinate-wise trimmed mean")
_GEOMED_PARAMS = ("nu", "max_iter", "tol", "weighted")
_REGISTRY.register("geometric_median", geometric_median, _GEOMED_PARAMS, "RFA, smoothed Weiszfeld")
_REGISTRY.register("rfa", geometric_median, _GEOMED_PARAMS, "alias of geometric_median")
_REGISTRY.register("centered_clipping", centered_clipping, ("tau", "iters"), "Karimireddy 2021")
_REGISTRY.register("fltrust", fltrust, (), "FLTrust, Cao et al. 2021")
_REGISTRY.register(
    "reputation", reputation_weighted, ("clip_norm", "max_samples"), "reputation x samples"
)
_REGISTRY.register("bucketing", bucketed, ("inner", "bucket_size"), "bucketing wrapper, ICLR 2022")

#: Rules whose output provably stays near the honest updates when f is within bounds.
ROBUST_RULES = frozenset(
    {
        "krum",
        "multi_krum",
        "bulyan",
        "median",
        "trimmed_mean",
        "geometric_median",
        "rfa",
        "centered_clipping",
        "fltrust",
        "bucketing",
    }
)


def register_aggregator(
    name: str, fn: Aggregator, params: Iterable[str] = (), summary: str = ""
) -> Aggregator:
    """Register a rule under a new name (names cannot be overridden)."""
    return _REGISTRY.register(name, fn, params, summary)


def get_aggregator(name: str, *, allow_plugins: bool = True) -> Aggregator:
    """The rule registered as ``name``, or the function at a ``module:function`` path.

    Pass ``allow_plugins=False`` wherever the name comes from outside the process.
    """
    return _REGISTRY.get(name, allow_plugins=allow_plugins)


def aggregator_names() -> tuple[str, ...]:
    """Registered rule names."""
    return _REGISTRY.names()


def check_aggregator_params(name: str, params: dict[str, object] | None = None) -> None:
    """Raise AggregationError if ``params`` has names the rule does not read."""
    params = params or {}
    if name == "bucketing":
        inner = params.get("inner", "median")
        rest = {k: v for k, v in params.items() if k not in ("inner", "bucket_size")}
        if isinstance(inner, str):
            _REGISTRY.check_params(inner, rest)
        return
    _REGISTRY.check_params(name, params)


def aggregate(
    rule: str | Aggregator,
    updates: FloatArray,
    weights: FloatArray | None = None,
    ctx: AggContext | None = None,
    *,
    allow_plugins: bool = True,
) -> AggResult:
    """Resolve ``rule``, check its parameter names, run it and check the result's shapes.

    ``weights`` defaults to ones. The result check guards against plug-ins returning
    malformed output that would otherwise surface far from its cause.
    """
    ctx = ctx if ctx is not None else AggContext()
    if isinstance(rule, str):
        check_aggregator_params(rule, dict(ctx.params))
        fn = get_aggregator(rule, allow_plugins=allow_plugins)
        label = rule
    else:
        fn = rule
        label = getattr(rule, "__name__", "aggregator")
    if weights is None:
        n = updates.shape[0] if isinstance(updates, np.ndarray) and updates.ndim >= 1 else 0
        weights = np.ones(n, dtype=np.float64)
    res = fn(updates, weights, ctx)
    _check_result(res, updates, label)
    return res


def _check_result(res: object, updates: FloatArray, label: str) -> None:
    if not isinstance(res, AggResult):
        raise AggregationError(f"{label}: rule returned {type(res).__name__}, not AggResult")
    n, d = updates.shape
    agg, acc, scores = res.aggregate, res.accepted, res.scores
    if not isinstance(agg, np.ndarray) or agg.shape != (d,) or agg.dtype.kind != "f":
        raise AggregationError(f"{label}: aggregate must be a float ({d},) array")
    if not np.isfinite(agg).all():
        raise AggregationError(f"{label}: aggregate is not finite")
    if not isinstance(acc, np.ndarray) or acc.shape != (n,) or acc.dtype != np.bool_:
        raise AggregationError(f"{label}: accepted must be a bool ({n},) array")
    if not isinstance(scores, np.ndarray) or scores.shape != (n,) or scores.dtype != np.float64:
        raise AggregationError(f"{label}: scores must be a float64 ({n},) array")

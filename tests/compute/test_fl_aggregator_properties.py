"""Properties of the aggregation rules: permutation invariance, robustness to f huge
updates, and input validation whose errors name the client and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer.compute.fl.aggregators import (
    AggContext,
    AggregationError,
    aggregate,
    check_aggregator_params,
)

PERMUTATION_INVARIANT = [
    "fedavg",
    "krum",
    "multi_krum",
    "bulyan",
    "median",
    "trimmed_mean",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "reputation",
]


def _ctx(x: np.ndarray, f: int, rep: np.ndarray, seed: int = 0) -> AggContext:
    d = x.shape[1]
    return AggContext(
        f=f,
        previous=np.full(d, 0.1, dtype=x.dtype),
        root_update=x.mean(axis=0),
        reputation=rep,
        rng=np.random.default_rng(seed),
        params={},
    )


@settings(max_examples=15, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(11, 16),
    d=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_permutation_invariance(seed: int, n: int, d: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    x[:2] *= 20.0
    w = rng.integers(1, 50, n).astype(np.float64)
    rep = rng.integers(0, 1_000_001, n)
    perm = rng.permutation(n)
    f = 2
    for name in PERMUTATION_INVARIANT:
        a = aggregate(name, x, w, _ctx(x, f, rep))
        b = aggregate(name, x[perm], w[perm], _ctx(x, f, rep[perm]))
        tol = 1e-5 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(a.aggregate, b.aggregate, rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_array_equal(a.accepted[perm], b.accepted, err_msg=name)
        np.testing.assert_allclose(a.scores[perm], b.scores, rtol=1e-6, atol=1e-6, err_msg=name)


def test_sort_based_rules_are_exactly_permutation_invariant() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 1000)).astype(np.float32)
    perm = rng.permutation(9)
    for name in ("median", "trimmed_mean"):
        a = aggregate(name, x, None, AggContext(f=2))
        b = aggregate(name, x[perm], None, AggContext(f=2))
        np.testing.assert_array_equal(a.aggregate, b.aggregate)


def test_bucketing_invariant_when_permutation_is_applied_consistently() -> None:
    # Permuting the clients by p and the seed's permutation by p^-1 gives the same buckets.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 7))
    p = rng.permutation(10)
    ctx = AggContext(f=1, rng=np.random.default_rng(3), params={"inner": "median"})
    a = aggregate("bucketing", x, None, ctx)
    # With inner median and s = 1 the result is independent of any permutation.
    s1 = {"inner": "median", "bucket_size": 1}
    a1 = aggregate("bucketing", x, None, ctx.with_(params=s1, rng=np.random.default_rng(3)))
    b1 = aggregate("bucketing", x[p], None, ctx.with_(params=s1, rng=np.random.default_rng(9)))
    np.testing.assert_array_equal(a1.aggregate, b1.aggregate)
    # Same seed, same input: same buckets, same result.
    a2 = aggregate("bucketing", x, None, ctx.with_(rng=np.random.default_rng(3)))
    np.testing.assert_array_equal(a.aggregate, a2.aggregate)


# ---------------------------------------------------------------- robustness to huge updates

N, F, D = 15, 3, 25


def _attacked(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((N - F, D))
    if kind == "random":
        byz = rng.standard_normal((F, D)) * 1e6
    elif kind == "same":
        byz = np.full((F, D), 1e6)
    else:  # "opposite": large multiples of minus the honest mean
        byz = np.tile(-1e6 * honest.mean(axis=0), (F, 1))
    x = np.concatenate([byz, honest]).astype(np.float32)
    return x, honest.astype(np.float32)


BOX_RULES = ["krum", "multi_krum", "bulyan", "median", "trimmed_mean"]


@pytest.mark.parametrize("kind", ["random", "same", "opposite"])
@pytest.mark.parametrize("rule", BOX_RULES)
@pytest.mark.parametrize("seed", [0, 1])
def test_robust_rules_stay_in_honest_coordinate_range(rule: str, kind: str, seed: int) -> None:
    x, honest = _attacked(seed, kind)
    w = np.ones(N)
    w[:F] = 1e9  # attackers also claim huge datasets
    res = aggregate(rule, x, w, AggContext(f=F))
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    assert np.all(res.aggregate >= lo - 1e-6) and np.all(res.aggregate <= hi + 1e-6), rule
    if rule in ("krum", "multi_krum"):
        assert not res.accepted[:F].any(), rule
    # Bulyan's last Krum round runs on 2f + 1 updates with f - 1 neighbours, so a clump of
    # identical attackers scores 0 there and one of them is selected (as in the paper's
    # procedure and in Flower); stage 2 still discards it coordinate-wise.


@pytest.mark.parametrize("kind", ["random", "same", "opposite"])
def test_geometric_median_stays_in_breakdown_ball(kind: str) -> None:
    # Minsker (2015), Lemma 2.1: if at most alpha*n points lie farther than r from m
    # (alpha < 1/2), the geometric median z has ||z - m|| <= C_alpha r with
    # C_alpha = (1 - alpha) / sqrt(1 - 2 alpha). Take m = honest mean, r = the largest
    # honest distance to it, alpha = f/n; 1% slack covers smoothing and the stopping rule.
    x, honest = _attacked(2, kind)
    res = aggregate("geometric_median", x, None, AggContext(f=F))
    m = honest.astype(np.float64).mean(axis=0)
    radius = np.linalg.norm(honest - m, axis=1).max()
    alpha = F / N
    c = (1 - alpha) / np.sqrt(1 - 2 * alpha)
    assert np.linalg.norm(res.aggregate - m) <= 1.01 * c * radius


@pytest.mark.parametrize("kind", ["random", "same", "opposite"])
def test_centered_clipping_bounds_attacker_pull(kind: str) -> None:
    # With tau above every honest distance to the center, honest updates are not clipped,
    # so v = v0 + sum_honest (x_i - v0)/n + e with ||e|| <= f tau / n.
    x, honest = _attacked(3, kind)
    v0 = np.zeros(D)
    tau = 1.5 * float(np.linalg.norm(honest, axis=1).max())
    res = aggregate("centered_clipping", x, None, AggContext(f=F, params={"tau": tau}))
    honest_part = honest.astype(np.float64).sum(axis=0) / N
    assert np.linalg.norm(res.aggregate - (v0 + honest_part)) <= F * tau / N * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["random", "same", "opposite"])
def test_fltrust_norm_is_bounded_by_root(kind: str) -> None:
    # A convex combination of vectors of norm ||g0|| has norm <= ||g0||; attackers pointing
    # against the root update get trust 0.
    x, honest = _attacked(4, kind)
    g0 = honest.mean(axis=0)
    res = aggregate("fltrust", x, None, AggContext(root_update=g0))
    assert np.linalg.norm(res.aggregate) <= np.linalg.norm(g0) * (1 + 1e-5)
    if kind == "opposite":
        assert not res.accepted[:F].any()


def test_bucketing_median_stays_in_honest_range() -> None:
    # 3 attackers contaminate at most 3 of the 7 buckets of size 2 (n = 14).
    rng = np.random.default_rng(6)
    honest = rng.standard_normal((11, D))
    x = np.concatenate([np.full((3, D), 1e6), honest])
    for seed in range(5):
        ctx = AggContext(f=3, rng=np.random.default_rng(seed), params={"inner": "median"})
        res = aggregate("bucketing", x, None, ctx)
        assert np.all(res.aggregate >= honest.min(axis=0) - 1e-9)
        assert np.all(res.aggregate <= honest.max(axis=0) + 1e-9)


def test_reputation_with_clipping_bounds_attacker_pull() -> None:
    x, honest = _attacked(5, "random")
    rep = np.full(N, 1_000_000)
    w = np.ones(N)
    clip = 10.0
    res = aggregate("reputation", x, w, AggContext(reputation=rep, params={"clip_norm": clip}))
    h = honest.astype(np.float64)
    scale = np.minimum(1.0, clip / np.linalg.norm(h, axis=1))
    honest_part = (h * scale[:, None]).sum(axis=0) / N
    assert np.linalg.norm(res.aggregate - honest_part) <= F * clip / N * (1 + 1e-6)


def test_fedavg_is_not_robust() -> None:
    # The harness has teeth: the non-robust baseline is dragged out of the honest range.
    x, honest = _attacked(0, "same")
    res = aggregate("fedavg", x, None, AggContext(f=F))
    assert np.all(res.aggregate > honest.max(axis=0))


# ---------------------------------------------------------------- bad input


def _clean(n: int = 7, d: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


ALL_CHECKED = [*PERMUTATION_INVARIANT, "bucketing"]


@pytest.mark.parametrize("rule", ALL_CHECKED)
@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_update_names_the_client(rule: str, value: float, word: str) -> None:
    x = _clean()
    x[3, 2] = value
    ctx = _ctx(_clean(), 1, np.full(7, 10**6))
    with pytest.raises(AggregationError, match=rf"client 3: update contains {word}.*coordinate 2"):
        aggregate(rule, x, np.ones(7), ctx)


def test_non_finite_float64_row_with_overflowing_sum_is_not_flagged() -> None:
    # Two finite 1e308 values overflow the row sum; the exact re-check must accept them.
    x = np.zeros((5, 3))
    x[1, :2] = 1e308
    res = aggregate("median", x, None, AggContext(f=1))
    np.testing.assert_array_equal(res.aggregate, [0, 0, 0])


def test_error_carries_client_index() -> None:
    x = _clean()
    x[5, 0] = np.nan
    with pytest.raises(AggregationError) as info:
        aggregate("krum", x, None, AggContext(f=1))
    assert info.value.client == 5


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        (np.array([1, 1, -2, 1, 1, 1, 1.0]), r"client 2: weight is negative \(-2.0\)"),
        (np.array([1, 1, 1, 1, np.nan, 1, 1]), r"client 4: weight is not finite"),
        (np.array([1, 1, 1, 1, 1, 1, np.inf]), r"client 6: weight is not finite"),
        (np.ones(6), r"weights must have shape \(7,\)"),
        (np.ones((7, 1)), r"weights must have shape \(7,\)"),
        (np.array(["a"] * 7), r"weights must be real numbers"),
    ],
)
def test_bad_weights(weights: np.ndarray, pattern: str) -> None:
    with pytest.raises(AggregationError, match=pattern):
        aggregate("median", _clean(), weights, AggContext(f=1))


@pytest.mark.parametrize(
    ("updates", "pattern"),
    [
        (np.zeros(5, dtype=np.float32), r"must be 2-D .* got shape \(5,\)"),
        (np.zeros((2, 3, 4), dtype=np.float32), r"must be 2-D"),
        (np.zeros((0, 3), dtype=np.float32), r"no client updates"),
        (np.zeros((3, 0), dtype=np.float32), r"zero length"),
        (np.zeros((3, 2), dtype=np.int64), r"float32 or float64, got int64"),
        ([[1.0, 2.0]], r"must be a numpy array"),
    ],
)
def test_bad_update_shapes(updates: object, pattern: str) -> None:
    with pytest.raises(AggregationError, match=pattern):
        aggregate("fedavg", updates, np.ones(3), AggContext())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "n", "f", "pattern"),
    [
        ("krum", 6, 2, r"krum: needs n >= 2f\+3, got n=6, f=2"),
        ("multi_krum", 4, 1, r"multi_krum: needs n >= 2f\+3, got n=4, f=1"),
        ("bulyan", 10, 2, r"bulyan: needs n >= 4f\+3, got n=10, f=2"),
        ("median", 4, 2, r"median: needs n >= 2f\+1, got n=4, f=2"),
        ("trimmed_mean", 4, 2, r"trimmed_mean: needs n > 2k .* n=4, k=2"),
        ("geometric_median", 6, 3, r"needs n >= 2f\+1, got n=6, f=3"),
        ("centered_clipping", 6, 3, r"needs n >= 2f\+1"),
        ("fedavg", 3, 4, r"f=4 exceeds the number of clients n=3"),
    ],
)
def test_f_too_large(rule: str, n: int, f: int, pattern: str) -> None:
    with pytest.raises(AggregationError, match=pattern):
        aggregate(rule, _clean(n), None, AggContext(f=f))


def test_f_must_be_a_non_negative_int() -> None:
    with pytest.raises(AggregationError, match=r"f must be a non-negative integer"):
        aggregate("median", _clean(), None, AggContext(f=-1))
    with pytest.raises(AggregationError, match=r"f must be a non-negative integer"):
        aggregate("median", _clean(), None, AggContext(f=1.5))  # type: ignore[arg-type]


def test_bucketing_reports_too_few_buckets() -> None:
    ctx = AggContext(f=2, rng=np.random.default_rng(0), params={"inner": "krum"})
    with pytest.raises(
        AggregationError, match=r"bucketing over 4 buckets .* krum: needs n >= 2f\+3"
    ):
        aggregate("bucketing", _clean(7), None, ctx)


def test_missing_context_inputs() -> None:
    x = _clean()
    with pytest.raises(AggregationError, match=r"fltrust: ctx.root_update .* is required"):
        aggregate("fltrust", x)
    with pytest.raises(AggregationError, match=r"root_update has zero norm"):
        aggregate("fltrust", x, None, AggContext(root_update=np.zeros(4)))
    with pytest.raises(AggregationError, match=r"root_update must have shape \(4,\)"):
        aggregate("fltrust", x, None, AggContext(root_update=np.zeros(5)))
    with pytest.raises(AggregationError, match=r"previous is not finite at coordinate 1"):
        aggregate("centered_clipping", x, None, AggContext(previous=np.array([0, np.nan, 0, 0])))
    with pytest.raises(AggregationError, match=r"bucketing: ctx.rng .* is required"):
        aggregate("bucketing", x)
    with pytest.raises(AggregationError, match=r"reputation: ctx.reputation .* is required"):
        aggregate("reputation", x)
    rep = np.full(7, 10**6)
    rep[4] = 2_000_000
    with pytest.raises(AggregationError, match=r"client 4: reputation 2000000.0 outside"):
        aggregate("reputation", x, None, AggContext(reputation=rep))
    with pytest.raises(AggregationError, match=r"all weights are zero"):
        aggregate("fedavg", x, np.zeros(7))


def test_parameter_validation() -> None:
    x = _clean()
    with pytest.raises(AggregationError, match=r"'krum' has no parameter\(s\) tau"):
        aggregate("krum", x, None, AggContext(f=1, params={"tau": 1.0}))
    with pytest.raises(AggregationError, match=r"'tau' must be > 0.0"):
        aggregate("centered_clipping", x, None, AggContext(params={"tau": 0}))
    with pytest.raises(AggregationError, match=r"'iters' must be an integer"):
        aggregate("centered_clipping", x, None, AggContext(params={"iters": 1.5}))
    with pytest.raises(AggregationError, match=r"'m' must be >= 1"):
        aggregate("multi_krum", x, None, AggContext(f=1, params={"m": 0}))
    with pytest.raises(AggregationError, match=r"m=8 exceeds"):
        aggregate("multi_krum", x, None, AggContext(f=1, params={"m": 8}))
    with pytest.raises(AggregationError, match=r"beta must be < 0.5"):
        aggregate("trimmed_mean", x, None, AggContext(params={"beta": 0.5}))
    with pytest.raises(AggregationError, match=r"'weighted' must be a boolean"):
        aggregate("rfa", x, None, AggContext(params={"weighted": "yes"}))
    # bucketing checks its own and its inner rule's parameter names
    check_aggregator_params("bucketing", {"inner": "centered_clipping", "tau": 2.0})
    with pytest.raises(AggregationError, match=r"'median' has no parameter"):
        check_aggregator_params("bucketing", {"inner": "median", "tau": 2.0})
    with pytest.raises(AggregationError, match=r"inner rule cannot be bucketing"):
        aggregate(
            "bucketing",
            x,
            None,
            AggContext(rng=np.random.default_rng(0), params={"inner": "bucketing"}),
        )

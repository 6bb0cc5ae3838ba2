"""Known-answer tests for the aggregation rules: small inputs whose results are worked out
by hand in the comments, plus comparisons with straightforward reference implementations
written from the papers' definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cifer.compute.fl.aggregators import (
    AggContext,
    AggregationError,
    AggResult,
    aggregate,
    aggregator_names,
    bucketing,
    bulyan,
    centered_clipping,
    coordinate_median,
    fedavg,
    fltrust,
    geometric_median,
    get_aggregator,
    krum,
    multi_krum,
    reputation_weighted,
    trimmed_mean,
)
from cifer.compute.fl.aggregators.coordinate import mean_around_median

ONES5 = np.ones(5)

# Krum example, f = 1, n = 5, so each score sums the n - f - 2 = 2 nearest squared distances.
#   x0=(0,0) x1=(1,0) x2=(0,2) x3=(2,2) x4=(10,10)
#   d01=1 d02=4 d03=8 d04=200 d12=5 d13=5 d14=181 d23=4 d24=164 d34=128
#   x0: {1,4,8,200} -> 1+4 = 5      x1: {1,5,5,181} -> 1+5 = 6
#   x2: {4,5,4,164} -> 4+4 = 8      x3: {8,5,4,128} -> 4+5 = 9
#   x4: {200,181,164,128} -> 128+164 = 292
KRUM_X = np.array([[0, 0], [1, 0], [0, 2], [2, 2], [10, 10]], dtype=np.float64)
KRUM_SCORES = np.array([5, 6, 8, 9, 292], dtype=np.float64)


def test_krum_hand_example() -> None:
    res = krum(KRUM_X, ONES5, AggContext(f=1))
    np.testing.assert_allclose(res.scores, KRUM_SCORES)
    np.testing.assert_array_equal(res.aggregate, [0, 0])
    np.testing.assert_array_equal(res.accepted, [True, False, False, False, False])
    # byzfl sums n - f - 1 = 3 neighbours instead: x0 -> 13, x1 -> 11, so it would pick x1.


def test_krum_selection_follows_the_client_not_the_position() -> None:
    order = [4, 2, 0, 3, 1]  # x0 is now at index 2
    res = krum(KRUM_X[order], ONES5, AggContext(f=1))
    assert res.info["selected"] == (2,)
    np.testing.assert_allclose(res.scores, KRUM_SCORES[order])


def test_multi_krum_hand_example() -> None:
    # m = n - f = 4 lowest scores: x0..x3 -> mean ((0+1+0+2)/4, (0+0+2+2)/4) = (0.75, 1)
    res = multi_krum(KRUM_X, ONES5, AggContext(f=1))
    np.testing.assert_allclose(res.aggregate, [0.75, 1.0])
    np.testing.assert_array_equal(res.accepted, [True, True, True, True, False])
    # m = 2: x0, x1 -> (0.5, 0)
    res2 = multi_krum(KRUM_X, ONES5, AggContext(f=1, params={"m": 2}))
    np.testing.assert_allclose(res2.aggregate, [0.5, 0.0])


def test_multi_krum_weighted_caps_self_reported_weights() -> None:
    # Selected x0..x3 with weights 1, 1, 1, 1000: the median of the selected weights is 1,
    # so x3's claim is capped at 1 and the result is the plain mean (0.75, 1).
    w = np.array([1.0, 1.0, 1.0, 1000.0, 1.0])
    res = multi_krum(KRUM_X, w, AggContext(f=1, params={"weighted": True}))
    np.testing.assert_allclose(res.aggregate, [0.75, 1.0])
    # Honest heterogeneity below the median is kept: weights 1, 3, 3, 3 -> median 3.
    w2 = np.array([1.0, 3.0, 3.0, 3.0, 1.0])
    res2 = multi_krum(KRUM_X, w2, AggContext(f=1, params={"weighted": True}))
    np.testing.assert_allclose(res2.aggregate, [(0 + 3 + 0 + 6) / 10, (0 + 0 + 6 + 6) / 10])


# Bulyan, n = 7, f = 1: theta = 5 selected by iterated Krum, beta = 3 around the median.
# 1-D values v = [0, 1, 2, 3, 4, 100, -50].
#  round 1 (7 left, 4 neighbours): scores 30, 15, 10, 15, 30, 38030, 10614 -> pick v2
#  round 2 (6 left, 3 neighbours): v0 26, v1 14, v3 14, v4 26, ... -> tie, lowest index v1
#  round 3 (5 left, 2 neighbours): v0 25, v3 10, v4 17, v5 18625, v6 5309 -> v3
#  round 4 (4 left, 1 neighbour): v0 16, v4 16, v5 9216, v6 2500 -> tie -> smaller value v0
#  round 5 (3 left, 1 neighbour): v4 2916, v5 9216, v6 2916 -> tie (a mutually nearest pair
#  always ties with one neighbour) -> smaller value v6 = -50
#  stage 2 on {-50,0,1,2,3}: median 1; windows of 3: [-50,0,1] cost 51, [0,1,2] cost 1,
#  [1,2,3] cost 2 -> mean(0,1,2) = 1. The outlier got in, and stage 2 removed it.
def test_bulyan_hand_example() -> None:
    x = np.array([[0], [1], [2], [3], [4], [100], [-50]], dtype=np.float64)
    res = bulyan(x, np.ones(7), AggContext(f=1))
    assert res.info["selected"] == (2, 1, 3, 0, 6)
    np.testing.assert_array_equal(res.accepted, [True] * 4 + [False, False, True])
    np.testing.assert_allclose(res.scores, [30, 15, 10, 15, 30, 38030, 10614])
    np.testing.assert_allclose(res.aggregate, [1.0])


def test_krum_ties_are_broken_by_value_not_position() -> None:
    # f = 0, n = 3 -> one neighbour; {0, 1, 5}: scores 1, 1, 16 -> tie between 0 and 1,
    # the smaller update (0) wins wherever it sits.
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        x = np.array([[0.0], [1.0], [5.0]])[order]
        res = krum(x, np.ones(3), AggContext(f=0))
        np.testing.assert_array_equal(res.aggregate, [0.0])


@pytest.mark.parametrize(
    ("row", "beta", "expected"),
    [
        # median 5; windows [0,1,5] cost 5, [1,5,6] cost 4, [5,6,20] cost 15 -> mean(1,5,6)=4
        ([0, 1, 5, 6, 20], 3, 4.0),
        # median 5; windows of 2: [1,4] 4, [4,5] 1, [5,6] 1, [6,9] 4 -> tie, lower window: 4.5
        ([1, 4, 5, 6, 9], 2, 4.5),
        # even count: median (2+3)/2 = 2.5; [1,2] 1.5, [2,3] 0.5, [3,10] 7.5 -> 2.5
        ([1, 2, 3, 10], 2, 2.5),
    ],
)
def test_mean_around_median(row: list[float], beta: int, expected: float) -> None:
    s = np.array([row], dtype=np.float64)  # (1 coordinate, theta values), sorted
    np.testing.assert_allclose(mean_around_median(s, beta), [expected])


def test_median_even_n_is_mean_of_middle_values() -> None:
    # [1, 3, 2, 10] sorted [1, 2, 3, 10]: numpy/Flower give (2+3)/2 = 2.5 (torch.median: 2).
    x = np.array([[1, 0], [3, 7], [2, -1], [10, 5]], dtype=np.float32)
    res = coordinate_median(x, np.ones(4), AggContext(f=1))
    np.testing.assert_array_equal(res.aggregate, np.array([2.5, 2.5], dtype=np.float32))
    assert res.aggregate.dtype == np.float32
    np.testing.assert_array_equal(res.aggregate, np.median(x, axis=0))


def test_median_odd_n_and_scores() -> None:
    x = np.array([[1, 5], [2, 4], [100, -3]], dtype=np.float64)
    res = coordinate_median(x, np.ones(3), AggContext(f=1))
    np.testing.assert_array_equal(res.aggregate, [2, 4])
    # scores: distances to (2, 4): |(-1, 1)| = sqrt 2, 0, |(98, -7)|
    np.testing.assert_allclose(res.scores, [math.sqrt(2), 0, math.hypot(98, 7)])
    assert res.accepted.all()


def test_trimmed_mean_hand_example() -> None:
    # column 0: [1,2,3,4,100] drop 1 and 100 -> mean(2,3,4) = 3
    # column 1: [5,0,-100,2,1] drop -100 and 5 -> mean(0,2,1) = 1
    x = np.array([[1, 5], [2, 0], [3, -100], [4, 2], [100, 1]], dtype=np.float64)
    res = trimmed_mean(x, ONES5, AggContext(f=1))
    np.testing.assert_allclose(res.aggregate, [3, 1])
    res_beta = trimmed_mean(x, ONES5, AggContext(f=0, params={"beta": 0.2}))  # floor(.2*5)=1
    np.testing.assert_allclose(res_beta.aggregate, [3, 1])
    res0 = trimmed_mean(x, ONES5, AggContext(f=0))
    np.testing.assert_allclose(res0.aggregate, x.mean(axis=0))


def test_fedavg_hand_example() -> None:
    # weights 1 and 3: ((0,4) + 3 (4,0)) / 4 = (3, 1)
    x = np.array([[0, 4], [4, 0]], dtype=np.float32)
    res = fedavg(x, np.array([1, 3]), AggContext())
    np.testing.assert_allclose(res.aggregate, [3, 1])
    np.testing.assert_allclose(res.scores, [0.25, 0.75])


def test_geometric_median_hand_examples() -> None:
    # 1-D: the geometric median of {0, 1, 10} is the median 1.
    res = geometric_median(np.array([[0.0], [1.0], [10.0]]), np.ones(3), AggContext(f=1))
    np.testing.assert_allclose(res.aggregate, [1.0], atol=1e-5)
    # Corners of a square: by symmetry the center (1, 1).
    sq = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=np.float64)
    res = geometric_median(sq, np.ones(4), AggContext(f=1))
    np.testing.assert_allclose(res.aggregate, [1, 1], atol=1e-9)
    np.testing.assert_allclose(res.scores, [math.sqrt(2)] * 4, atol=1e-9)
    # Equilateral triangle: the Fermat point is the centroid.
    tri = np.array([[0, 0], [2, 0], [1, math.sqrt(3)]])
    res = geometric_median(tri, np.ones(3), AggContext(f=1))
    np.testing.assert_allclose(res.aggregate, [1, math.sqrt(3) / 3], atol=1e-6)


def _weiszfeld_reference(x: np.ndarray, nu: float, iters: int) -> np.ndarray:
    v = x.mean(axis=0)
    for _ in range(iters):
        dist = np.maximum(np.linalg.norm(x - v, axis=1), nu)
        beta = 1.0 / dist
        v = (beta[:, None] * x).sum(axis=0) / beta.sum()
    return v


def test_geometric_median_matches_direct_weiszfeld() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 40))
    x[:2] += 50.0
    res = geometric_median(x, np.ones(9), AggContext(f=2, params={"tol": 0.0, "max_iter": 500}))
    np.testing.assert_allclose(res.aggregate, _weiszfeld_reference(x, 1e-6, 500), atol=1e-7)


def test_geometric_median_weighted_caps_at_median_weight() -> None:
    # weights 1, 1, 100 on {0, 1, 10}: capped to 1, 1, 1 -> still the median 1.
    x = np.array([[0.0], [1.0], [10.0]])
    res = geometric_median(x, np.array([1, 1, 100]), AggContext(f=1, params={"weighted": True}))
    np.testing.assert_allclose(res.aggregate, [1.0], atol=1e-5)


def test_centered_clipping_hand_examples() -> None:
    # center 0, tau 1: x0 = (3,4) has norm 5 -> scaled by 1/5 to (0.6, 0.8); x1 = (0.5, 0)
    # is inside. v = 0 + ((0.6, 0.8) + (0.5, 0)) / 2 = (0.55, 0.4).
    x = np.array([[3, 4], [0.5, 0]], dtype=np.float64)
    res = centered_clipping(x, np.ones(2), AggContext(params={"tau": 1.0}))
    np.testing.assert_allclose(res.aggregate, [0.55, 0.4])
    np.testing.assert_allclose(res.scores, [0.2, 1.0])
    # center (1, 0): x0 = (1, 3) is 3 away -> step (0, 1); x1 = (1.5, 0) is 0.5 away.
    # v = (1, 0) + ((0, 1) + (0.5, 0)) / 2 = (1.25, 0.5).
    x2 = np.array([[1, 3], [1.5, 0]], dtype=np.float64)
    ctx = AggContext(params={"tau": 1.0}, previous=np.array([1.0, 0.0]))
    np.testing.assert_allclose(centered_clipping(x2, np.ones(2), ctx).aggregate, [1.25, 0.5])


def test_centered_clipping_auto_radius_hand_example() -> None:
    # 1-D, centre 0: distances 1, 2, 3, 100, 100 -> median radius 3; the two 100s are
    # clipped to +3 and -3, so v = (1 + 2 + 3 + 3 - 3) / 5 = 1.2 (one iteration).
    x = np.array([[1.0], [2.0], [3.0], [100.0], [-100.0]])
    res = centered_clipping(x, np.ones(5), AggContext(f=2, params={"tau": "auto"}))
    np.testing.assert_allclose(res.aggregate, [1.2])
    np.testing.assert_allclose(res.scores, [1, 1, 1, 0.03, 0.03])
    assert res.info["tau"] == pytest.approx(3.0)
    # a second iteration re-centres on 1.2: distances 0.2, 0.8, 1.8, 98.8, 101.2 -> radius
    # 1.8; the mean clipped step is (-0.2 + 0.8 + 1.8 + 1.8 - 1.8) / 5 = 0.48 -> v = 1.68
    two = centered_clipping(x, np.ones(5), AggContext(f=2, params={"tau": "auto", "iters": 2}))
    np.testing.assert_allclose(two.aggregate, [1.68])


def test_centered_clipping_auto_radius_is_scale_free_and_bounds_attackers() -> None:
    rng = np.random.default_rng(7)
    honest = rng.normal(0.5, 0.1, size=(8, 50))
    x = np.vstack([honest, np.full((3, 50), 1e6)])
    ctx = AggContext(f=3, params={"tau": "auto", "iters": 3})
    out = centered_clipping(x, np.ones(11), ctx).aggregate
    # the attackers can pull at most by the (honest) median radius, far from 1e6
    assert np.abs(out - honest.mean(axis=0)).max() < 1.0
    scaled = centered_clipping(x * 1000.0, np.ones(11), ctx).aggregate
    np.testing.assert_allclose(scaled, out * 1000.0, rtol=1e-9)
    # a fixed radius far above the updates' scale clips nothing: it degrades to the mean
    big = centered_clipping(honest, np.ones(8), AggContext(f=3, params={"tau": 1e3}))
    np.testing.assert_allclose(big.aggregate, honest.mean(axis=0), rtol=1e-9)


def test_centered_clipping_rejects_a_bad_radius() -> None:
    x = np.ones((5, 2))
    for tau in ("median", -1.0, 0.0):
        with pytest.raises(AggregationError, match="tau"):
            centered_clipping(x, np.ones(5), AggContext(params={"tau": tau}))


def _cc_reference(x: np.ndarray, v0: np.ndarray, tau: float, iters: int) -> np.ndarray:
    v = v0.copy()
    for _ in range(iters):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + (diff * scale[:, None]).mean(axis=0)
    return v


def test_centered_clipping_matches_reference_iterations() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 30)) * 3
    x[0] *= 100
    v0 = rng.standard_normal(30)
    ctx = AggContext(f=1, params={"tau": 2.0, "iters": 5}, previous=v0)
    res = centered_clipping(x, np.ones(8), ctx)
    np.testing.assert_allclose(res.aggregate, _cc_reference(x, v0, 2.0, 5), atol=1e-10)


def test_fltrust_hand_example() -> None:
    # root g0 = (1, 0). x0 = (2,0): cos 1, rescaled (1,0). x1 = (0,3): cos 0 -> trust 0.
    # x2 = (-1,0): cos -1 -> 0. x3 = (3,3): cos 1/sqrt2, rescaled (1/sqrt2, 1/sqrt2).
    # aggregate = ((1,0) + (1/sqrt2)(1/sqrt2, 1/sqrt2)) / (1 + 1/sqrt2) = (1.5, 0.5)/1.7071
    x = np.array([[2, 0], [0, 3], [-1, 0], [3, 3]], dtype=np.float64)
    res = fltrust(x, np.ones(4), AggContext(root_update=np.array([1.0, 0.0])))
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(res.scores, [1, 0, 0, r], atol=1e-12)
    np.testing.assert_array_equal(res.accepted, [True, False, False, True])
    np.testing.assert_allclose(res.aggregate, np.array([1.5, 0.5]) / (1 + r))
    # A root update of norm 2 doubles every rescaled update.
    res2 = fltrust(x, np.ones(4), AggContext(root_update=np.array([2.0, 0.0])))
    np.testing.assert_allclose(res2.aggregate, 2 * np.array([1.5, 0.5]) / (1 + r))


def test_fltrust_all_distrusted_returns_zero() -> None:
    x = np.array([[-1.0, 0.0], [0.0, 0.0]])
    res = fltrust(x, np.ones(2), AggContext(root_update=np.array([1.0, 0.0])))
    np.testing.assert_array_equal(res.aggregate, [0, 0])
    assert res.info["all_distrusted"] is True
    assert not res.accepted.any()


def test_reputation_weighted_hand_example() -> None:
    # reputation 1e6, 5e5, 0 ppm and 10 samples each: effective weights 10, 5, 0.
    x = np.array([[1, 0], [0, 1], [100, 100]], dtype=np.float64)
    rep = np.array([1_000_000, 500_000, 0])
    w = np.array([10, 10, 10])
    res = reputation_weighted(x, w, AggContext(reputation=rep))
    np.testing.assert_allclose(res.aggregate, [2 / 3, 1 / 3])
    np.testing.assert_array_equal(res.accepted, [True, True, False])
    # clip_norm 0.5 halves both unit vectors; the shares stay 2/3 and 1/3.
    res_c = reputation_weighted(x, w, AggContext(reputation=rep, params={"clip_norm": 0.5}))
    np.testing.assert_allclose(res_c.aggregate, [1 / 3, 1 / 6])
    # max_samples caps a claim of 1000 samples at 10.
    res_m = reputation_weighted(
        x, np.array([10, 1000, 10]), AggContext(reputation=rep, params={"max_samples": 10})
    )
    np.testing.assert_allclose(res_m.aggregate, [2 / 3, 1 / 3])


def test_bucketing_hand_example() -> None:
    # 6 clients in 1-D, s = 2 -> 3 buckets; inner median of the 3 bucket means.
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0]])
    perm = np.random.default_rng(7).permutation(6)
    means = [x[perm[2 * b : 2 * b + 2], 0].mean() for b in range(3)]
    rule = bucketing("median", bucket_size=2)
    res = rule(x, np.ones(6), AggContext(f=1, rng=np.random.default_rng(7)))
    np.testing.assert_allclose(res.aggregate, [np.median(means)])
    assert res.info["buckets"] == tuple(tuple(sorted(perm[2 * b : 2 * b + 2])) for b in range(3))
    # each client carries its bucket's score (distance of the bucket mean to the median)
    for b in range(3):
        for i in perm[2 * b : 2 * b + 2]:
            assert res.scores[i] == pytest.approx(abs(means[b] - np.median(means)))


def test_bucketing_ragged_last_bucket_and_registered_form() -> None:
    x = np.arange(7, dtype=np.float64)[:, None]
    perm = np.random.default_rng(1).permutation(7)
    means = [x[perm[0:3], 0].mean(), x[perm[3:6], 0].mean(), x[perm[6:], 0].mean()]
    ctx = AggContext(
        f=1, rng=np.random.default_rng(1), params={"inner": "fedavg", "bucket_size": 3}
    )
    res = aggregate("bucketing", x, np.ones(7), ctx)
    # fedavg over buckets weighted by member count (3, 3, 1) is the plain mean
    np.testing.assert_allclose(res.aggregate, [np.dot(means, [3, 3, 1]) / 7])


def test_bucketing_size_one_equals_inner_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5))
    res = aggregate(
        "bucketing",
        x,
        np.ones(7),
        AggContext(f=2, rng=np.random.default_rng(5), params={"inner": "median", "bucket_size": 1}),
    )
    np.testing.assert_allclose(res.aggregate, np.median(x, axis=0))


def _krum_reference(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


def _bulyan_reference(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        m = len(remaining)
        k = min(max(m - f - 2, 1), m - 1)
        best, best_key = -1, (math.inf, (), 0)
        for i in remaining:
            d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in remaining if j != i)
            s = sum(d[:k]) if m > 1 else 0.0
            key = (s, tuple(x[i]), i)  # ties: smaller update (lexicographic), then index
            if key < best_key:
                best, best_key = i, key
        selected.append(best)
        remaining.remove(best)
    sel = x[selected]
    beta = n - 4 * f
    out = []
    for col in sel.T:
        med = np.median(col)
        # beta closest to the median; ties broken toward smaller values
        order = sorted(col, key=lambda v: (abs(v - med), v))
        out.append(np.mean(order[:beta]))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krum_and_bulyan_match_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, f = 11, 2
    x = rng.standard_normal((n, 6))
    x[:f] += rng.standard_normal((f, 6)) * 5
    np.testing.assert_allclose(
        krum(x, np.ones(n), AggContext(f=f)).scores, _krum_reference(x, f), rtol=1e-10
    )
    np.testing.assert_allclose(
        bulyan(x, np.ones(n), AggContext(f=f)).aggregate, _bulyan_reference(x, f), rtol=1e-10
    )


def test_trimmed_mean_matches_scipy() -> None:
    from scipy.stats import trim_mean

    rng = np.random.default_rng(9)
    x = rng.standard_normal((10, 50)).astype(np.float32)
    res = trimmed_mean(x, np.ones(10), AggContext(f=3))
    np.testing.assert_allclose(
        res.aggregate, trim_mean(x.astype(np.float64), 0.3, axis=0), rtol=1e-6
    )


def test_rules_never_modify_their_inputs() -> None:
    # one-column and one-row inputs are where a transposed view is already contiguous
    for shape in [(7, 1), (7, 5), (1, 6)]:
        x = np.random.default_rng(0).standard_normal(shape)
        w = np.ones(shape[0])
        for name in aggregator_names():
            if shape[0] == 1 and name in ("krum", "multi_krum", "bulyan"):
                continue
            xc, wc = x.copy(), w.copy()
            ctx = AggContext(
                f=0,
                root_update=x[0] + 1,
                reputation=np.full(shape[0], 10**6),
                rng=np.random.default_rng(0),
            )
            aggregate(name, xc, wc, ctx)
            np.testing.assert_array_equal(xc, x, err_msg=name)
            np.testing.assert_array_equal(wc, w, err_msg=name)


def test_every_rule_is_deterministic_and_keeps_dtype() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((15, 300)).astype(np.float32)
    w = rng.integers(1, 100, 15).astype(np.float64)

    def ctx() -> AggContext:
        return AggContext(
            f=2,
            previous=np.zeros(300, dtype=np.float32),
            root_update=x.mean(axis=0),
            reputation=np.full(15, 800_000),
            rng=np.random.default_rng(1),
        )

    for name in aggregator_names():
        a = aggregate(name, x, w, ctx())
        b = aggregate(name, x.copy(), w.copy(), ctx())
        assert a.aggregate.dtype == np.float32, name
        assert a.scores.dtype == np.float64, name
        np.testing.assert_array_equal(a.aggregate, b.aggregate, err_msg=name)
        np.testing.assert_array_equal(a.accepted, b.accepted, err_msg=name)
        np.testing.assert_array_equal(a.scores, b.scores, err_msg=name)


def test_streaming_blocks_do_not_change_results() -> None:
    # d spans several column blocks (8 Ki Gram, 16 Ki rows) and sort blocks (128 Ki).
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 140_000)).astype(np.float32)
    w = np.ones(7)
    np.testing.assert_array_equal(
        coordinate_median(x, w, AggContext(f=2)).aggregate, np.median(x, axis=0)
    )
    np.testing.assert_allclose(
        fedavg(x, w, AggContext()).aggregate,
        x.astype(np.float64).mean(axis=0),
        rtol=1e-6,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        krum(x, w, AggContext(f=2)).scores, _krum_reference(x.astype(np.float64), 2), rtol=1e-9
    )


def plugin_rule(updates: np.ndarray, weights: np.ndarray, ctx: AggContext) -> AggResult:
    """A user plug-in: the first update."""
    n = updates.shape[0]
    return AggResult(updates[0].copy(), np.arange(n) == 0, np.zeros(n))


def test_plugin_paths() -> None:
    path = f"{__name__}:plugin_rule"
    fn = get_aggregator(path)
    x = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.testing.assert_array_equal(aggregate(path, x).aggregate, [0, 1])
    assert fn is plugin_rule
    with pytest.raises(AggregationError, match="disabled"):
        get_aggregator(path, allow_plugins=False)
    with pytest.raises(AggregationError, match="cannot import"):
        get_aggregator("no_such_module_xyz:f")
    with pytest.raises(AggregationError, match="has no"):
        get_aggregator(f"{__name__}:missing")
    with pytest.raises(AggregationError, match="unknown aggregator 'krumm'"):
        get_aggregator("krumm")
    assert get_aggregator("krum") is krum

"""Known-answer tests for the attacks."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from cifer.compute.fl.aggregators import AggContext, aggregate
from cifer.compute.fl.attacks import (
    AttackContext,
    AttackError,
    alie,
    alie_z,
    attack_names,
    flip_labels,
    gaussian,
    get_attack,
    get_data_attack,
    ipm,
    mimic,
    min_max,
    min_sum,
    run_attack,
    scaling,
    sign_flip,
)

H2 = np.array([[1.0, 2.0], [3.0, 4.0]])  # honest mean (2, 3)


def test_sign_flip_mean_and_own() -> None:
    ctx = AttackContext.first(4, 2)
    np.testing.assert_array_equal(sign_flip(H2, ctx), [[-2, -3], [-2, -3]])
    own = np.array([[1.0, -1.0], [0.5, 0.0]])
    out = sign_flip(H2, ctx.with_(params={"mode": "own"}, own_updates=own))
    np.testing.assert_array_equal(out, -own)
    with pytest.raises(AttackError, match=r"needs ctx.own_updates"):
        sign_flip(H2, ctx.with_(params={"mode": "own"}))


def test_ipm() -> None:
    ctx = AttackContext.first(3, 1)
    np.testing.assert_allclose(ipm(H2, ctx), [[-0.2, -0.3]])  # default epsilon 0.1
    np.testing.assert_allclose(ipm(H2, ctx.with_(params={"epsilon": 0.5})), [[-1.0, -1.5]])


@pytest.mark.parametrize(
    ("n", "f", "p"),
    [
        (10, 3, 0.70),  # s = floor(6) - 3 = 3, (10 - 3)/10
        (50, 12, 0.72),  # s = 26 - 12 = 14, 36/50
        (50, 24, 0.96),  # s = 26 - 24 = 2, 48/50
        (20, 5, 0.70),  # s = 11 - 5 = 6, 14/20
    ],
)
def test_alie_z_matches_baruch_formula(n: int, f: int, p: float) -> None:
    s = math.floor(n / 2 + 1) - f
    assert (n - s) / n == pytest.approx(p)
    assert alie_z(n, f) == pytest.approx(NormalDist().inv_cdf(p), abs=1e-12)


def test_alie_z_known_values() -> None:
    # Phi^-1(0.7) = 0.524400512..., Phi^-1(0.72) = 0.582841507..., Phi^-1(0.96) = 1.750686...
    assert alie_z(10, 3) == pytest.approx(0.5244005127080407, abs=1e-12)
    assert alie_z(50, 12) == pytest.approx(0.5828415072712162, abs=1e-12)
    assert alie_z(50, 24) == pytest.approx(1.7506860712521692, abs=1e-12)
    from scipy.stats import norm

    assert alie_z(100, 20) == pytest.approx(norm.ppf((100 - (51 - 20)) / 100), abs=1e-12)
    with pytest.raises(AttackError, match=r"undefined"):
        alie_z(10, 6)  # s = 0


def test_alie_update() -> None:
    # honest column values [0, 2, 4]: mean 2, sample std 2; n = 10, f = 7? use explicit z.
    honest = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    ctx = AttackContext.first(5, 2, params={"z": 1.5})
    np.testing.assert_allclose(alie(honest, ctx), [[2 - 3.0, 1.0]] * 2)
    # default z from (n, f) = (5, 2): s = 3 - 2 = 1, z = Phi^-1(4/5)
    z = NormalDist().inv_cdf(0.8)
    np.testing.assert_allclose(alie(honest, AttackContext.first(5, 2)), [[2 - 2 * z, 1.0]] * 2)
    # population std on request: sqrt(8/3)
    pop = alie(honest, ctx.with_(params={"z": 1.0, "ddof": 0}))
    np.testing.assert_allclose(pop[0], [2 - math.sqrt(8 / 3), 1.0])


def test_mimic_targets() -> None:
    # centered first coordinates: -1.25, -0.25, -2.25, 3.75 -> top PC is the x axis and
    # client 3 has the largest |projection|.
    honest = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [5.0, 0.0]])
    ctx = AttackContext.first(6, 2)
    np.testing.assert_array_equal(mimic(honest, ctx), [[5, 0], [5, 0]])
    np.testing.assert_array_equal(mimic(honest, ctx.with_(params={"target": 1})), [[1, 0]] * 2)
    with pytest.raises(AttackError, match=r"not an honest index"):
        mimic(honest, ctx.with_(params={"target": 9}))


def test_gaussian_is_seeded() -> None:
    honest = np.zeros((5, 20_000), dtype=np.float32)
    ctx = AttackContext.first(7, 2, rng=np.random.default_rng(1), params={"sigma": 3.0})
    a = gaussian(honest, ctx)
    b = gaussian(honest, ctx.with_(rng=np.random.default_rng(1)))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2, 20_000)
    assert abs(float(a.std()) - 3.0) < 0.05 and abs(float(a.mean())) < 0.05
    with pytest.raises(AttackError, match=r"ctx.rng"):
        gaussian(honest, AttackContext.first(7, 2))


def test_scaling() -> None:
    ctx = AttackContext.first(4, 2)
    # default scale n = 4 on the honest mean (2, 3)
    np.testing.assert_allclose(scaling(H2, ctx), [[8, 12], [8, 12]])
    own = np.array([[1.0, 0.0], [0.0, -1.0]])
    out = scaling(H2, ctx.with_(own_updates=own, params={"scale": 10.0}))
    np.testing.assert_allclose(out, [[10, 0], [0, -10]])


# Honest updates (2,0), (4,0), (3,2), (3,-2): mean (3,0), p = (1,0) for unit_vec and sign.
# Candidate m = (3 - g, 0); squared distances (1-g)^2, (1+g)^2, g^2+4, g^2+4.
# min-max: honest max pairwise d^2 = 16 ((3,2)-(3,-2)); need (1+g)^2 <= 16 -> g = 3.
# min-sum: honest sums 14, 14, 26, 26; need 4 g^2 + 10 <= 26 -> g = 2.
MM_HONEST = np.array([[2.0, 0.0], [4.0, 0.0], [3.0, 2.0], [3.0, -2.0]])


@pytest.mark.parametrize("deviation", ["unit_vec", "sign"])
def test_min_max_and_min_sum_hand_example(deviation: str) -> None:
    ctx = AttackContext.first(6, 2, params={"deviation": deviation})
    mm = min_max(MM_HONEST, ctx)
    ms = min_sum(MM_HONEST, ctx)
    assert mm.shape == (2, 2)
    np.testing.assert_allclose(mm[0], [0.0, 0.0], atol=3e-5)  # gamma = 3
    np.testing.assert_allclose(ms[0], [1.0, 0.0], atol=3e-5)  # gamma = 2
    # the search returns the last success, so the constraint holds exactly
    assert np.max(np.sum((MM_HONEST - mm[0]) ** 2, axis=1)) <= 16.0
    assert np.sum((MM_HONEST - ms[0]) ** 2) <= 26.0


def test_min_max_std_deviation_is_maximal() -> None:
    rng = np.random.default_rng(2)
    honest = rng.standard_normal((12, 30)) + 0.5
    ctx = AttackContext.first(15, 3, params={"deviation": "std"})
    mal = min_max(honest, ctx)[0]
    mean = honest.mean(axis=0)
    std = honest.std(axis=0, ddof=1)
    gamma = float(np.dot(mean - mal, std) / np.dot(std, std))
    bound = max(np.sum((a - b) ** 2) for a in honest for b in honest)

    def worst(g: float) -> float:
        return float(np.max(np.sum((honest - (mean - g * std)) ** 2, axis=1)))

    assert worst(gamma) <= bound
    assert worst(gamma + 1e-4) > bound  # tight up to the search tolerance


def test_label_flip() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9, 3])), [9, 8, 0, 6])
    np.testing.assert_array_equal(flip_labels(np.array([0, 2]), num_classes=3), [2, 0])
    assert get_data_attack("label_flip") is flip_labels
    with pytest.raises(AttackError, match=r"must lie in \[0, 10\)"):
        flip_labels(np.array([0, 10]))
    with pytest.raises(AttackError, match=r"must be integers"):
        flip_labels(np.array([0.0, 1.0]))
    with pytest.raises(AttackError, match=r"data-level attack"):
        get_attack("label_flip")


def test_run_attack_places_rows_and_checks_inputs() -> None:
    honest = np.arange(10, dtype=np.float32).reshape(5, 2)
    ctx = AttackContext(n=7, f=2, byzantine=np.array([5, 1]), params={"epsilon": 1.0})
    full = run_attack("ipm", honest, ctx)
    assert full.shape == (7, 2) and full.dtype == np.float32
    np.testing.assert_array_equal(full[[0, 2, 3, 4, 6]], honest)
    np.testing.assert_array_equal(full[[1, 5]], [[-4, -5], [-4, -5]])
    with pytest.raises(AttackError, match=r"expected n - f = 5 honest updates, got 4"):
        run_attack("ipm", honest[:4], ctx)
    with pytest.raises(AttackError, match=r"distinct"):
        run_attack("ipm", honest, ctx.with_(byzantine=np.array([1, 1])))
    with pytest.raises(AttackError, match=r"has no parameter"):
        run_attack("ipm", honest, ctx.with_(params={"eps": 1.0}))
    with pytest.raises(AttackError, match=r"unknown attack"):
        get_attack("ipmm")
    assert get_attack("cifer.compute.fl.attacks.simple:ipm") is ipm


def test_every_attack_runs_and_robust_rules_survive_them() -> None:
    rng = np.random.default_rng(0)
    n, f, d = 15, 3, 50
    honest = (rng.standard_normal((n - f, d)) + 1.0).astype(np.float32)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    for name in attack_names():
        ctx = AttackContext.first(n, f, rng=np.random.default_rng(1), own_updates=honest[:f] * 0.5)
        full = run_attack(name, honest, ctx)
        assert full.shape == (n, d) and np.isfinite(full).all(), name
        res = aggregate("median", full, None, AggContext(f=f))
        # per coordinate, the median of n values with f outliers lies within the honest range
        assert np.all(res.aggregate >= lo) and np.all(res.aggregate <= hi), name

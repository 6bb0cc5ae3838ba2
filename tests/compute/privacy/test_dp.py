"""Client-level DP: exact clipping, noise of the stated std in both modes, and an accountant
that agrees with the closed-form Gaussian RDP bound and behaves monotonically."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from cifer.base.encoding import decode, encode
from cifer.compute.privacy.dp import (
    DpConfig,
    DpError,
    DpRoundReport,
    JobAccountant,
    calibrate_noise_multiplier,
    clip_update,
    clip_updates,
    effective_noise_multiplier,
    epsilon,
    noise_std,
    privatize_sum,
    privatize_update,
    to_micro_epsilon,
    to_ppm,
)


def _config(mode: str = "central", **kw: float | int) -> DpConfig:
    args: dict[str, float | int] = {
        "noise_multiplier": 1.1,
        "clip_norm": 0.5,
        "sampling_rate": 0.1,
        "delta": 1e-5,
        "min_clients": 10,
        "rounds": 100,
    }
    args.update(kw)
    return DpConfig.of(mode=mode, **args)  # type: ignore[arg-type]


# --- clipping -----------------------------------------------------------------------------


def test_clipping_bounds_every_norm_and_leaves_small_rows_alone() -> None:
    rng = np.random.default_rng(0)
    scales = np.logspace(-4, 6, 400)
    u = (rng.standard_normal((400, 1000)) * scales[:, None]).astype(np.float32)
    before = u.copy()
    for c in (1e-3, 0.37, 1.0, 123.456):
        out, norms = clip_updates(u, c)
        after = np.linalg.norm(out.astype(np.float64), axis=1)
        assert (after <= c).all()  # exactly, despite float32 rounding
        over = norms > c
        assert np.allclose(after[over], c, rtol=1e-6)
        assert np.array_equal(out[~over], u[~over])
        # direction is preserved
        cos = np.einsum("ij,ij->i", out[over].astype(np.float64), u[over]) / (
            after[over] * norms[over]
        )
        assert np.allclose(cos, 1.0, atol=1e-6)
    assert np.array_equal(u, before)  # the input is not modified


def test_clip_update_single_and_errors() -> None:
    x = np.array([3.0, 4.0], np.float32)
    out, norm = clip_update(x, 1.0)
    assert norm == 5.0 and np.linalg.norm(out.astype(np.float64)) <= 1.0
    assert np.allclose(out, [0.6, 0.8], atol=1e-6)
    for bad, c, reason in [
        (np.array([1.0, np.nan]), 1.0, "NaN"),
        (x, 0.0, "clip norm"),
        (x, float("inf"), "clip norm"),
        (np.zeros((2, 2)), 1.0, "flat"),
    ]:
        with pytest.raises(DpError, match=reason):
            clip_update(bad, c)


# --- noise ----------------------------------------------------------------------------------


def test_central_noise_has_std_z_times_c() -> None:
    cfg = _config("central")
    d = 200_000
    noisy = privatize_sum(np.zeros(d, np.float32), cfg, np.random.default_rng(1))
    assert noise_std(cfg) == pytest.approx(1.1 * 0.5)
    # sample std of 200k normals is within 1% with overwhelming probability (sd ~ 0.16%)
    assert noisy.std() == pytest.approx(1.1 * 0.5, rel=0.01)
    assert abs(noisy.mean()) < 0.01
    with pytest.raises(DpError, match="central mode"):
        privatize_sum(np.zeros(3, np.float32), _config("distributed"), np.random.default_rng(0))


def test_distributed_noise_sums_to_the_central_std() -> None:
    cfg = _config("distributed", min_clients=10)
    rng = np.random.default_rng(2)
    d = 100_000
    x = np.zeros(d, np.float32)
    shares = np.stack([privatize_update(x, cfg, rng) for _ in range(10)])
    assert shares[0].std() == pytest.approx(0.55 / math.sqrt(10), rel=0.015)
    assert shares.sum(axis=0).std() == pytest.approx(0.55, rel=0.015)
    # central mode: the client only clips
    big = np.full(d, 1.0, np.float32)
    out = privatize_update(big, _config("central"), rng)
    assert np.linalg.norm(out.astype(np.float64)) <= 0.5
    assert np.allclose(out, out[0])


def test_noise_is_reproducible_with_a_seed() -> None:
    cfg = _config("distributed")
    x = np.ones(50, np.float32)
    a = privatize_update(x, cfg, np.random.default_rng(5))
    b = privatize_update(x, cfg, np.random.default_rng(5))
    c = privatize_update(x, cfg, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dropouts_lower_the_effective_multiplier() -> None:
    cfg = _config("distributed", min_clients=16)
    assert effective_noise_multiplier(cfg, 4) == pytest.approx(1.1 * 0.5)
    assert effective_noise_multiplier(cfg, 16) == pytest.approx(1.1)
    assert effective_noise_multiplier(_config("central"), 4) == pytest.approx(1.1)


# --- accountant ---------------------------------------------------------------------------


def test_epsilon_matches_the_closed_form_gaussian_rdp_bound() -> None:
    """Full participation: RDP of the Gaussian mechanism is steps * a / (2 z^2) at order a;
    converted with the bound of Balle et al. (2020), minimised over dp-accounting's orders."""
    z, steps, delta = 1.3, 40, 1e-5
    orders = np.asarray(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    orders = orders[orders > 1.01]
    r = steps * orders / (2 * z * z)
    eps = r + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)
    got = epsilon(noise_multiplier=z, sampling_rate=1.0, steps=steps, delta=delta)
    assert got == pytest.approx(float(eps.min()), rel=1e-9)
    # RDP is an upper bound on the exact (analytic) Gaussian epsilon, and not far above it
    exact = dp_accounting.get_epsilon_gaussian(z / math.sqrt(steps), delta)
    assert exact <= got <= 1.3 * exact


def test_epsilon_subsampled_agrees_with_dp_accounting_directly() -> None:
    acc = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, 10_000))
    want = acc.get_epsilon(1e-5)
    got = epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=10_000, delta=1e-5)
    assert got == pytest.approx(want, rel=1e-12)
    assert 5.0 < got < 6.5  # the published order of magnitude for these settings


def test_epsilon_is_monotone() -> None:
    by_steps = [
        epsilon(noise_multiplier=1.0, sampling_rate=0.05, steps=s, delta=1e-5)
        for s in (1, 10, 100, 1000)
    ]
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 4
    by_z = [
        epsilon(noise_multiplier=z, sampling_rate=0.05, steps=100, delta=1e-5)
        for z in (0.6, 0.8, 1.0, 2.0, 4.0)
    ]
    assert by_z == sorted(by_z, reverse=True) and len(set(by_z)) == 5
    by_q = [
        epsilon(noise_multiplier=1.0, sampling_rate=q, steps=100, delta=1e-5)
        for q in (0.01, 0.1, 1.0)
    ]
    assert by_q == sorted(by_q)
    assert epsilon(noise_multiplier=1.0, sampling_rate=0.1, steps=0, delta=1e-5) == 0.0


@pytest.mark.parametrize(
    ("target", "q", "steps"), [(1.0, 0.1, 100), (8.0, 1.0, 20), (3.0, 0.01, 1000)]
)
def test_calibration_hits_the_target(target: float, q: float, steps: int) -> None:
    z = calibrate_noise_multiplier(target_epsilon=target, sampling_rate=q, steps=steps, delta=1e-5)
    eps = epsilon(noise_multiplier=z, sampling_rate=q, steps=steps, delta=1e-5)
    assert eps <= target * (1 + 1e-6)
    assert eps >= target * 0.99  # not wastefully noisy
    looser = epsilon(noise_multiplier=z * 0.99, sampling_rate=q, steps=steps, delta=1e-5)
    assert looser > target


def test_job_accountant_reports_per_round_and_cumulative() -> None:
    cfg = _config("central", noise_multiplier=1.0, sampling_rate=0.2, rounds=5)
    acc = JobAccountant(cfg)
    assert acc.epsilon == 0.0
    reports = [acc.record_round(r) for r in range(5)]
    totals = [r.epsilon_total_micro for r in reports]
    assert totals == sorted(totals) and len(set(totals)) == 5
    single = epsilon(noise_multiplier=1.0, sampling_rate=0.2, steps=1, delta=1e-5)
    assert all(r.epsilon_round_micro == math.ceil(single * 1e6) for r in reports)
    five = epsilon(noise_multiplier=1.0, sampling_rate=0.2, steps=5, delta=1e-5)
    assert reports[-1].epsilon_total_micro == math.ceil(five * 1e6)
    assert cfg.planned_epsilon() == pytest.approx(acc.epsilon, rel=1e-12)
    assert reports[-1].round == 4 and reports[-1].delta_e12 == 10_000_000
    assert decode(encode(reports[-1]), DpRoundReport) == reports[-1]  # canonical, ints only


def test_job_accountant_charges_dropouts_and_rate_overrides() -> None:
    cfg = _config("distributed", noise_multiplier=1.0, sampling_rate=0.2, min_clients=10)
    full, short = JobAccountant(cfg), JobAccountant(cfg)
    a = full.record_round(0, survivors=12)
    b = short.record_round(0, survivors=5)
    assert b.noise_multiplier_ppm < a.noise_multiplier_ppm == 1_000_000
    assert b.epsilon_round_micro > a.epsilon_round_micro
    c = JobAccountant(cfg).record_round(0, sampling_rate_ppm=1_000_000)
    assert c.epsilon_round_micro > a.epsilon_round_micro
    with pytest.raises(DpError, match="sampling rate"):
        full.record_round(1, sampling_rate_ppm=0)


def test_on_chain_conversions_are_conservative() -> None:
    assert to_micro_epsilon(1.0000001) == 1_000_001  # rounded up, never under-reported
    assert to_micro_epsilon(2.0) == 2_000_000
    assert to_ppm(0.1234564) == 123_456
    cfg = DpConfig.of(
        mode="central",
        noise_multiplier=1.0000001,
        clip_norm=1.0,
        sampling_rate=1.0,
        delta=1e-5,
        min_clients=1,
        rounds=1,
    )
    assert cfg.noise_multiplier_ppm == 1_000_001  # z rounded up: never less noise
    assert _config(noise_multiplier=1.1).noise_multiplier_ppm == 1_100_000
    assert decode(encode(cfg), DpConfig) == cfg
    with pytest.raises(DpError, match="infinite"):
        to_micro_epsilon(float("inf"))
    cases: list[tuple[str, dict[str, float | int], str]] = [
        ("local", {}, "mode"),
        ("central", {"sampling_rate": 0.0}, "sampling rate"),
        ("central", {"sampling_rate": 1.5}, "sampling rate"),
        ("central", {"delta": 0.0}, "delta"),
        ("central", {"clip_norm": 0.0}, "clip norm"),
        ("central", {"min_clients": 0}, "min_clients"),
    ]
    for mode, kw, reason in cases:
        with pytest.raises(DpError, match=reason):
            _config(mode, **kw)
    with pytest.raises(DpError, match="noise multiplier"):
        epsilon(noise_multiplier=0.0, sampling_rate=0.5, steps=1, delta=1e-5)

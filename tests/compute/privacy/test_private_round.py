"""One FL round under a privacy mode: secure aggregation and CKKS give the plaintext mean up to
quantization and CKKS noise, DP noise has the stated scale, epsilon is reported per round and
per job, and robust rules are refused where they cannot run. The simulator end to end on the
offline digits dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifer.compute.fl.private_round import (
    AVERAGING_RULES,
    PrivacyConfig,
    PrivacyError,
    PrivateAggregator,
    SecAggOptions,
    check_rule,
    dp_config,
    privacy_options,
)
from cifer.compute.fl.simulation import (
    SimulationConfig,
    SimulationError,
    SimulationResult,
    run_simulation,
)
from cifer.compute.privacy.dp import DpConfig, epsilon

D = 3000


def _updates(k: int = 7, d: int = D, scale: float = 0.01, seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal((k, d)) * scale).astype(np.float32)


def _aggregator(mode: str = "plain", **kw: Any) -> PrivateAggregator:
    length = kw.pop("length", D)
    population = kw.pop("population", 7)
    return PrivateAggregator(
        PrivacyConfig(mode=mode, **kw),  # type: ignore[arg-type]
        length=length,
        population=population,
        seed=5,
    )


def _dp(mode: str = "central", z: float = 1.0, clip: float = 1.0, **kw: Any) -> DpConfig:
    args: dict[str, Any] = {
        "mode": mode,
        "clip_norm": clip,
        "sampling_rate": 1.0,
        "delta": 1e-5,
        "rounds": 10,
        "min_clients": 7,
        "noise_multiplier": z,
    }
    return dp_config(**(args | kw))


# ------------------------------------------------------------------------------ protocols


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_secagg_round_is_the_plaintext_mean_within_one_quantization_step(rounding: str) -> None:
    u = _updates()
    agg = _aggregator("secagg", clip_norm=1.0, secagg=SecAggOptions(rounding=rounding))  # type: ignore[arg-type]
    res = agg.aggregate(u, round_=1)
    assert res.aggregate is not None and res.participants == 7 and not res.skipped
    step = 1.0 / ((1 << 19) - 1)  # range = clip norm, 20 value bits
    err = np.abs(res.aggregate.astype(np.float64) - u.astype(np.float64).mean(axis=0))
    # each client's rounding error is below one step (half a step to nearest): so is the mean's
    assert err.max() <= (step if rounding == "stochastic" else step / 2) + 1e-7
    assert err.max() > 0  # fixed point really happened
    assert res.protocol_error == pytest.approx(float(err.max()), abs=1e-7)
    params = agg.last_secagg
    assert (params.degree, params.threshold, params.modulus_bits) == (6, 4, 32)


def test_secagg_applies_integer_weights_exactly_and_widens_the_group() -> None:
    u = _updates(k=5)
    w = np.array([1, 600, 3, 4000, 7])
    res = _aggregator("secagg", clip_norm=1.0).aggregate(u, w, round_=2)
    want = (w @ u.astype(np.float64)) / w.sum()
    assert res.aggregate is not None
    assert np.abs(res.aggregate - want).max() <= 1.0 / ((1 << 19) - 1) + 1e-7


def test_ckks_round_is_the_plaintext_mean_within_ckks_noise() -> None:
    u = _updates(k=4, d=5000)  # two chunks of 4095 values
    w = np.array([3, 1, 2, 5])
    agg = _aggregator("ckks", length=5000)
    res = agg.aggregate(u, w, round_=1)
    want = (w @ u.astype(np.float64)) / w.sum()
    assert res.aggregate is not None
    assert np.abs(res.aggregate - want).max() < 1e-6
    assert res.protocol_error is not None and res.protocol_error < 1e-6
    assert agg.describe()["ckks"]["poly_modulus_degree"] == 8192


def test_clipping_bounds_every_clients_pull() -> None:
    u = _updates(k=4, scale=0.05)  # norms ~2.7
    u[0] *= 1e4  # one client with a huge update
    res = _aggregator("plain", clip_norm=0.5).aggregate(u, round_=1)
    assert res.aggregate is not None and res.clipped == 4  # all rows are above 0.5
    assert float(np.linalg.norm(res.aggregate)) <= 0.5 + 1e-6


def test_secagg_skips_a_round_with_fewer_than_three_participants() -> None:
    res = _aggregator("secagg", clip_norm=1.0).aggregate(_updates(k=2), round_=1)
    assert res.skipped and res.aggregate is None and res.participants == 2


def test_bad_round_input_is_refused() -> None:
    agg = _aggregator("plain")
    with pytest.raises(PrivacyError, match="float"):
        agg.aggregate(np.zeros((2, D + 1), np.float32), round_=1)
    with pytest.raises(PrivacyError, match="whole numbers"):
        agg.aggregate(_updates(k=2), np.array([1.5, 1.0]), round_=1)
    with pytest.raises(PrivacyError, match="distinct"):
        agg.aggregate(_updates(k=2), round_=1, clients=[3, 3])
    bad = _updates(k=2)
    bad[1, 0] = np.nan
    with pytest.raises(PrivacyError, match="NaN"):
        agg.aggregate(bad, round_=1)


# ------------------------------------------------------------------------------ DP


@pytest.mark.parametrize("mode", ["plain", "secagg", "ckks"])
def test_central_noise_has_std_zc_over_qn_in_every_mode(mode: str) -> None:
    d = 6000
    u = np.zeros((7, d), dtype=np.float32)
    agg = _aggregator(mode, length=d, dp=_dp("central", z=2.0, clip=0.5))
    res = agg.aggregate(u, round_=1)
    assert res.aggregate is not None
    # sum of zero updates + N(0, (zC)^2), divided by q N = 7
    assert float(np.std(res.aggregate)) == pytest.approx(2.0 * 0.5 / 7, rel=0.05)
    assert res.protocol_error is not None and res.protocol_error < 1e-5


def test_distributed_noise_sums_to_the_full_noise_and_works_under_secagg() -> None:
    d = 6000
    u = np.zeros((7, d), dtype=np.float32)
    agg = _aggregator("secagg", length=d, dp=_dp("distributed", z=2.0, clip=0.5))
    # the range leaves room for the clients' noise: clip + 8 sigma of one share
    assert agg.value_range == pytest.approx(0.5 + 8 * 2.0 * 0.5 / math.sqrt(7))
    res = agg.aggregate(u, round_=1)
    assert res.aggregate is not None
    assert float(np.std(res.aggregate)) == pytest.approx(2.0 * 0.5 / 7, rel=0.05)
    # fewer clients than min_clients: less noise, and the report says so
    res = agg.aggregate(u[:4], round_=2, clients=range(4))
    assert res.aggregate is not None
    assert float(np.std(res.aggregate)) == pytest.approx(2.0 * 0.5 * math.sqrt(4 / 7) / 7, rel=0.05)
    assert res.noise_multiplier == pytest.approx(2.0 * math.sqrt(4 / 7), abs=1e-6)


def _eps(value: float | None) -> float:
    assert value is not None
    return value


def test_epsilon_is_reported_per_round_and_per_job() -> None:
    dp = _dp("central", z=1.2, sampling_rate=0.5)
    agg = _aggregator("plain", dp=dp, population=14)
    got = [_eps(agg.aggregate(_updates(k=7), round_=r).epsilon) for r in (1, 2, 3)]
    want = [
        epsilon(noise_multiplier=1.2, sampling_rate=0.5, steps=r, delta=1e-5) for r in (1, 2, 3)
    ]
    assert got == pytest.approx(want, abs=2e-6)
    assert got[0] < got[1] < got[2]
    res = agg.aggregate(_updates(k=7), round_=4)
    assert res.report is not None and res.report.round == 4
    assert res.epsilon_round == pytest.approx(want[0], abs=2e-6)
    assert agg.describe()["dp"]["planned_epsilon"] > got[2]


def test_calibrated_noise_meets_the_target_epsilon() -> None:
    dp = _dp("central", noise_multiplier=None, epsilon=4.0, sampling_rate=0.1, rounds=20)
    assert dp.planned_epsilon() <= 4.0
    assert dp.planned_epsilon() > 3.99  # the smallest such z, not just any
    with pytest.raises(PrivacyError, match="exactly one"):
        _dp("central", epsilon=4.0)


def test_dp_needs_uniform_weights() -> None:
    agg = _aggregator("plain", dp=_dp())
    with pytest.raises(PrivacyError, match="uniformly"):
        agg.aggregate(_updates(k=7), np.arange(1, 8), round_=1)


# ------------------------------------------------------------------------------ rules, options


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
@pytest.mark.parametrize("rule", ["krum", "median", "trimmed_mean", "centered_clipping"])
def test_robust_rules_are_refused_under_secagg_and_ckks(mode: str, rule: str) -> None:
    with pytest.raises(PrivacyError, match="needs plaintext updates"):
        check_rule(mode, rule, dp=False)
    for ok in AVERAGING_RULES:
        check_rule(mode, ok, dp=True)


def test_robust_rules_are_refused_under_dp_but_allowed_in_plain() -> None:
    check_rule("plain", "krum", dp=False)
    with pytest.raises(PrivacyError, match="differential privacy"):
        check_rule("plain", "krum", dp=True)


def test_privacy_options_parse_and_refuse_unknown_keys() -> None:
    secagg, _ = privacy_options("secagg", {"value_bits": 16, "value_range": 2})
    assert secagg.value_bits == 16 and secagg.value_range == 2.0
    _, ckks = privacy_options("ckks", {"coeff_mod_bit_sizes": "60,40,40,60"})
    assert ckks is not None and ckks.coeff_mod_bit_sizes == (60, 40, 40, 60)
    with pytest.raises(PrivacyError, match="no parameter"):
        privacy_options("plain", {"value_bits": 16})
    with pytest.raises(PrivacyError, match="value_bits"):
        PrivacyConfig(mode="secagg", clip_norm=1.0, secagg=SecAggOptions(value_bits=60)).validate()
    with pytest.raises(PrivacyError, match="bound on update values"):
        PrivacyConfig(mode="secagg").validate()


# ------------------------------------------------------------------------------ simulator

BASE = SimulationConfig(dataset="digits", clients=6, rounds=4, model="logreg", lr=0.1, seed=0)


def _sim(**changes: Any) -> SimulationResult:
    return run_simulation(SimulationConfig(**{**BASE.to_dict(), **changes}))


def test_simulator_secagg_and_ckks_match_plaintext_accuracy() -> None:
    plain = _sim(clip_norm=10.0)
    secagg = _sim(clip_norm=10.0, privacy="secagg")
    ckks = _sim(clip_norm=10.0, privacy="ckks")
    base = [r.test_accuracy for r in plain.rounds]
    assert [r.test_accuracy for r in secagg.rounds] == base
    assert [r.test_accuracy for r in ckks.rounds] == base
    doc = secagg.to_dict()
    assert doc["privacy"]["mode"] == "secagg"
    assert 0 < doc["summary"]["max_protocol_error"] < 1e-4
    assert doc["rounds"][0]["participants"] == 6
    # a run without privacy features writes the same JSON keys as before
    assert "participants" not in _sim(rounds=1).to_dict()["rounds"][0]


def test_simulator_writes_per_round_epsilon_with_sampling() -> None:
    res = _sim(
        clients=20,
        sample_rate=0.5,
        clip_norm=1.0,
        dp_noise_multiplier=1.5,
        privacy="secagg",
        dp_noise="distributed",
        rounds=3,
    )
    eps = [_eps(r.epsilon) for r in res.rounds]
    assert eps == sorted(eps)
    assert res.summary()["final_epsilon"] == eps[-1]
    assert res.to_dict()["privacy"]["dp"]["min_clients"] == 10
    parts = [r.participants for r in res.rounds]
    assert all(p is not None and 0 < p < 20 for p in parts)
    assert [r.accepted for r in res.rounds] == parts


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"privacy": "secagg", "clip_norm": 1.0, "aggregator": "krum"}, "needs plaintext"),
        ({"privacy": "ckks", "aggregator": "median"}, "needs plaintext"),
        ({"dp_epsilon": 1.0, "clip_norm": 1.0, "aggregator": "trimmed_mean"}, "differential"),
        ({"dp_epsilon": 1.0}, "clip norm"),
        ({"privacy": "secagg"}, "bound on update values"),
        ({"privacy": "tee"}, "privacy must be"),
        ({"sample_rate": 0.5, "byzantine": 1, "attack": "sign_flip"}, "without Byzantine"),
        ({"dp_epsilon": 1.0, "dp_noise_multiplier": 1.0, "clip_norm": 1.0}, "not both"),
        ({"dp_epsilon": 1.0, "clip_norm": 1.0, "weighting": "samples"}, "uniform"),
        ({"privacy": "secagg", "clip_norm": 1.0, "privacy_params": {"bits": 3}}, "no parameter"),
    ],
)
def test_simulator_refuses_bad_privacy_settings(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(SimulationError, match=match):
        SimulationConfig(**{**BASE.to_dict(), **changes}).validate()


def test_cli_writes_per_round_epsilon_and_refuses_robust_rules(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cifer.app.cli.fl import app

    runner = CliRunner()
    small = ["simulate", "--dataset", "digits", "--clients", "8", "--rounds", "2", "--quiet"]
    out = tmp_path / "run"
    args = ["--privacy", "secagg", "--dp-clip", "1", "--dp-noise-multiplier", "1.0"]
    res = runner.invoke(app, [*small, *args, "--dp-noise", "distributed", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "distributed noise" in res.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["privacy"] == "secagg" and doc["privacy"]["dp"]["delta"] == 1e-5
    assert [r["epsilon"] > 0 for r in doc["rounds"]] == [True, True]
    assert doc["summary"]["final_epsilon"] == doc["rounds"][-1]["epsilon"]
    res = runner.invoke(app, [*small, "--privacy", "ckks", "--aggregator", "krum"])
    assert res.exit_code == 2
    assert "needs plaintext updates" in res.output

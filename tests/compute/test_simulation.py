"""The FL simulator on the offline digits dataset: learning, attacks vs rules, determinism,
data attacks, FedSGD momentum, bad input, the Ray backend (with a stand-in module), and the
results writer."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifer.compute.fl.attacks import AttackContext, attack_names, register_attack
from cifer.compute.fl.data import load_dataset
from cifer.compute.fl.plotting import (
    METRICS_FILE,
    TIMING_FILE,
    dumps,
    prepare_out_dir,
    write_results,
)
from cifer.compute.fl.simulation import (
    RoundMetrics,
    Simulation,
    SimulationConfig,
    SimulationError,
    SimulationResult,
    build_clients,
    client_rng,
    resolve_aggregator,
    run_simulation,
)
from cifer.compute.fl.trainers import ModelSpec, get_flat, param_spec

# 10 digits clients, MLP(128), one local epoch per round: ~0.1 s per run.
BASE = SimulationConfig(dataset="digits", clients=10, rounds=10, model="mlp", lr=0.1, seed=0)


def run(**changes: Any) -> SimulationResult:
    return run_simulation(SimulationConfig(**{**BASE.to_dict(), **changes}))


@pytest.fixture(scope="module")
def clean() -> SimulationResult:
    return run()


def test_fedavg_without_attack_learns(clean: SimulationResult) -> None:
    assert clean.final_accuracy > 0.8
    assert clean.initial_accuracy < 0.3
    assert len(clean.rounds) == 10 and all(r.test_accuracy is not None for r in clean.rounds)
    assert clean.num_params == 64 * 128 + 128 + 128 * 10 + 10
    assert sum(clean.client_sizes) == clean.num_train
    r = clean.rounds[-1]
    assert (r.accepted, r.rejected, r.byzantine_accepted) == (10, 0, 0)
    assert r.wall_s >= r.train_s > 0 and r.update_norm > 0
    # FedAvg scores are the normalised weights
    assert r.score_min == pytest.approx(0.1) and r.score_max == pytest.approx(0.1)


def test_sign_flip_degrades_fedavg_but_not_robust_rules(clean: SimulationResult) -> None:
    attacked = dict(byzantine=4, attack="sign_flip")
    fedavg = run(**attacked).final_accuracy
    median = run(**attacked, aggregator="median").final_accuracy
    trimmed = run(**attacked, aggregator="trimmed_mean", agg_params={"beta": 0.4})
    # Four of ten clients send minus the honest mean: the average shrinks to a fifth of
    # the honest step, so FedAvg lags far behind; the order statistics discard them.
    assert fedavg < clean.final_accuracy - 0.2
    assert median > fedavg + 0.15
    assert median > clean.final_accuracy - 0.15
    assert trimmed.final_accuracy > fedavg + 0.15
    # scores are distances to the aggregate: the attackers are the far ones
    last = trimmed.rounds[-1]
    assert last.score_byzantine_mean is not None and last.score_honest_mean is not None
    assert last.score_byzantine_mean > 1.3 * last.score_honest_mean


def test_gaussian_noise_breaks_fedavg_not_median(clean: SimulationResult) -> None:
    noisy = dict(byzantine=3, attack="gaussian", attack_params={"sigma": 10.0})
    fedavg = run(**noisy).final_accuracy
    median = run(**noisy, aggregator="median").final_accuracy
    assert fedavg < 0.55
    assert median > fedavg + 0.3
    assert median > clean.final_accuracy - 0.1


def test_same_seed_same_metrics_json(clean: SimulationResult) -> None:
    again = run()
    assert dumps(again.to_dict()) == dumps(clean.to_dict())
    other = run(seed=1)
    assert dumps(other.to_dict()) != dumps(clean.to_dict())
    # a rule with randomness (bucketing) draws from a Generator seeded per round
    cfg = dict(byzantine=2, attack="alie", aggregator="bucketing", rounds=4)
    assert dumps(run(**cfg).to_dict()) == dumps(run(**cfg).to_dict())
    # timings are kept apart from the deterministic document
    assert "timing" not in clean.to_dict()
    timing = clean.to_dict(timing=True)["timing"]
    assert len(timing["rounds"]) == 10 and timing["summary"]["median_wall_s"] > 0


def test_label_flip_poisons_only_byzantine_data() -> None:
    cfg = SimulationConfig(**{**BASE.to_dict(), "byzantine": 3, "attack": "label_flip"})
    train, _ = load_dataset("digits")
    reference = build_clients(SimulationConfig(**{**cfg.to_dict(), "attack": "none"}), train)
    sim = Simulation(cfg)
    for i, (got, ref) in enumerate(zip(sim.clients, reference, strict=True)):
        np.testing.assert_array_equal(got.x, ref.x)
        if i < 3:
            assert got.byzantine and got.flipped
            np.testing.assert_array_equal(got.y, 9 - ref.y)
        else:
            assert not got.byzantine and not got.flipped
            np.testing.assert_array_equal(got.y, ref.y)
    result = sim.run()
    # the flipped clients still train (their updates are regular rows)
    assert result.rounds[-1].accepted == 10
    assert result.final_accuracy > 0.6


def test_iid_byzantine_data_leaves_the_whole_training_set_to_the_honest_clients() -> None:
    cfg = SimulationConfig(
        **{
            **BASE.to_dict(),
            "clients": 12,
            "byzantine": 2,
            "partition": "sorted",
            "byzantine_data": "iid",
        }
    )
    train, _ = load_dataset("digits")
    clients = build_clients(cfg, train)
    honest = [c for c in clients if not c.byzantine]
    assert [c.byzantine for c in clients] == [True, True] + [False] * 10
    # the 10 honest clients hold every training sample once, label-sorted (<= 2 classes)
    assert sum(len(c) for c in honest) == len(train)
    assert all(len(np.unique(c.y)) <= 2 for c in honest)
    assert np.array_equal(np.sort(np.concatenate([c.y for c in honest])), np.sort(train.y))
    # each attacker holds an IID shard: many classes, about 1/10 of the data, and they differ
    for c in clients[:2]:
        assert len(np.unique(c.y)) >= 8 and abs(len(c) - len(train) / 10) <= 1
    assert not np.array_equal(clients[0].y, clients[1].y)
    # the default layout gives the attackers the first sorted shards instead
    default = build_clients(
        SimulationConfig(**{**cfg.to_dict(), "byzantine_data": "partition"}), train
    )
    assert len(np.unique(default[0].y)) <= 2
    with pytest.raises(SimulationError, match="byzantine_data"):
        SimulationConfig(**{**cfg.to_dict(), "byzantine_data": "random"}).validate()


_SEEN: list[dict[str, Any]] = []


def _recording_attack(honest: np.ndarray, ctx: AttackContext) -> np.ndarray:
    _SEEN.append(
        {
            "honest": honest.copy(),
            "ctx": ctx,
            "own": None if ctx.own_updates is None else ctx.own_updates.copy(),
        }
    )
    return np.zeros((ctx.f, honest.shape[1]), dtype=honest.dtype)


def _register_recorder() -> str:
    name = "test_recording_attack"
    if name not in attack_names():
        register_attack(name, _recording_attack)
    return name


def test_omniscient_attack_sees_the_honest_updates_of_the_round() -> None:
    name = _register_recorder()
    _SEEN.clear()
    seen_rounds: list[RoundMetrics] = []
    run_simulation(
        SimulationConfig(**{**BASE.to_dict(), "rounds": 2, "byzantine": 2, "attack": name}),
        progress=seen_rounds.append,
    )
    assert [m.round for m in seen_rounds] == [1, 2]
    # one preflight call on dummy data, then one per round
    calls = [s for s in _SEEN if s["honest"].shape[1] > 8]
    assert len(calls) == 2
    first = calls[0]
    assert first["honest"].shape == (8, 64 * 128 + 128 + 1290)
    assert first["ctx"].n == 10 and first["ctx"].f == 2
    assert first["ctx"].byzantine.tolist() == [0, 1]
    assert first["ctx"].aggregator == "fedavg"
    # registered attacks that do not use them get no own updates
    assert first["own"] is None
    # The honest rows are the honest clients' model deltas of the round: client 2's is a
    # local fit from the initial model with that client's Generator.
    cfg = SimulationConfig(**{**BASE.to_dict(), "byzantine": 2, "attack": name})
    sim = Simulation(cfg)
    trainer = ModelSpec("mlp", (1, 8, 8), 10, seed=0).build()
    w0 = get_flat(trainer, param_spec(trainer))
    data = sim.clients[2]
    trainer.fit(
        data.x, data.y, epochs=1, batch_size=32, lr=0.1, rng=client_rng(0, 1, 2), steps=None
    )
    expected = get_flat(trainer, param_spec(trainer)) - w0
    np.testing.assert_array_equal(first["honest"][0], expected)


def test_fedsgd_with_worker_momentum_learns_and_vectorised_path_matches() -> None:
    cfg = dict(mode="fedsgd", lr=0.5, rounds=20, batch_size=64, eval_every=5)
    vec = run(**cfg)
    assert vec.final_accuracy > 0.8
    assert [r.round for r in vec.evaluated] == [5, 10, 15, 20]
    # one vectorised client_gradients call per chunk == one gradient() per client
    loop = run(**cfg, vectorize=False)
    np.testing.assert_allclose(
        [r.test_loss for r in vec.evaluated], [r.test_loss for r in loop.evaluated], rtol=1e-4
    )
    short = dict(cfg, rounds=3)
    assert run(**short, momentum=0.0).final_accuracy != run(**short).final_accuracy
    # momentum + centered clipping (the Karimireddy et al. defence) under ALIE
    cc = run(**cfg, byzantine=2, attack="alie", aggregator="cclip", agg_params={"tau": 1.0})
    assert cc.aggregator_rule == "centered_clipping"
    assert cc.final_accuracy > 0.8


def test_fltrust_uses_a_root_update_and_rejects_label_flippers() -> None:
    res = run(byzantine=3, attack="sign_flip", aggregator="fltrust")
    last = res.rounds[-1]
    assert last.byzantine_accepted == 0  # negative cosine with the root update -> trust 0
    assert last.score_byzantine_mean == 0.0
    assert res.final_accuracy > 0.75


def test_krum_reports_rejections() -> None:
    res = run(byzantine=2, attack="sign_flip", aggregator="krum", rounds=3)
    last = res.rounds[-1]
    assert last.accepted == 1 and last.rejected == 9 and last.byzantine_accepted == 0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"aggregator": "krum", "byzantine": 4}, r"krum: needs n >= 2f\+3, got n=10, f=4"),
        ({"aggregator": "bulyan", "byzantine": 2}, r"bulyan: needs n >= 4f\+3"),
        ({"attack": "nope", "byzantine": 1}, r"unknown attack 'nope'; known: none, label_flip"),
        ({"aggregator": "nope"}, r"unknown aggregator 'nope'.*aliases: cclip=centered_clipping"),
        ({"dataset": "imagenet"}, r"dataset 'imagenet': unknown dataset"),
        ({"model": "resnet"}, r"model 'resnet': unknown model"),
        ({"partition": "weird"}, r"partition 'weird'"),
        ({"byzantine": 10}, r"byzantine=10 must be smaller than clients=10"),
        ({"clients": 0}, r"clients must be an integer >= 1"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"lr": float("nan")}, r"lr must be a positive finite number"),
        ({"attack": "alie", "byzantine": 6}, r"attack 'alie': alie: z is undefined"),
        ({"attack": "gaussian", "byzantine": 1, "attack_params": {"sigma2": 1}}, r"sigma2"),
        ({"aggregator": "cclip", "agg_params": {"tau": -1.0}}, r"'tau' must be > 0"),
        ({"aggregator": "median", "agg_params": {"beta": 0.1}}, r"no parameter\(s\) beta"),
        ({"attack": "label_flip", "byzantine": 1, "attack_params": {"x": 1}}, r"no parameter"),
        ({"subset": 0}, r"subset must be an integer >= 1"),
    ],
)
def test_bad_config_gives_a_clear_error(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(SimulationError, match=match):
        Simulation(SimulationConfig(**{**BASE.to_dict(), **changes}))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_diverging_client_is_named() -> None:
    with pytest.raises(
        SimulationError, match=r"round 1: client \d+ \(honest\) produced a non-finite"
    ):
        run(lr=1e30, rounds=2)


def test_trainer_error_mid_run_names_round_and_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifer.compute.fl.trainers import NumpyMLP, TrainerError

    def broken_fit(self: NumpyMLP, *args: Any, **kwargs: Any) -> dict[str, float]:
        raise TrainerError("set_params: tensor 'fc1.weight': expected shape (64, 128)")

    monkeypatch.setattr(NumpyMLP, "fit", broken_fit)
    with pytest.raises(SimulationError, match=r"round 1: client 0: set_params: tensor 'fc1"):
        run(rounds=1)


def test_aliases_resolve_only_when_the_registry_lacks_them() -> None:
    assert resolve_aggregator("cclip") == "centered_clipping"
    assert resolve_aggregator("median") == "median"
    assert resolve_aggregator("pkg.mod:rule") == "pkg.mod:rule"


def test_config_dict_round_trip() -> None:
    cfg = SimulationConfig(subset=(100, 50), agg_params={"tau": 2.0}, mode="fedsgd")
    back = SimulationConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(SimulationError, match="unknown config field"):
        SimulationConfig.from_dict({"rounds": 3, "epochs": 2})


# ------------------------------------------------------------------------ Ray backend


def test_ray_backend_without_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(
        SimulationError, match=r"backend 'ray' needs Ray.*pip install 'cifer\[ray\]'"
    ):
        Simulation(SimulationConfig(**{**BASE.to_dict(), "backend": "ray"}))


def _fake_ray() -> types.ModuleType:
    """An in-process stand-in with Ray's API surface used by the simulator."""
    ray = types.ModuleType("ray")
    state = {"init": False, "calls": 0}

    class _Remote:
        def __init__(self, fn: Callable[..., Any]) -> None:
            self.fn = fn

        def remote(self, *args: Any) -> Any:
            state["calls"] += 1
            return self.fn(*args)

    ray.is_initialized = lambda: state["init"]  # type: ignore[attr-defined]
    ray.init = lambda **kw: state.update(init=True)  # type: ignore[attr-defined]
    ray.shutdown = lambda: state.update(init=False)  # type: ignore[attr-defined]
    ray.put = lambda obj: obj  # type: ignore[attr-defined]
    ray.get = lambda refs: list(refs)  # type: ignore[attr-defined]
    ray.remote = _Remote  # type: ignore[attr-defined]
    ray.state = state  # type: ignore[attr-defined]
    return ray


@pytest.mark.parametrize("mode", ["fedavg", "fedsgd"])
def test_ray_backend_matches_local(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    fake = _fake_ray()
    monkeypatch.setitem(sys.modules, "ray", fake)
    cfg = {**BASE.to_dict(), "rounds": 3, "mode": mode, "byzantine": 2, "attack": "alie"}
    remote = run_simulation(SimulationConfig(**{**cfg, "backend": "ray"}))
    local = run_simulation(SimulationConfig(**{**cfg, "vectorize": False}))
    assert fake.state["calls"] == 3 * 8  # honest clients only: ALIE replaces the others
    assert fake.state["init"] is False  # the simulator shut down the Ray it started
    a, b = remote.to_dict(), local.to_dict()
    a["config"].pop("backend")
    b["config"].pop("backend")
    a["config"].pop("vectorize")
    b["config"].pop("vectorize")
    assert dumps(a) == dumps(b)


# ------------------------------------------------------------------------ results files


def test_write_results_and_refuse_overwrite(tmp_path: Path, clean: SimulationResult) -> None:
    out = tmp_path / "run"
    written = write_results(clean, out)
    doc = json.loads((out / METRICS_FILE).read_text())
    assert doc["summary"]["final_accuracy"] == pytest.approx(clean.final_accuracy)
    assert doc["config"]["aggregator"] == "fedavg" and len(doc["rounds"]) == 10
    assert json.loads((out / TIMING_FILE).read_text())["rounds"][0]["round"] == 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written.plot is None and "pip install matplotlib" in written.notes[0]
    else:
        assert written.plot is not None
        assert written.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SimulationError, match=r"already exists and is not empty.*--force"):
        write_results(clean, out)
    write_results(clean, out, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SimulationError, match="not a directory"):
        prepare_out_dir(tmp_path / "file")


def test_plot_degrades_without_matplotlib(
    tmp_path: Path, clean: SimulationResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = write_results(clean, tmp_path / "run")
    assert written.plot is None
    assert written.notes == [
        "matplotlib is not installed, so no accuracy plot: pip install matplotlib"
    ]
    assert (tmp_path / "run" / METRICS_FILE).exists()

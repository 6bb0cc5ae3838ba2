"""``cifer bench simulate`` at toy size: our side's report on digits, the CLI, the clear
error when Flower is missing, and (slow, only with flwr and Ray) Flower's side."""

from __future__ import annotations

import statistics
import sys

import pytest
from typer.testing import CliRunner

from cifer.app.bench import simulate as sim
from cifer.app.cli.bench import app as bench_app

TINY = sim.Workload(dataset="digits", clients=5, rounds=3, local_steps=2)
CLI_TINY = ["simulate", "--dataset", "digits", "--clients", "4", "--rounds", "3", "--runs", "1"]


@pytest.fixture
def no_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every module the Flower side imports unimportable, as in CI."""
    for key, value in sim.QUIET_ENV.items():
        monkeypatch.setenv(key, value)
    for name in sim.FLOWER_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def test_ours_report_is_consistent() -> None:
    report = sim.run(TINY, runs=2, flower=False)
    assert report.flower == [] and report.flower_version is None
    assert report.num_params == 64 * 128 + 128 + 128 * 10 + 10  # the digits MLP
    assert len(report.ours) == 2
    for run in report.ours:
        assert [r.round for r in run.rounds] == [1, 2, 3]
        assert all(r.clients == TINY.clients for r in run.rounds)
        for r in run.rounds:
            assert 0 < r.train_s <= r.round_s
            assert r.overhead_s == pytest.approx(r.round_s - r.train_s, abs=1e-12)
        assert [r.round for r in run.measured] == [2, 3]  # round 1 is warm-up
        assert run.round_s == statistics.median(r.round_s for r in run.measured)
        assert run.overhead_s == statistics.median(r.overhead_s for r in run.measured)
        assert run.total_s >= sum(r.round_s for r in run.rounds)
        assert 0.0 < run.final_accuracy <= 1.0
    # same seed, same training: both runs end at the same model
    assert report.ours[0].final_accuracy == report.ours[1].final_accuracy
    assert report.median("ours", "overhead_s") == statistics.median(
        r.overhead_s for r in report.ours
    )
    assert report.ratio("overhead_s") is None and report.meets_target is None


def test_workload_record_round_trip_and_validation() -> None:
    assert sim.Workload.from_record(TINY.to_record()) == TINY
    with_dir = sim.Workload(data_dir="/data", clients=7)
    assert sim.Workload.from_record({**with_dir.to_record(), "server-round": 3}) == with_dir
    cfg = TINY.config()
    assert (cfg.aggregator, cfg.mode, cfg.local_steps, cfg.weighting) == (
        "fedavg",
        "fedavg",
        2,
        "samples",
    )
    with pytest.raises(ValueError, match="warm-up"):
        sim.Workload(rounds=1).validate()


def test_ratio_and_target() -> None:
    def engine(name: str, round_s: float, train_s: float) -> sim.EngineRun:
        rounds = [sim.RoundTiming(r, round_s, train_s, 2) for r in (1, 2, 3)]
        return sim.EngineRun(name, rounds, total_s=3 * round_s, final_accuracy=0.5)

    report = sim.Report(TINY, ours=[engine("ours", 0.30, 0.28)])
    report.flower = [engine("flower", 0.90, 0.30)]
    assert report.ratio("overhead_s") == pytest.approx(0.02 / 0.60)
    assert report.ratio("round_s") == pytest.approx(1 / 3)
    assert report.meets_target is True
    report.flower = [engine("flower", 0.31, 0.28)]
    assert report.meets_target is False


def test_flower_missing_gives_install_hint(
    no_flower: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(sim.FlowerUnavailable, match=r"pip install 'cifer\[bench\]'"):
        sim.load_flower()
    with pytest.raises(sim.FlowerUnavailable, match="--ours-only"):
        sim.run_flower(TINY)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("our side ran before the Flower check")

    monkeypatch.setattr(sim, "run_ours", must_not_run)
    with pytest.raises(sim.FlowerUnavailable):
        sim.run(TINY, runs=1)


def test_cli_without_flower_exits_with_the_hint(no_flower: None) -> None:
    res = CliRunner().invoke(bench_app, CLI_TINY)
    assert res.exit_code == 1, res.output
    assert "cifer[bench]" in res.output.replace("\n", "")


def test_cli_ours_only_prints_the_table() -> None:
    res = CliRunner().invoke(bench_app, [*CLI_TINY, "--ours-only"])
    assert res.exit_code == 0, res.output
    assert "machine:" in res.output and "cifer bench simulate" in res.output
    assert "ours" in res.output and "Flower" not in res.output.split("round =")[0]


def test_cli_rejects_too_few_rounds() -> None:
    args = ["simulate", "--dataset", "digits", "--rounds", "1", "--ours-only"]
    res = CliRunner().invoke(bench_app, args)
    assert res.exit_code == 2 and "warm-up" in res.output


@pytest.mark.slow
def test_flower_side_matches_ours() -> None:
    """Flower's engine on the same tiny workload: every client every round, the same
    training (same final accuracy) and a sane report. Starts Ray: about 15 s."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    workload = sim.Workload(dataset="digits", clients=4, rounds=2, local_steps=2)
    report = sim.run(workload, runs=1)
    (flower,) = report.flower
    assert [r.round for r in flower.rounds] == [1, 2]
    assert all(r.clients == 4 and 0 < r.train_s < r.round_s for r in flower.rounds)
    assert report.flower_version is not None
    gap = sim.final_accuracy_gap(report)
    assert gap is not None and gap <= 0.01
    assert report.ratio("overhead_s") is not None
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()

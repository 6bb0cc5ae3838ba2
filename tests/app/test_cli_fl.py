"""``cifer fl`` through typer's CliRunner: a small digits run, results files, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifer.app.cli.fl import app, parse_kv

SMALL = ["simulate", "--dataset", "digits", "--clients", "6", "--rounds", "3", "--quiet"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_simulate_writes_metrics_and_plot(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*SMALL, "--byzantine", "1", "--attack", "alie", "--aggregator", "cclip"]
    res = runner.invoke(app, [*args, "--agg-param", "tau=1.0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "final accuracy" in res.output and "centered_clipping" in res.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["aggregator"] == "cclip"
    assert doc["config"]["agg_params"] == {"tau": 1.0}
    assert doc["aggregator_rule"] == "centered_clipping"
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert 0.0 <= doc["summary"]["final_accuracy"] <= 1.0
    assert (out / "timing.json").exists()
    png = out / "accuracy.png"
    if has_matplotlib():
        assert png.read_bytes()[:4] == b"\x89PNG"
    else:
        assert not png.exists() and "pip install matplotlib" in res.output

    # the results directory is not overwritten without --force
    again = runner.invoke(app, [*SMALL, "--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.output and "--force" in again.output
    forced = runner.invoke(app, [*SMALL, "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "metrics.json").read_text())["config"]["aggregator"] == "fedavg"


def test_same_seed_same_metrics_file(runner: CliRunner, tmp_path: Path) -> None:
    for name in ("a", "b"):
        res = runner.invoke(app, [*SMALL, "--fedsgd", "--lr", "0.5", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    a = (tmp_path / "a" / "metrics.json").read_bytes()
    assert a == (tmp_path / "b" / "metrics.json").read_bytes()
    assert json.loads(a)["config"]["mode"] == "fedsgd"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--aggregator", "krum", "--byzantine", "2"], "krum: needs n >= 2f+3"),
        (["--aggregator", "nope"], "unknown aggregator 'nope'"),
        (["--attack", "nope", "--byzantine", "1"], "unknown attack 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--byzantine", "6"], "must be smaller than clients=6"),
        (["--agg-param", "tau=1"], "no parameter(s) tau"),
        (["--backend", "dask"], "backend must be 'local' or 'ray'"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    runner: CliRunner, extra: list[str], message: str
) -> None:
    res = runner.invoke(app, [*SMALL, *extra])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_diverging_run_exits_2(runner: CliRunner) -> None:
    res = runner.invoke(app, [*SMALL, "--lr", "1e30"])
    assert res.exit_code == 2
    assert "produced a non-finite update" in " ".join(res.output.split())


def test_ray_backend_without_ray_exits_2(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    res = runner.invoke(app, [*SMALL, "--backend", "ray"])
    assert res.exit_code == 2
    assert "needs Ray" in res.output


def test_bad_key_value_is_a_usage_error(runner: CliRunner) -> None:
    res = runner.invoke(app, [*SMALL, "--agg-param", "tau"])
    assert res.exit_code == 2
    assert "expected key=value" in res.output


def test_parse_kv_types() -> None:
    parsed = parse_kv(["a=1", "b=0.5", "c=true", "d=median", "e=null", 'f="2"', "g=[1]"], "--x")
    assert parsed == {"a": 1, "b": 0.5, "c": True, "d": "median", "e": None, "f": "2", "g": "[1]"}


def test_no_matplotlib_still_writes_json(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = runner.invoke(app, [*SMALL, "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "matplotlib is not installed" in res.output
    assert (tmp_path / "r" / "metrics.json").exists()
    assert not (tmp_path / "r" / "accuracy.png").exists()


def test_list(runner: CliRunner) -> None:
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("digits", "dirichlet:ALPHA", "cnn", "label_flip", "trimmed_mean", "cclip"):
        assert name in res.output

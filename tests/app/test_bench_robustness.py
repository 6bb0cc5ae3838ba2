"""cifer bench robustness: the grid, resumable results, the table and the target checks.

Runs use scikit-learn's digits and the NumPy MLP for a few rounds, so they need neither
MNIST nor torch; the full benchmark is a separate command (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifer.app.bench import robustness as rb
from cifer.app.cli.main import app

TINY = rb.Settings(rounds=4, model="logreg", dataset="digits", eval_every=2)


def test_grid_matches_the_issue_layout() -> None:
    cells = rb.grid()
    rows = Counter(c.row for c in cells)
    # 7 paper rules x {with, without bucketing} at momentum 0.9, one seed each
    for rule in rb.PAPER_RULES:
        assert rows[(rule, False, 0.9)] == rows[(rule, True, 0.9)] == 7
    # the default rule with three seeds under every attack, and the momentum-0 rows
    assert rows[(*rb.DEFAULT_RULE, 0.9)] == 21
    assert {c.seed for c in cells if c.row == (*rb.DEFAULT_RULE, 0.9)} == {0, 1, 2}
    assert rows[("Krum", False, 0.0)] == rows[("CClip", False, 0.0)] == 7
    assert len(cells) == 7 * 14 + 21 + 14
    assert len({c.key(TINY) for c in cells}) == len(cells)
    cfg = rb.simulation_config(rb.Cell("IPM", "Krum", True, 0.9, 0), TINY)
    assert cfg.aggregator == "bucketing" and cfg.agg_params["inner"] == "krum"
    assert cfg.attack == "ipm" and cfg.attack_params == {"epsilon": 0.1}
    assert cfg.byzantine_data == "iid" and cfg.partition == "sorted"
    # the paper's lr 0.01 in the heavy-ball form is 0.1 in ours at beta = 0.9
    assert cfg.lr == pytest.approx(0.1) and cfg.momentum == 0.9
    plain = rb.simulation_config(rb.Cell("BF", "Krum", False, 0.0, 0), TINY)
    assert plain.aggregator == "krum" and plain.lr == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attacks": ["BF", "nope"]}, "unknown attack"),
        ({"rules": ["Krum", "Zeno"]}, "unknown rule"),
        ({"rules": []}, "no rule"),
        ({"seeds": 0}, "seeds"),
        ({"momentum0_rules": ["x"]}, "unknown rule"),
    ],
)
def test_grid_rejects_bad_names(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(rb.BenchError, match=match):
        rb.grid(**kwargs)  # type: ignore[arg-type]


def test_run_grid_appends_each_result_and_resumes(tmp_path: Path) -> None:
    cells = rb.grid(["BF", "ALIE"], ["FedAvg", "CM"], seeds=1, momentum0_rules=())
    seen: list[tuple[str, int, int]] = []
    results = rb.run_grid(cells, TINY, tmp_path, on_done=lambda r, n, t: seen.append((r.key, n, t)))
    assert [r.cell for r in results] == cells
    assert [n for _, n, _ in seen] == list(range(1, len(cells) + 1))
    assert all(r.error is None and 0 <= (r.final_accuracy or -1) <= 1 for r in results)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(cells)
    assert json.loads(lines[0])["curve"][-1][0] == TINY.rounds
    # a torn last line (a crash mid-write) is skipped; finished runs are not redone
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write('{"key": "torn')
    seen.clear()
    again = rb.run_grid(cells, TINY, tmp_path, on_done=lambda r, n, t: seen.append((r.key, n, t)))
    assert seen == [] and [r.final_accuracy for r in again] == [r.final_accuracy for r in results]
    # other settings are other keys: nothing is reused across them
    other = rb.Settings(rounds=3, model="logreg", dataset="digits", eval_every=3)
    rb.run_grid(cells[:1], other, tmp_path, on_done=lambda r, n, t: seen.append((r.key, n, t)))
    assert len(seen) == 1


def test_a_failing_run_is_recorded_not_raised(tmp_path: Path) -> None:
    bad = rb.Settings(rounds=2, model="no_such_model", dataset="digits")
    cell = rb.Cell("BF", "FedAvg", False, 0.9, 0)
    [res] = rb.run_grid([cell], bad, tmp_path)
    assert res.final_accuracy is None and res.error and "no_such_model" in res.error
    # errors are kept in the file but not treated as done: a rerun retries them
    assert rb.load_results(tmp_path / "results.jsonl") == {}
    row = rb.table_rows([res])[0]
    assert row.cell_text("BF") == "error"


def _result(rule: str, bucketing: bool, attack: str, acc: float, seed: int = 0) -> rb.RunResult:
    cell = rb.Cell(attack, rule, bucketing, 0.9, seed)
    return rb.RunResult(
        key=cell.key(TINY),
        attack=attack,
        rule=rule,
        bucketing=bucketing,
        momentum=0.9,
        seed=seed,
        final_accuracy=acc,
        best_accuracy=acc,
    )


def test_table_and_verdict() -> None:
    rule, bucket = rb.DEFAULT_RULE
    results = [
        _result(rule, bucket, "BF", 0.98, 0),
        _result(rule, bucket, "BF", 0.96, 1),
        _result(rule, bucket, "ALIE", 0.975),
        _result("FedAvg", False, "BF", 0.10),
        _result("FedAvg", False, "ALIE", 0.90),
        _result("CClip", True, "BF", 0.5),
    ]
    rows = rb.table_rows(results)
    assert rows[0].label == f"{rule} + bucketing s=2"
    assert rows[0].mean("BF") == pytest.approx(0.97)
    assert rows[0].cell_text("BF") == "97.0 ± 1.4 (2 seeds)"
    md = rb.markdown(rows, ["BF", "ALIE"])
    assert "| FedAvg | 0.9 | 10.0 | 90.0 |" in md
    assert "97.8-98.2" in md  # the paper's CClip range sits on the CClip row
    v = rb.verdict(rows, ["BF", "ALIE"])
    assert v.default_min == pytest.approx(0.97) and v.default_ok
    assert v.fedavg_collapses == {"BF": True, "ALIE": False} and not v.ok
    lower = rb.verdict(rows, ["BF", "ALIE"], target=0.975)
    assert not lower.default_ok


def test_cli_rejects_bad_names_with_a_clear_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        app, ["bench", "robustness", "--out", str(tmp_path), "--attacks", "BF,XX"]
    )
    assert out.exit_code == 2 and "unknown attack" in out.output


def test_cli_runs_a_small_grid_and_writes_the_table(tmp_path: Path) -> None:
    args = ["bench", "robustness", "--out", str(tmp_path), "--dataset", "digits"]
    args += ["--model", "logreg", "--rounds", "3", "--attacks", "BF,IPM", "--seeds", "1"]
    args += ["--rules", "FedAvg,CClip-auto", "--momentum0-rules", "", "--jobs", "1"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    table = (tmp_path / "table.md").read_text()
    assert "| CClip-auto + bucketing s=2 | 0.9 |" in table and "| FedAvg | 0.9 |" in table
    assert "FedAvg under BF" in out.output and "default rule" in out.output

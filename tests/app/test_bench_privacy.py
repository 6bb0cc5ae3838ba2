"""cifer bench privacy: a smoke run at tiny sizes (the report's structure and each mode's
result); the real benchmark is recorded in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifer.app.bench import privacy as pv
from cifer.app.cli.main import app

N, D = 5, 300


def test_secagg_unmasks_exactly_the_quantized_mean() -> None:
    updates = pv.make_updates(N, D, seed=1)
    params = pv.secagg_params(N)
    assert (params.degree, params.threshold) == (4, 3)  # harary_degree(5), k // 2 + 1
    q = params.quantizer()
    for dropped in (frozenset(), frozenset({2})):
        res = pv.secagg_round(updates, params, dropped=dropped)
        included = [i for i in range(N) if i not in dropped]
        assert res.included == tuple(included)
        levels = pv.quantized_sum(updates, params, included)
        want = (q.dequantize(levels) / len(included)).astype(np.float32)
        np.testing.assert_array_equal(res.mean, want)
        t = res.timing
        assert t.exact is True
        assert t.max_abs_err <= 1.0 / q.scale  # quantization error only
        assert t.round_s == pytest.approx(t.client_s + t.server_s)
        assert t.bytes_up > 4 * D and t.bytes_down > 4 * D


def test_plain_and_ckks_rounds_average_the_updates() -> None:
    updates = pv.make_updates(N, D, seed=2)
    want = updates.astype(np.float64).mean(axis=0)
    plain = pv.plain_round(updates)
    np.testing.assert_allclose(plain.mean, want, atol=1e-7)
    assert plain.timing.bytes_up == plain.timing.bytes_down > 4 * D
    ckks = pv.ckks_round(updates, pv.ckks_setup(N))
    np.testing.assert_allclose(ckks.mean, want, atol=1e-6)
    assert ckks.timing.bytes_up > 100 * D  # one ciphertext of 8192 slots


def test_run_reports_every_row_with_medians_and_json() -> None:
    seen: list[tuple[str, int, int]] = []
    report = pv.run(
        [N],
        [D],
        runs=2,
        flower=False,
        progress=lambda text, done, total: seen.append((text, done, total)),
    )
    (cfg,) = report.configs
    assert (cfg.n, cfg.d, cfg.dropped) == (N, D, 1)
    assert list(cfg.rows) == ["plain", "secagg", "secagg-drop", "ckks"]
    for row in cfg.rows.values():
        assert len(row.runs) == 2 and row.note is None
    assert cfg.ratio("plain") == pytest.approx(1.0)
    ratio = cfg.ratio("secagg")
    assert ratio is not None and ratio > 0
    assert cfg.ckks_setup_s is not None and cfg.ckks_setup_s > 0
    assert report.verdicts() == []  # the target configuration (50, 100k) did not run
    assert seen[-1][1:] == (2, 2)
    raw = json.loads(json.dumps(report.to_json()))
    med = raw["configs"][0]["medians"]["secagg-drop"]
    assert med["round_s"] > 0 and med["ratio_to_plain"] > 0
    assert len(raw["configs"][0]["rows"]["ckks"]["runs"]) == 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(pv.BenchError, match="unknown modes"):
        pv.parse_modes("plain,tee")
    with pytest.raises(pv.BenchError, match="integers"):
        pv.parse_ints("10,many", "--clients")
    with pytest.raises(pv.BenchError, match="at least 3 clients"):
        pv.run([2], [10], runs=1, flower=False)


def test_cli_prints_the_table_and_writes_raw_timings(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "privacy",
            "--clients",
            "4",
            "--params",
            "200",
            "--runs",
            "1",
            "--modes",
            "plain,secagg",
            "--no-flower",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "secagg-drop" in result.output and "unmasked sum exact: True" in result.output
    raw = json.loads(out.read_text())
    assert set(raw["configs"][0]["rows"]) == {"plain", "secagg", "secagg-drop"}


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="flwr not installed")
def test_flower_secaggplus_runs_in_process_next_to_its_plain_round() -> None:
    report = pv.run([N], [D], runs=1, modes=["plain", "secagg"], flower=True)
    (cfg,) = report.configs
    for name in ("flower-plain", "flower-secagg", "flower-secagg-drop"):
        (t,) = cfg.rows[name].runs
        assert t.max_abs_err < 1e-4  # Flower's 2^22-level quantization over [-8, 8]
        assert t.bytes_up > 4 * D and t.client_s > 0 and t.server_s > 0
    assert "flwr" in report.versions

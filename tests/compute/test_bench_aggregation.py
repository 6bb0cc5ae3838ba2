"""The aggregation benchmark at toy size: inputs, our rules, and agreement with Flower and
byzfl where their definitions agree with ours (skipped when they are not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cifer.app.bench import aggregation as bench
from cifer.compute.fl.aggregators.coordinate import mean_around_median

# n >= 4f + 3 for Bulyan, and f = 3 gives two identical ALIE updates: the case where
# Bulyan's stage 2 once kept every copy of a repeated value (see the test below).
N, F, D = 15, 3, 1000

needs_flower = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None,
    reason="flwr not installed (pip install -e '.[bench]')",
)
needs_byzfl = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("byzfl", "torch", "scipy")),
    reason="byzfl (with torch and scipy) not installed",
)


def test_inputs_layout() -> None:
    inp = bench.make_inputs(N, F, D, seed=1)
    x = inp.updates
    assert x.shape == (N, D) and x.dtype == np.float32
    assert inp.n_alie == 2
    np.testing.assert_array_equal(x[0], x[1])  # ALIE attackers send the same update
    assert not np.array_equal(x[1], x[2])  # then the large-noise one
    assert len(inp.layers) == N and all(len(c) == bench.NUM_LAYERS for c in inp.layers)
    assert sum(layer.size for layer in inp.layers[0]) == D
    np.testing.assert_array_equal(bench.pack(inp.layers, D), x)
    np.testing.assert_array_equal(bench.make_inputs(N, F, D, seed=1).updates, x)
    assert [b - a for a, b in bench.layer_bounds(10)] == [2, 3, 2, 3]


def test_ours_only_runs_every_rule() -> None:
    report = bench.run(N, F, D, runs=2, use_flower=False, use_byzfl=False)
    rules = [row.rule for row in report.rows]
    assert rules == [*bench.FLOWER_RULES, *bench.OURS_ONLY]
    for row in report.rows:
        assert len(row.ours_s) == 2 and row.ours > 0
        assert len(row.ours_one_thread_s) == 2 and row.ours_one_thread is not None
        assert row.flower is None and row.ratio is None and row.meets_target is None
    assert not report.skipped and len(report.pack_s) == 2


def test_rules_outside_their_bounds_are_skipped() -> None:
    report = bench.run(9, 2, 50, runs=1, use_flower=False, use_byzfl=False)
    assert [s.split(":")[0] for s in report.skipped] == ["bulyan"]


def test_bulyan_stage_two_with_a_repeated_value() -> None:
    # median 0; the 5 values nearest it are 0, 0.2, 0.5, 0.9 and one copy of -1. Every
    # window of 5 has its farthest member at distance 1, so choosing by that alone took
    # the lowest window, three copies of -1.
    row = np.array([[-1.0, -1.0, -1.0, 0.0, 0.2, 0.5, 0.9]])
    np.testing.assert_allclose(mean_around_median(row, 5), [(-1 + 0 + 0.2 + 0.5 + 0.9) / 5])
    # A tie in distance across the median goes to the lower value.
    np.testing.assert_allclose(mean_around_median(np.array([[-1.0, 0.0, 1.0]]), 2), [-0.5])


@needs_flower
def test_agrees_with_flower() -> None:
    report = bench.run(N, F, D, runs=1, use_byzfl=False)
    assert report.flower_version is not None
    rows = {row.rule: row for row in report.rows}
    for rule in bench.FLOWER_RULES:
        agreement = rows[rule].flower
        assert agreement is not None and agreement.ok, (rule, agreement)
        assert rows[rule].ratio is not None
    assert rows["krum"].flower is not None and rows["krum"].flower.max_abs_diff == 0.0


@needs_byzfl
def test_agrees_with_byzfl() -> None:
    report = bench.run(N, F, D, runs=1, use_flower=False)
    rows = {row.rule: row for row in report.rows}
    for rule in ("fedavg", "krum", "multi_krum", "median", "trimmed_mean", "centered_clipping"):
        agreement = rows[rule].byzfl
        assert agreement is not None and agreement.ok, (rule, agreement)
    gm = rows["geometric_median"].byzfl
    assert gm is not None and gm.ok is None and gm.note.startswith("differs")
    assert report.torch_median is not None


@needs_byzfl
def test_byzfl_torch_median_on_even_n() -> None:
    # With n even, byzfl 0.0.11's torch backend (torch.quantile, q=0.5) returns the
    # midpoint of the two middle values, like numpy and us, not torch.median's lower one.
    tm = bench.byzfl_torch_median(bench.make_inputs(14, 2, D, seed=0))
    assert tm is not None and tm.vs_ours.ok
    assert not tm.vs_lower_median.ok

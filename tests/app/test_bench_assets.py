"""`cifer bench assets` on a tiny chain: the generated lineage and the proof path are real."""

from __future__ import annotations

from cifer.app.bench.assets import run_assets_bench


def test_small_assets_bench_builds_lineage_and_verifies_a_proof() -> None:
    res = run_assets_bench(assets=60, per_block=20, depth=10, samples=2)
    assert res.assets == 60
    assert res.blocks == 60 // 20 + 1  # plus the block whose header commits to the last
    # a chain's last asset reaches at least its own 9 predecessors
    assert res.ancestors_found >= 9
    assert res.descendants_found >= 9
    # the light client verified every header up to the one after the record, 3 sigs each
    assert res.light_headers == res.blocks
    assert res.light_signatures >= 3 * res.light_headers
    assert set(res.query_ms) >= {"contributors", "history"}
    assert all(ms >= 0 for ms in res.query_ms.values())

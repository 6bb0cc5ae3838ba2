"""The benchmark code runs and measures what it claims (tiny sizes; figures are in docs)."""

from __future__ import annotations

from cifer.app.bench.consensus import run_bench, run_heights, signed_transfers


def test_transfers_are_one_kib_and_all_get_committed() -> None:
    txs = signed_transfers(20, 5, seed=1)
    assert all(1000 <= len(t) <= 1024 for t in txs)
    r = run_bench(60, n_accounts=10)
    assert r.txs == 60 and r.heights >= 1 and r.tx_per_s > 0


def test_empty_block_rate_counts_heights() -> None:
    r = run_heights(5)
    assert r.heights >= 5 and r.txs == 0

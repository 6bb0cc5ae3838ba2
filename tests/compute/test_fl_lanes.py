"""Column lanes: the aggregation passes split d into fixed lanes that may run on two
threads; results must not depend on how many threads ran them, and errors found in a
lane must be the same errors, naming the same client."""

from __future__ import annotations

import numpy as np
import pytest

from cifer.compute.fl.aggregators import AggContext, AggregationError, aggregate, base
from cifer.compute.fl.aggregators.base import (
    BLOCK,
    LANES,
    SORT_BLOCK,
    column_blocks,
    combine,
    gram,
    lane_blocks,
    lane_threads,
    run_lanes,
)

RULES = [
    ("fedavg", {}),
    ("krum", {}),
    ("multi_krum", {}),
    ("bulyan", {}),
    ("median", {}),
    ("trimmed_mean", {}),
    ("geometric_median", {}),
    ("centered_clipping", {}),
    ("centered_clipping", {"tau": "auto"}),
    ("fltrust", {}),
    ("reputation", {}),
    ("bucketing", {"inner": "median", "bucket_size": 2}),
    ("bucketing", {"inner": "trimmed_mean", "bucket_size": 2}),
]


@pytest.mark.parametrize(
    ("d", "block"),
    [
        (1, BLOCK),
        (BLOCK, BLOCK),
        (BLOCK + 1, BLOCK),
        (5 * BLOCK + 7, BLOCK),
        (3 * SORT_BLOCK, SORT_BLOCK),
    ],
)
def test_lanes_cover_the_blocks_in_order_and_evenly(d: int, block: int) -> None:
    lanes = lane_blocks(d, block)
    assert 1 <= len(lanes) <= LANES
    assert [sl for lane in lanes for sl in lane] == list(column_blocks(d, block))
    sizes = [len(lane) for lane in lanes]
    assert max(sizes) - min(sizes) <= 1
    assert all(sizes)


def _updates(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d).astype(np.float32) + rng.standard_normal((n, d), dtype=np.float32)
    x[:2] *= 50.0  # two far-off attackers
    return x


def _ctx(x: np.ndarray) -> AggContext:
    return AggContext(
        f=2,
        previous=np.full(x.shape[1], 0.05, dtype=np.float32),
        root_update=x[2:].mean(axis=0),
        reputation=np.full(x.shape[0], 500_000, dtype=np.int64),
        rng=np.random.default_rng(7),
    )


@pytest.mark.parametrize(("rule", "params"), RULES, ids=lambda v: str(v))
def test_every_rule_is_bit_identical_with_one_thread_or_two(
    rule: str, params: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _updates(1, 11, 2 * SORT_BLOCK + 3)  # several Gram blocks and two sort blocks
    w = np.arange(1, 12, dtype=np.float64)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("CIFER_AGG_THREADS", threads)
        ctx = _ctx(x)
        if params:
            ctx = ctx.with_(params=params)
        results.append(aggregate(rule, x, w, ctx))
    one, two = results
    assert one.aggregate.tobytes() == two.aggregate.tobytes()
    assert np.array_equal(one.accepted, two.accepted)
    assert np.asarray(one.scores).tobytes() == np.asarray(two.scores).tobytes()


def test_lanes_really_run_on_a_second_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    seen = run_lanes(lambda _blocks: threading.get_ident(), 4 * BLOCK)
    assert len(seen) == LANES and len(set(seen)) == LANES
    monkeypatch.setenv("CIFER_AGG_THREADS", "1")
    seen = run_lanes(lambda _blocks: threading.get_ident(), 4 * BLOCK)
    assert set(seen) == {threading.get_ident()}


def test_gram_and_combine_agree_with_float64_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    x = _updates(2, 7, 3 * BLOCK + 11)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(gram(x), x64 @ x64.T, rtol=1e-12)
    coef = np.array([0.0, 0.5, 0.25, 0.0, 0.125, 0.125, 0.0])
    np.testing.assert_allclose(combine(x, coef), coef @ x64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["krum", "median", "trimmed_mean", "centered_clipping"])
def test_a_nan_in_the_second_lane_names_the_client(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _updates(3, 9, 2 * SORT_BLOCK + 3)
    x[6, -5] = np.nan  # in the last block, so in the second lane of every pass
    messages = []
    for threads in ("1", "2"):
        monkeypatch.setenv("CIFER_AGG_THREADS", threads)
        with pytest.raises(AggregationError) as err:
            aggregate(rule, x, np.ones(9), _ctx(x))
        assert err.value.client == 6
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "client 6" in messages[0] and "NaN" in messages[0]


def test_an_error_in_the_first_lane_waits_for_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    done = []

    def work(blocks: list[slice]) -> int:
        if blocks[0].start == 0:
            raise AggregationError("lane 0 failed")
        import time

        time.sleep(0.05)
        done.append(blocks[0].start)
        return 1

    with pytest.raises(AggregationError, match="lane 0 failed"):
        run_lanes(work, 4 * BLOCK)
    assert done == [2 * BLOCK]  # the second lane had finished when the error surfaced


def test_thread_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFER_AGG_THREADS", "two")
    with pytest.raises(AggregationError, match="CIFER_AGG_THREADS must be an integer"):
        lane_threads()
    monkeypatch.setenv("CIFER_AGG_THREADS", "0")
    assert lane_threads() == 1
    monkeypatch.setenv("CIFER_AGG_THREADS", "16")
    assert lane_threads() == LANES
    monkeypatch.delenv("CIFER_AGG_THREADS")
    assert 1 <= base.lane_threads() <= LANES


def test_lanes_inside_a_lane_run_in_sequence_instead_of_deadlocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    x = _updates(4, 6, 4 * BLOCK)

    def outer(_blocks: list[slice]) -> bytes:
        # An aggregation started from inside a lane (a plug-in rule could do this).
        return bytes(gram(x).tobytes())

    out: list[list[bytes]] = []
    t = threading.Thread(target=lambda: out.append(run_lanes(outer, 4 * BLOCK)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "nested lanes deadlocked"
    assert out[0][0] == out[0][1] == gram(x).tobytes()


def test_a_forked_child_gets_its_own_lane_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    x = _updates(5, 6, 4 * BLOCK)
    expected = gram(x)  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(gram(x).tobytes()))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert got == expected.tobytes()

"""Column lanes: the aggregation passes split d into fixed lanes that may run on two
threads; results must not depend on how many threads ran them, and errors found in a
lane must be the same errors, naming the same client."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cifer.compute.fl.aggregators import AggContext, AggregationError, aggregate, base
from cifer.compute.fl.aggregators.base import (
    BLOCK,
    GRAM_BLOCK,
    LANES,
    SORT_BLOCK,
    column_blocks,
    combine,
    gram,
    lane_blocks,
    lane_threads,
    row_sq_norms,
    run_lanes,
)
from cifer.compute.fl.aggregators.bucketing import bucket_means

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

    def ident(_blocks: list[slice]) -> int:
        time.sleep(0.2)  # lane 0 outlasts the pool thread's start, so lane 1 runs there
        return threading.get_ident()

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    seen = run_lanes(ident, 4 * BLOCK)
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


@pytest.mark.parametrize("rule", ["krum", "median", "trimmed_mean", "bulyan", "fedavg"])
def test_a_nan_in_the_second_lane_names_the_client(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _updates(3, 11, 2 * SORT_BLOCK + 3)
    x[6, -5] = np.nan  # in the last block, so in the second lane of every pass
    messages = []
    for threads in ("1", "2"):
        monkeypatch.setenv("CIFER_AGG_THREADS", threads)
        with pytest.raises(AggregationError) as err:
            aggregate(rule, x, np.ones(11), _ctx(x))
        assert err.value.client == 6
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "client 6" in messages[0] and "NaN" in messages[0]


def test_an_error_in_the_first_lane_waits_for_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    done = []

    def work(blocks: list[slice]) -> int:

        if blocks[0].start == 0:
            time.sleep(0.3)  # the pool thread has started lane 1 by then
            raise AggregationError("lane 0 failed")
        time.sleep(0.1)
        done.append(blocks[0].start)
        return 1

    with pytest.raises(AggregationError, match="lane 0 failed"):
        run_lanes(work, 4 * BLOCK)
    assert done == [2 * BLOCK]  # the second lane had finished when the error surfaced


def test_thread_setting_is_checked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A typo in the environment must not fail aggregations: it is logged, default used.
    monkeypatch.setenv("CIFER_AGG_THREADS", "two")
    with caplog.at_level("WARNING"):
        assert 1 <= lane_threads() <= LANES
    assert "CIFER_AGG_THREADS must be an integer, got 'two'" in caplog.text
    monkeypatch.setenv("CIFER_AGG_THREADS", "0")
    assert lane_threads() == 1
    monkeypatch.setenv("CIFER_AGG_THREADS", "16")
    assert lane_threads() == LANES
    monkeypatch.delenv("CIFER_AGG_THREADS")
    assert 1 <= base.lane_threads() <= LANES


def test_lanes_inside_a_lane_run_in_sequence_instead_of_deadlocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

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


# Independent references at sizes that span both lanes: the one-thread/two-thread
# comparison alone cannot see a lane that computes the wrong thing both ways.
SIZES = [7, GRAM_BLOCK + 1, 3 * BLOCK, 2 * SORT_BLOCK, 3 * SORT_BLOCK + 5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", SIZES)
def test_passes_match_plain_numpy_references(d: int, dtype: type) -> None:
    x = _updates(d % 97, 11, d).astype(dtype)
    x64 = x.astype(np.float64)
    ctx = _ctx(x)
    np.testing.assert_allclose(gram(x), x64 @ x64.T, rtol=1e-12)
    np.testing.assert_allclose(row_sq_norms(x), (x64 * x64).sum(axis=1), rtol=1e-12)
    med = aggregate("median", x, None, ctx).aggregate
    np.testing.assert_array_equal(med, np.median(x64, axis=0).astype(dtype))
    tm = aggregate("trimmed_mean", x, None, ctx).aggregate  # k = f = 2
    ref = np.sort(x64, axis=0)[2:-2].mean(axis=0)
    np.testing.assert_allclose(tm, ref.astype(dtype), rtol=1e-6, atol=1e-6)
    perm = np.random.default_rng(1).permutation(11).astype(np.intp)
    means = bucket_means(x, perm, 2)
    ref_b = np.vstack([x64[perm[:10]].reshape(5, 2, d).mean(axis=1), x64[perm[10:]]])
    np.testing.assert_allclose(means, ref_b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [3 * SORT_BLOCK + 5, 2 * SORT_BLOCK])
def test_bulyan_fills_every_column_of_both_lanes(d: int) -> None:
    x = _updates(9, 11, d)  # n = 11 >= 4f + 3 with f = 2
    res = aggregate("bulyan", x, None, _ctx(x))
    sel = np.array(sorted(res.info["selected"]), dtype=np.intp)
    beta = int(res.info["beta"])
    s = np.sort(x[sel].astype(np.float64), axis=0)
    med = np.median(s, axis=0)
    # beta values nearest the median, per coordinate (no ties in continuous data)
    nearest = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
    ref = np.take_along_axis(s, nearest, axis=0).mean(axis=0)
    np.testing.assert_allclose(res.aggregate, ref.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_concurrent_callers_get_the_serial_results(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    x = _updates(11, 11, 2 * SORT_BLOCK + 3)
    rules = ["krum", "median", "trimmed_mean", "centered_clipping", "fedavg", "bulyan"]
    serial = {r: aggregate(r, x, None, _ctx(x)).aggregate.tobytes() for r in rules}
    got: dict[tuple[int, str], bytes] = {}

    def caller(k: int) -> None:
        for r in rules:
            got[(k, r)] = aggregate(r, x, None, _ctx(x)).aggregate.tobytes()

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "concurrent aggregation hung"
    assert got == {(k, r): serial[r] for k in range(4) for r in rules}


def test_a_lane_the_pool_has_not_started_runs_on_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    release = threading.Event()
    blocker = base._pool().submit(release.wait, 60)  # another caller holds the pool thread
    try:
        seen = run_lanes(lambda _blocks: threading.get_ident(), 4 * BLOCK)
        assert seen == [threading.get_ident()] * LANES  # did not wait for the busy thread
    finally:
        release.set()
        blocker.result(timeout=60)


def test_the_callers_errstate_applies_in_the_pool_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.full((4, 4 * GRAM_BLOCK), 1.0, dtype=np.float64)
    x[:, -3:] = 1e200  # squares overflow in the second lane only
    for threads in ("1", "2"):
        monkeypatch.setenv("CIFER_AGG_THREADS", threads)
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            gram(x)


def test_pool_gone_at_shutdown_falls_back_to_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed:
        def submit(self, *_args: object, **_kwargs: object) -> None:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setenv("CIFER_AGG_THREADS", "2")
    x = _updates(12, 6, 4 * GRAM_BLOCK)
    expected = gram(x)
    monkeypatch.setattr(base, "_pool", lambda: Closed())
    assert gram(x).tobytes() == expected.tobytes()


def test_blas_limit_holds_until_the_last_concurrent_caller_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in controller: what matters is when the limit is set and restored.
    # (OpenBLAS itself ignores thread-count changes from other threads once the main
    # thread has made one, so the real library cannot show this from worker threads.)
    events: list[str] = []

    class Limiter:
        def restore_original_limits(self) -> None:
            events.append("restore")

    class Controller:
        def limit(self, *, limits: int, user_api: str) -> Limiter:
            assert (limits, user_api) == (1, "blas")
            events.append("limit")
            return Limiter()

    monkeypatch.setattr(base, "_controller", Controller())
    b_in, a_out, b_done = threading.Event(), threading.Event(), threading.Event()
    seen_in_b: list[list[str]] = []

    def caller_b() -> None:
        with base.blas_single_thread():
            b_in.set()
            a_out.wait(30)  # A leaves while B is still inside
            seen_in_b.append(list(events))
        b_done.set()

    tb = threading.Thread(target=caller_b)
    with base.blas_single_thread():
        tb.start()
        b_in.wait(30)
    a_out.set()
    tb.join(30)
    assert b_done.is_set()
    assert seen_in_b == [["limit"]]  # still limited after A left
    assert events == ["limit", "restore"]  # restored once, by the last caller out
    assert base._blas_users == 0

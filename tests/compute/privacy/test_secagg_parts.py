"""The pieces under secure aggregation: the SecAgg+ neighbour graph, Shamir sharing over
GF(2^521 - 1), fixed-point quantization and the seeded PRG."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from cifer.compute.privacy import shamir
from cifer.compute.privacy.prg import MaskExpander, expand, group_dtype, reduce
from cifer.compute.privacy.quantize import QuantizationError, Quantizer, from_group, to_group
from cifer.compute.privacy.secagg import (
    ParamsError,
    SecAggParams,
    harary_degree,
    max_dropouts,
    neighbour_graph,
)

# ---------------------------------------------------------------------------- graph


def _connected_without(nb: tuple[tuple[int, ...], ...], removed: set[int]) -> bool:
    nodes = set(range(len(nb))) - removed
    start = min(nodes)
    seen, stack = {start}, [start]
    while stack:
        for j in nb[stack.pop()]:
            if j in nodes and j not in seen:
                seen.add(j)
                stack.append(j)
    return seen == nodes


@pytest.mark.parametrize(("n", "k"), [(10, 4), (10, 5), (11, 6), (50, 12), (7, 6), (8, 7), (9, 2)])
def test_graph_is_deterministic_symmetric_and_regular(n: int, k: int) -> None:
    seed = bytes([n, k]) * 16
    nb = neighbour_graph(n, k, seed)
    assert nb == neighbour_graph(n, k, seed)
    assert all(len(row) == k and i not in row for i, row in enumerate(nb))
    assert all(i in nb[j] for i, row in enumerate(nb) for j in row)
    assert all(list(row) == sorted(row) for row in nb)


def test_graph_depends_on_the_round_seed_and_full_degree_is_classic_secagg() -> None:
    assert neighbour_graph(30, 6, bytes(32)) != neighbour_graph(30, 6, b"\x01" * 32)
    for n in (7, 8):
        nb = neighbour_graph(n, n - 1, bytes(32))
        assert all(set(row) == set(range(n)) - {i} for i, row in enumerate(nb))


@pytest.mark.parametrize(("n", "k"), [(9, 4), (10, 5), (12, 6)])
def test_graph_survives_any_k_minus_1_removals(n: int, k: int) -> None:
    """k-connectivity is why at most k - t dropouts leave the survivors connected."""
    nb = neighbour_graph(n, k, b"\x07" * 32)
    for removed in itertools.combinations(range(n), k - 1):
        assert _connected_without(nb, set(removed)), removed
    # and k removals can disconnect it (the bound is tight): remove a neighbourhood
    assert not _connected_without(nb, set(nb[0]))


def test_secagg_plus_degree_and_dropout_tolerance() -> None:
    assert harary_degree(50) == 12  # 2 * ceil(log2 50)
    assert harary_degree(1000) == 20
    assert harary_degree(5) == 4  # capped at n - 1: classic SecAgg
    assert max_dropouts(SecAggParams(threshold=7, degree=12)) == 5
    with pytest.raises(ParamsError, match="both odd"):
        neighbour_graph(9, 3, bytes(32))


# ---------------------------------------------------------------------------- Shamir


def test_any_threshold_shares_reconstruct_and_fewer_do_not() -> None:
    r = random.Random(3)
    secret = int.from_bytes(r.randbytes(32), "big")
    xs = [2, 3, 5, 8, 9, 12]
    ys = shamir.split(secret, 4, xs, r.randbytes)
    points = list(zip(xs, ys, strict=True))
    for subset in itertools.combinations(points, 4):
        assert shamir.reconstruct(subset) == secret
    assert shamir.reconstruct(points) == secret  # more than t on the same polynomial
    for subset in itertools.combinations(points, 3):
        assert shamir.reconstruct(subset) != secret


def test_shamir_refuses_malformed_input() -> None:
    r = random.Random(4)
    with pytest.raises(shamir.ShamirError, match="distinct"):
        shamir.split(5, 2, [1, 1], r.randbytes)
    with pytest.raises(shamir.ShamirError, match="nonzero"):
        shamir.reconstruct([(0, 1), (1, 2)])
    with pytest.raises(shamir.ShamirError, match="cannot meet threshold"):
        shamir.split(5, 3, [1, 2], r.randbytes)
    with pytest.raises(shamir.ShamirError, match="not a field element"):
        shamir.share_from_bytes(shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big"))
    with pytest.raises(shamir.ShamirError, match="66 bytes"):
        shamir.share_from_bytes(b"\x00" * 32)
    y = shamir.PRIME - 1
    assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y


# ---------------------------------------------------------------------------- quantization


def test_deterministic_quantization_error_is_half_a_level() -> None:
    q = Quantizer(2.0, 12)
    x = np.random.default_rng(0).uniform(-2, 2, 10_000).astype(np.float32)
    lv = q.quantize(x)
    assert lv.dtype == np.int64 and np.abs(lv).max() <= q.max_level
    assert np.max(np.abs(q.dequantize(lv) - x.astype(np.float64))) <= 0.5 / q.scale + 1e-12
    assert q.quantize(np.array([5.0, -5.0])).tolist() == [q.max_level, -q.max_level]  # clipped


def test_stochastic_rounding_is_seeded_and_unbiased() -> None:
    q = Quantizer(1.0, 8)
    x = np.full(200_000, 0.3 / q.scale)  # 0.3 of a level
    a = q.quantize(x, rng=np.random.default_rng(9))
    assert np.array_equal(a, q.quantize(x, rng=np.random.default_rng(9)))
    assert set(a.tolist()) == {0, 1}
    assert abs(a.mean() - 0.3) < 0.01
    assert q.quantize(x).tolist()[:3] == [0, 0, 0]  # deterministic rounding is biased here


def test_quantizer_refuses_non_finite_values_and_bad_settings() -> None:
    q = Quantizer(1.0, 8)
    with pytest.raises(QuantizationError, match="NaN or infinite"):
        q.quantize(np.array([0.1, np.nan]))
    with pytest.raises(QuantizationError, match="clip range"):
        Quantizer(0.0, 8)
    with pytest.raises(QuantizationError, match="value bits"):
        Quantizer(1.0, 60)


@pytest.mark.parametrize("bits", [16, 24, 32, 40, 64])
def test_group_embedding_round_trips_signed_levels(bits: int) -> None:
    lim = (1 << (bits - 1)) - 1
    levels = np.array([0, 1, -1, lim, -lim, -lim - 1], dtype=np.int64)
    g = to_group(levels, bits)
    assert g.dtype == group_dtype(bits) and int(g.max()) < 1 << bits
    assert np.array_equal(from_group(g, bits), levels)


# ---------------------------------------------------------------------------- PRG


def test_prg_is_deterministic_seed_dependent_and_in_range() -> None:
    a = expand(b"\x01" * 32, 1000, 32)
    assert np.array_equal(a, expand(b"\x01" * 32, 1000, 32))
    assert not np.array_equal(a, expand(b"\x02" * 32, 1000, 32))
    assert int(expand(b"\x01" * 32, 1000, 20).max()) < 1 << 20
    assert expand(b"\x01" * 32, 10, 64).dtype == np.uint64
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 10, 32)


@pytest.mark.parametrize("bits", [20, 32, 64])
def test_mask_expander_matches_expand(bits: int) -> None:
    dtype = group_dtype(bits)
    acc = np.zeros(333, dtype=dtype)
    prg = MaskExpander(333, bits)
    prg.apply(acc, b"\x05" * 32)
    prg.apply(acc, b"\x06" * 32, subtract=True)
    reduce(acc, bits)
    want = reduce(expand(b"\x05" * 32, 333, bits) - expand(b"\x06" * 32, 333, bits), bits)
    assert np.array_equal(acc, want)

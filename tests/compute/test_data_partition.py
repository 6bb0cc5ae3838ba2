"""Partitioners: disjoint and complete, the skew each spec promises, clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cifer.compute.fl.data import (
    PartitionError,
    PartitionSpec,
    client_slice,
    parse_partition_spec,
    partition,
)

# 10 unbalanced classes, 5000 samples.
LABELS = np.random.RandomState(1).choice(10, size=5000, p=np.linspace(1, 2, 10) / 15)
GLOBAL = np.bincount(LABELS, minlength=10) / LABELS.size


def _check_cover(parts: list[npt.NDArray[np.int64]], n: int, n_clients: int) -> None:
    assert len(parts) == n_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and p.size >= 1
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates
    joined = np.concatenate(parts)
    assert joined.size == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def _mean_tv(labels: npt.NDArray[Any], parts: list[npt.NDArray[np.int64]]) -> float:
    """Mean total-variation distance of each client's label mix from the global one."""
    g = np.bincount(labels, minlength=10) / labels.size
    return float(
        np.mean(
            [0.5 * np.abs(np.bincount(labels[p], minlength=10) / p.size - g).sum() for p in parts]
        )
    )


@pytest.mark.parametrize(
    "spec", ["iid", "sorted", "shards", "shards:3", "dirichlet:0.1", "dirichlet:1", "dirichlet:100"]
)
@pytest.mark.parametrize("n_clients", [1, 3, 10, 37])
def test_disjoint_and_complete(spec: str, n_clients: int) -> None:
    parts = partition(LABELS, n_clients, spec, seed=7)
    _check_cover(parts, LABELS.size, n_clients)


@pytest.mark.parametrize("spec", ["iid", "sorted", "shards:4", "dirichlet:0.3"])
def test_deterministic_per_seed(spec: str) -> None:
    a = partition(LABELS, 10, spec, seed=3)
    b = partition(LABELS, 10, spec, seed=3)
    c = partition(LABELS, 10, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_balanced() -> None:
    parts = partition(LABELS, 7, "iid", seed=0)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _mean_tv(LABELS, parts) < 0.05


@pytest.mark.parametrize("n_clients", [5, 10, 37, 100, 1000])
def test_sorted_at_most_two_classes(n_clients: int) -> None:
    parts = partition(LABELS, n_clients, "sorted", seed=1)
    _check_cover(parts, LABELS.size, n_clients)
    assert max(np.unique(LABELS[p]).size for p in parts) <= 2
    sizes = np.array([p.size for p in parts])
    fair = LABELS.size / n_clients
    assert sizes.min() >= 0.7 * fair and sizes.max() <= 1.3 * fair


def test_shards_s_classes_and_fallback() -> None:
    parts = partition(LABELS, 10, "shards:3", seed=1)
    assert max(np.unique(LABELS[p]).size for p in parts) <= 3
    # 3 clients x 2 shards < 10 classes: exactness is impossible, the split still covers.
    parts = partition(LABELS, 3, "sorted", seed=1)
    _check_cover(parts, LABELS.size, 3)
    assert max(np.unique(LABELS[p]).size for p in parts) <= 6


def test_dirichlet_skew_follows_alpha() -> None:
    tv = {
        a: _mean_tv(LABELS, partition(LABELS, 10, f"dirichlet:{a}", seed=0))
        for a in (0.05, 1.0, 1000.0)
    }
    assert tv[0.05] > 0.6  # each client dominated by a few classes
    assert 0.2 < tv[1.0] < 0.6
    assert tv[1000.0] < 0.05  # close to IID
    iid_tv = _mean_tv(LABELS, partition(LABELS, 10, "iid", seed=0))
    assert tv[1000.0] < 2 * iid_tv + 0.01
    sizes = np.array([p.size for p in partition(LABELS, 10, "dirichlet:1000", seed=0)])
    assert np.all(np.abs(sizes - 500) <= 50)


def test_dirichlet_small_alpha_few_classes_per_client() -> None:
    parts = partition(LABELS, 10, "dirichlet:0.01", seed=2)
    _check_cover(parts, LABELS.size, 10)
    # A client's dominant class holds most of its data.
    dominant = [np.bincount(LABELS[p]).max() / p.size for p in parts]
    assert float(np.mean(dominant)) > 0.7


def test_dirichlet_min_size() -> None:
    parts = partition(LABELS, 50, "dirichlet:0.1", seed=0, min_size=20)
    assert min(p.size for p in parts) >= 20
    parts = partition(LABELS, 50, "dirichlet:0.1", seed=0)  # default min_size 10
    assert min(p.size for p in parts) >= 10
    with pytest.raises(PartitionError, match=r"50 clients x min_size 200 exceeds the 5000"):
        partition(LABELS, 50, "dirichlet:0.1", seed=0, min_size=200)
    with pytest.raises(PartitionError, match=r"no draw in 3 attempts.*larger ALPHA"):
        partition(LABELS, 500, "dirichlet:0.01", seed=0, min_size=10, max_attempts=3)


def test_tiny_alpha_does_not_produce_nan() -> None:
    # Every gamma draw underflows for alpha this small; the split must still be valid.
    y = np.repeat(np.arange(4), 25)
    parts = partition(y, 4, "dirichlet:1e-300", seed=0, min_size=1, max_attempts=2000)
    _check_cover(parts, y.size, 4)


def test_parse_specs() -> None:
    assert parse_partition_spec("iid") == PartitionSpec("iid")
    assert parse_partition_spec(" Dirichlet: 0.5 ") == PartitionSpec("dirichlet", alpha=0.5)
    assert parse_partition_spec("sorted") == PartitionSpec("sorted")
    assert parse_partition_spec("shards") == PartitionSpec("sorted")
    assert parse_partition_spec("shards:3") == PartitionSpec("sorted", shards_per_client=3)
    for text in ("iid", "dirichlet:0.5", "sorted", "shards:3"):
        assert str(parse_partition_spec(text)) == text
    spec = PartitionSpec("dirichlet", alpha=2.0)
    assert parse_partition_spec(spec) is spec


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "foo",
        "iid:2",
        "dirichlet",
        "dirichlet:",
        "dirichlet:-1",
        "dirichlet:0",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:x",
        "sorted:2",
        "shards:0",
        "shards:1.5",
    ],
)
def test_bad_specs_name_spec_and_valid_ones(bad: str) -> None:
    with pytest.raises(PartitionError) as err:
        parse_partition_spec(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    assert "valid specs: iid, dirichlet:ALPHA" in msg and "sorted" in msg
    with pytest.raises(PartitionError):
        partition(LABELS, 2, bad, seed=0)


def test_bad_arguments() -> None:
    with pytest.raises(PartitionError, match="1-D integer"):
        partition(LABELS.astype(float), 2, "iid", 0)
    with pytest.raises(PartitionError, match="1-D integer"):
        partition(LABELS.reshape(50, 100), 2, "iid", 0)
    with pytest.raises(PartitionError, match="n_clients must be >= 1"):
        partition(LABELS, 0, "iid", 0)
    with pytest.raises(PartitionError, match="only 3 samples"):
        partition(np.array([0, 1, 2]), 4, "iid", 0)
    with pytest.raises(PartitionError, match=r"needs at least 8 samples"):
        partition(np.arange(6), 4, "sorted", 0)
    for seed in (-1, 2**32, True, 1.5):
        with pytest.raises(PartitionError, match="seed"):
            partition(LABELS, 2, "iid", seed)  # type: ignore[arg-type]


def test_client_slice() -> None:
    assert client_slice("0/10") == (0, 10)
    assert client_slice(" 9 / 10 ") == (9, 10)
    assert client_slice("0/1") == (0, 1)
    for bad in ("10/10", "11/10", "-1/3", "1/0", "0/0", "a/b", "3", "1/2/3", ""):
        with pytest.raises(PartitionError, match=r"invalid client slice .*I/N|0 <= I < N"):
            client_slice(bad)

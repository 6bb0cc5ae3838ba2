"""Partitioners: split a dataset's sample indices among federated clients.

A partition is named by a spec string, as on the command line:

* ``iid``: a uniform random split into ``n_clients`` parts whose sizes differ by at most 1.
* ``dirichlet:ALPHA``: label skew (Hsu, Qi, Brown 2019; the per-class form of Yurochkin et
  al. 2019 used by NIID-Bench, Li et al. 2022): for each class, client shares are drawn from
  Dirichlet(ALPHA, ..., ALPHA) and the class's samples are cut accordingly; a client that
  already holds its fair share ``n / n_clients`` gets no more. Small ALPHA (0.1) gives each
  client a few classes, large ALPHA (100) approaches IID. Draws are repeated (bounded) until
  every client has at least ``min_size`` samples.
* ``sorted`` (alias ``shards``): label-sorted shards (McMahan et al. 2017): samples sorted by
  label are cut into ``2 * n_clients`` shards and each client gets 2 at random, so it sees
  one or two classes. Shards are cut inside classes (class ``k`` gets a number of shards
  proportional to its size), which makes "at most two classes" exact rather than typical;
  with fewer shards than classes that is impossible, and the label-sorted order is cut into
  equal shards instead. ``shards:S`` gives ``S`` shards per client.

Partitions are disjoint and cover every sample; each client's indices are sorted. The
result depends only on the labels, ``n_clients``, the spec and ``seed``: randomness comes
from ``np.random.RandomState``, whose stream numpy keeps frozen (NEP 19), so clients that
compute their own slice on different machines (``--partition i/n``) agree on it.
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

I64Array = npt.NDArray[np.int64]

#: Spec forms accepted by :func:`parse_partition_spec`.
PARTITION_SPECS: tuple[str, ...] = ("iid", "dirichlet:ALPHA", "sorted", "shards:S")
#: Default minimum samples per client for ``dirichlet`` (capped by the data, see
#: :func:`partition`).
DIRICHLET_MIN_SIZE = 10
#: Dirichlet draws tried before giving up on ``min_size``.
DIRICHLET_MAX_ATTEMPTS = 1000

_SPEC_HELP = (
    "valid specs: iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5), sorted, "
    "shards:S (S >= 1 shards per client)"
)


class PartitionError(ValueError):
    """Invalid partition spec, arguments, or a partition that cannot be made."""


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """A parsed spec: ``kind`` plus ``alpha`` (dirichlet) or ``shards_per_client``."""

    kind: Literal["iid", "dirichlet", "sorted"]
    alpha: float | None = None
    shards_per_client: int = 2

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "sorted" and self.shards_per_client != 2:
            return f"shards:{self.shards_per_client}"
        return self.kind


def parse_partition_spec(spec: str | PartitionSpec) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA``, ``sorted``, ``shards`` or ``shards:S``."""
    if isinstance(spec, PartitionSpec):
        return spec
    if not isinstance(spec, str):
        raise PartitionError(f"partition spec must be a string, got {spec!r}; {_SPEC_HELP}")
    kind, sep, arg = spec.strip().lower().partition(":")
    kind, arg = kind.strip(), arg.strip()
    if kind == "iid" and not sep:
        return PartitionSpec("iid")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if not (math.isfinite(alpha) and alpha > 0):
            raise PartitionError(
                f"invalid partition spec {spec!r}: ALPHA must be a finite number > 0; {_SPEC_HELP}"
            )
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind in ("sorted", "shards") and not sep:
        return PartitionSpec("sorted")
    if kind == "shards" and sep:
        if not re.fullmatch(r"[0-9]+", arg) or int(arg) < 1:
            raise PartitionError(
                f"invalid partition spec {spec!r}: S must be an integer >= 1; {_SPEC_HELP}"
            )
        return PartitionSpec("sorted", shards_per_client=int(arg))
    raise PartitionError(f"invalid partition spec {spec!r}; {_SPEC_HELP}")


def client_slice(spec: str) -> tuple[int, int]:
    """Parse a client's ``--partition i/n`` into ``(i, n)`` with ``0 <= i < n``."""
    m = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", spec) if isinstance(spec, str) else None
    if m is None:
        raise PartitionError(
            f"invalid client slice {spec!r}: expected I/N (client I of N, 0 <= I < N), e.g. 0/10"
        )
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise PartitionError(
            f"invalid client slice {spec!r}: need 0 <= I < N and N >= 1, got I={i}, N={n}"
        )
    return i, n


def partition(
    labels: npt.NDArray[Any],
    n_clients: int,
    spec: str | PartitionSpec,
    seed: int,
    *,
    min_size: int | None = None,
    max_attempts: int = DIRICHLET_MAX_ATTEMPTS,
) -> list[I64Array]:
    """Split sample indices ``0..len(labels)-1`` among ``n_clients`` clients.

    Returns one sorted int64 index array per client; together they are disjoint and cover
    every sample, and every client gets at least one. ``min_size`` (``dirichlet`` only) is
    the minimum samples per client, by default ``min(10, n // (4 * n_clients))`` and at
    least 1; draws are repeated up to ``max_attempts`` times to meet it.
    """
    parsed = parse_partition_spec(spec)
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise PartitionError(
            f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}"
        )
    n = int(y.shape[0])
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer):
        raise PartitionError(f"n_clients must be an integer, got {n_clients!r}")
    n_clients = int(n_clients)
    if n_clients < 1:
        raise PartitionError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients > n:
        raise PartitionError(f"cannot give each of {n_clients} clients a sample: only {n} samples")
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not (0 <= int(seed) < 2**32)
    ):
        raise PartitionError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    rng = np.random.RandomState(int(seed))

    if parsed.kind == "iid":
        parts = np.array_split(rng.permutation(n), n_clients)
    elif parsed.kind == "dirichlet":
        assert parsed.alpha is not None
        floor = max(1, min(DIRICHLET_MIN_SIZE, n // (4 * n_clients)))
        need = floor if min_size is None else int(min_size)
        parts = _dirichlet(y, n_clients, parsed.alpha, rng, need, max_attempts, str(parsed))
    else:
        parts = _shards(y, n_clients, parsed.shards_per_client, rng, str(parsed))
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    y: npt.NDArray[Any],
    n_clients: int,
    alpha: float,
    rng: np.random.RandomState,
    min_size: int,
    max_attempts: int,
    name: str,
) -> list[npt.NDArray[np.intp]]:
    n = int(y.shape[0])
    if min_size < 1:
        raise PartitionError(f"{name}: min_size must be >= 1, got {min_size}")
    if max_attempts < 1:
        raise PartitionError(f"{name}: max_attempts must be >= 1, got {max_attempts}")
    if min_size * n_clients > n:
        raise PartitionError(
            f"{name}: {n_clients} clients x min_size {min_size} exceeds the {n} samples; "
            "use fewer clients or a smaller min_size"
        )
    by_class = [np.flatnonzero(y == k) for k in np.unique(y)]
    fair = n / n_clients
    owner = np.empty(n, dtype=np.intp)
    best = 0
    for _ in range(max_attempts):
        sizes = np.zeros(n_clients, dtype=np.int64)
        for members in by_class:
            idx = rng.permutation(members)
            p = rng.dirichlet(np.full(n_clients, alpha))
            if not (np.all(np.isfinite(p)) and p.sum() > 0):
                # Every gamma draw underflowed (tiny alpha): the limit law puts all of the
                # class on one client chosen uniformly.
                p = np.zeros(n_clients)
                p[rng.randint(n_clients)] = 1.0
            capped = p * (sizes < fair)
            if capped.sum() > 0:
                p = capped
            cuts = (np.cumsum(p / p.sum()) * idx.size).astype(np.int64)
            cuts[-1] = idx.size
            counts = np.diff(cuts, prepend=0)
            owner[idx] = np.repeat(np.arange(n_clients), counts)
            sizes += counts
        smallest = int(sizes.min())
        if smallest >= min_size:
            order = np.argsort(owner, kind="stable")
            return np.split(order, np.cumsum(sizes)[:-1])
        best = max(best, smallest)
    raise PartitionError(
        f"{name}: no draw in {max_attempts} attempts gave every one of {n_clients} clients "
        f">= {min_size} samples (best smallest client: {best}); use a larger ALPHA, fewer "
        "clients or a smaller min_size"
    )


def _shards(
    y: npt.NDArray[Any],
    n_clients: int,
    per_client: int,
    rng: np.random.RandomState,
    name: str,
) -> list[npt.NDArray[np.intp]]:
    n = int(y.shape[0])
    total = per_client * n_clients
    if total > n:
        raise PartitionError(
            f"{name}: {n_clients} clients x {per_client} shards needs at least {total} "
            f"samples, got {n}"
        )
    shuffled = rng.permutation(n)  # random order inside each class
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    _, counts = np.unique(y, return_counts=True)
    shards: list[npt.NDArray[np.intp]]
    if total >= counts.size:
        # Split each class into its own shards, allocated by D'Hondt (highest average):
        # every class gets one, the rest go to the class whose shards are currently largest,
        # so shard sizes end up as equal as whole-class shards allow.
        per_class = np.ones(counts.size, dtype=np.int64)
        heap = [(-int(c), k) for k, c in enumerate(counts)]
        heapq.heapify(heap)
        for _ in range(total - counts.size):
            _, k = heapq.heappop(heap)
            per_class[k] += 1
            heapq.heappush(heap, (-counts[k] / per_class[k], k))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        shards = []
        for start, count, pieces in zip(starts, counts, per_class, strict=True):
            shards.extend(np.array_split(order[start : start + count], int(pieces)))
    else:
        shards = list(np.array_split(order, total))
    assignment = rng.permutation(total)
    return [
        np.concatenate([shards[j] for j in assignment[i * per_client : (i + 1) * per_client]])
        for i in range(n_clients)
    ]

"""Shared types, input validation and vectorised kernels for aggregation rules.

Every rule has one signature, ``rule(updates[n, d], weights[n], ctx) -> AggResult``, so the
fl contract, the simulator and the tests can swap rules by name. Validators re-execute the
rule to check a proposed aggregate, so rules are deterministic for identical inputs: no
hidden randomness (the only random rule, bucketing, draws from ``ctx.rng``), fixed reduction
orders, and ties broken by value, then by client index.

Large ``d`` (10^6 and more) is the common case, so the kernels here stream over column
blocks in float64: one pass builds the n x n Gram matrix (every pairwise distance and norm
follows from it), and one pass forms a linear combination of rows. Each pass splits d into
``LANES`` fixed runs of whole blocks; lane 0 runs on the caller's thread and the others on
a pool thread (``run_lanes``), and partial results are combined in lane order, so the result
does not depend on how many threads ran them. Iterative rules (RFA, centered clipping)
iterate on n coefficients, not on d-vectors. Bit-exactness across platforms is not
promised: Gram entries and row combinations go through BLAS, whose summation order may
differ between builds, so validators on different machines should compare aggregates with
a tolerance (or pin the platform); selections only flip on near-ties.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
F64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

#: The block sizes and LANES fix the order of every float64 sum, so they are part of the
#: result: validators must run the same values (changing one is a coordinated upgrade),
#: even though each was chosen for speed.
#:
#: Columns per block when streaming over d: bounds temporaries to n * 128 KiB of float64
#: per lane. Measured fastest for the row-combination pass at n = 50 with two lanes (16 Ki: 0.014 s,
#: 4 Ki: 0.028 s, 32 Ki: 0.017 s; medians of 5 alternating runs, d = 10^6).
BLOCK = 1 << 14
#: Columns per block of the Gram pass: with two lanes sharing the cache, 8 Ki measured
#: fastest (0.055 s; 4 Ki 0.057 s, 16 Ki 0.060 s, 32 Ki 0.065 s; same runs as BLOCK).
GRAM_BLOCK = 1 << 13
#: Columns per block for coordinate-wise sorts, which transpose each block first.
SORT_BLOCK = 1 << 17
#: Column passes are split into this many lanes of whole blocks. A constant, not the
#: machine's core count, so every machine sums the same partial results in the same order.
LANES = 2

T = TypeVar("T")


class AggregationError(ValueError):
    """Invalid input to an aggregation rule; ``client`` is the offending index if any."""

    def __init__(self, message: str, *, client: int | None = None) -> None:
        super().__init__(message)
        self.client = client


@dataclass(frozen=True, slots=True, kw_only=True)
class AggContext:
    """Everything a rule may need besides the updates and weights.

    ``f`` is the number of Byzantine clients the rule must tolerate. ``params`` holds
    rule parameters by name (see each rule's docstring). ``previous`` is the previous
    aggregate or server momentum (the center for centered clipping). ``root_update`` is
    the server's update on its root dataset (FLTrust). ``reputation`` is per-client
    reputation in parts per million (reputation weighting). ``rng`` is a seeded Generator
    for rules that need randomness (bucketing); it is consumed, so re-executing a round
    needs a fresh Generator from the same seed.
    """

    f: int = 0
    params: Mapping[str, object] = field(default_factory=dict)
    previous: FloatArray | None = None
    root_update: FloatArray | None = None
    reputation: npt.NDArray[Any] | None = None
    rng: np.random.Generator | None = None

    def with_(self, **changes: Any) -> AggContext:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def param_int(self, name: str, default: int, *, low: int | None = None) -> int:
        """Integer parameter ``name`` (bools rejected), checked against ``low``."""
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise AggregationError(f"parameter {name!r} must be an integer, got {value!r}")
        out = int(value)
        if low is not None and out < low:
            raise AggregationError(f"parameter {name!r} must be >= {low}, got {out}")
        return out

    def param_float(
        self,
        name: str,
        default: float,
        *,
        low: float | None = None,
        high: float | None = None,
        strict_low: bool = False,
    ) -> float:
        """Finite real parameter ``name`` within [low, high] (or (low, high] if strict)."""
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise AggregationError(f"parameter {name!r} must be a number, got {value!r}")
        out = float(value)
        if not np.isfinite(out):
            raise AggregationError(f"parameter {name!r} must be finite, got {out}")
        if low is not None and (out < low or (strict_low and out == low)):
            op = ">" if strict_low else ">="
            raise AggregationError(f"parameter {name!r} must be {op} {low}, got {out}")
        if high is not None and out > high:
            raise AggregationError(f"parameter {name!r} must be <= {high}, got {out}")
        return out

    def param_optional_float(self, name: str, *, low: float = 0.0) -> float | None:
        """Optional positive real parameter (None when absent)."""
        if self.params.get(name) is None:
            return None
        return self.param_float(name, 0.0, low=low, strict_low=True)

    def param_str(self, name: str, default: str, choices: tuple[str, ...] = ()) -> str:
        """String parameter ``name``, optionally restricted to ``choices``."""
        value = self.params.get(name, default)
        if not isinstance(value, str):
            raise AggregationError(f"parameter {name!r} must be a string, got {value!r}")
        if choices and value not in choices:
            raise AggregationError(f"parameter {name!r} must be one of {choices}, got {value!r}")
        return value

    def param_bool(self, name: str, default: bool) -> bool:
        """Boolean parameter ``name``."""
        value = self.params.get(name, default)
        if not isinstance(value, bool | np.bool_):
            raise AggregationError(f"parameter {name!r} must be a boolean, got {value!r}")
        return bool(value)


@dataclass(frozen=True, slots=True)
class AggResult:
    """Output of a rule.

    ``aggregate`` has the updates' dtype. ``accepted[i]`` says whether client i's update was
    used as a whole (selection rules) or not excluded (coordinate-wise rules); ``scores`` is
    a per-client float64 diagnostic whose meaning each rule documents. ``info`` carries
    small extra diagnostics (iteration counts, selected order).
    """

    aggregate: FloatArray
    accepted: BoolArray
    scores: F64Array
    info: Mapping[str, object] = field(default_factory=dict)


Aggregator = Callable[[FloatArray, FloatArray, AggContext], AggResult]


# ---------------------------------------------------------------------------- validation


def check_inputs(
    updates: object, weights: object, ctx: AggContext, *, rule: str, scan_finite: bool = True
) -> tuple[FloatArray, F64Array]:
    """Validate updates, weights and ``ctx.f``; return the arrays (weights as float64).

    Errors name the client index and the problem, since a validator logs them as the
    reason a proposed aggregate was rejected. ``scan_finite=False`` skips the pass over
    the updates that looks for NaN/inf (a tenth to a fifth of a fast rule's time at
    d = 10^6); a rule that passes it must call :func:`ensure_finite` with a summary its
    own pass yields for free (the Gram diagonal, the sorted extremes), which reports the
    same error when that summary shows a non-finite value.
    """
    if not isinstance(updates, np.ndarray):
        raise AggregationError(f"{rule}: updates must be a numpy array, got {type(updates)}")
    if updates.ndim != 2:
        raise AggregationError(
            f"{rule}: updates must be 2-D (n clients x d), got shape {updates.shape}"
        )
    if updates.dtype not in (np.float32, np.float64):
        raise AggregationError(f"{rule}: updates must be float32 or float64, got {updates.dtype}")
    n, d = updates.shape
    if n == 0:
        raise AggregationError(f"{rule}: no client updates")
    if d == 0:
        raise AggregationError(f"{rule}: updates have zero length")
    if scan_finite:
        _check_finite_rows(updates, rule)
    w = _check_weights(weights, n, rule)
    f = ctx.f
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise AggregationError(f"{rule}: f must be a non-negative integer, got {f!r}")
    if f > n:
        raise AggregationError(f"{rule}: f={f} exceeds the number of clients n={n}")
    return updates, w


def ensure_finite(summary_finite: bool, updates: FloatArray, rule: str) -> None:
    """Raise check_inputs' NaN/inf error for ``updates`` unless ``summary_finite``.

    For rules that called ``check_inputs(..., scan_finite=False)``. The summary must be
    non-finite whenever an update is: a Gram diagonal (sums of squares in float64, which
    cannot overflow for float32 rows) or the extremes of each sorted coordinate (numpy
    sorts NaN last). A float64 row whose squares overflow makes the Gram diagonal inf
    although the row is finite; the exact re-scan then finds nothing, and the rule
    proceeds as it would have after a full check_inputs.
    """
    if not summary_finite:
        _check_finite_rows(updates, rule)


def _check_finite_rows(updates: FloatArray, rule: str) -> None:
    # Fast path: a row sum is non-finite if the row is (NaN and inf propagate, inf - inf
    # is NaN). It is taken in the updates' own dtype (3x faster than casting float32 to
    # float64), so a finite row can overflow it; suspicious rows are re-checked exactly.
    # Each lane sums its own column range; a row is suspicious if any lane's sum is.
    d = updates.shape[1]

    def lane(blocks: list[slice]) -> npt.NDArray[np.bool_]:
        with np.errstate(over="ignore", invalid="ignore"):
            part = updates[:, blocks[0].start : blocks[-1].stop].sum(axis=1)
        return np.asarray(~np.isfinite(part))  # typed: ~ on an array is Any to mypy

    suspicious = np.logical_or.reduce(run_lanes(lane, d))
    for i in np.flatnonzero(suspicious):
        row = updates[i]
        nan = np.flatnonzero(np.isnan(row))
        inf = np.flatnonzero(np.isinf(row))
        if nan.size:
            raise AggregationError(
                f"{rule}: client {i}: update contains NaN ({nan.size} values, first at "
                f"coordinate {nan[0]})",
                client=int(i),
            )
        if inf.size:
            raise AggregationError(
                f"{rule}: client {i}: update contains inf ({inf.size} values, first at "
                f"coordinate {inf[0]})",
                client=int(i),
            )


def _check_weights(weights: object, n: int, rule: str) -> F64Array:
    if not isinstance(weights, np.ndarray):
        raise AggregationError(f"{rule}: weights must be a numpy array, got {type(weights)}")
    if weights.ndim != 1 or weights.shape[0] != n:
        raise AggregationError(
            f"{rule}: weights must have shape ({n},) to match {n} updates, got {weights.shape}"
        )
    if weights.dtype.kind not in "iuf":
        raise AggregationError(f"{rule}: weights must be real numbers, got {weights.dtype}")
    w = weights.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        i = int(bad[0])
        raise AggregationError(f"{rule}: client {i}: weight is not finite ({w[i]})", client=i)
    neg = np.flatnonzero(w < 0)
    if neg.size:
        i = int(neg[0])
        raise AggregationError(f"{rule}: client {i}: weight is negative ({w[i]})", client=i)
    return w


def check_vector(vec: object, d: int, name: str, rule: str) -> F64Array:
    """Validate an auxiliary d-vector (previous aggregate, root update) and return float64."""
    if not isinstance(vec, np.ndarray):
        raise AggregationError(f"{rule}: {name} must be a numpy array, got {type(vec)}")
    if vec.shape != (d,):
        raise AggregationError(f"{rule}: {name} must have shape ({d},), got {vec.shape}")
    if vec.dtype.kind != "f":
        raise AggregationError(f"{rule}: {name} must be floating point, got {vec.dtype}")
    out = vec.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise AggregationError(f"{rule}: {name} is not finite at coordinate {bad[0]}")
    return out


def require(cond: bool, rule: str, message: str) -> None:
    """Raise AggregationError(``rule: message``) unless ``cond``."""
    if not cond:
        raise AggregationError(f"{rule}: {message}")


# ---------------------------------------------------------------------------- kernels

_controller: Any = None
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Context in which BLAS runs on one thread (a no-op without threadpoolctl).

    The per-block products here are small (n x 8-16 Ki columns), so extra BLAS threads
    gain little, and when the CPU is shared (a validator also running consensus, tests in
    parallel) spinning BLAS threads made the Gram pass 5-15x slower in our measurements
    (0.09 s on one thread vs 0.4-1.5 s on two, 50 x 10^6 float32, load 4 on 2 cores). One
    thread also gives every machine the same summation schedule. The passes get their
    parallelism from ``run_lanes`` instead: fixed column ranges, one BLAS thread each.

    The limit is process-wide, so concurrent callers share it: the first one in sets it
    and the last one out restores the original (threadpoolctl's own context would restore
    on the first exit, under a caller still working). threadpoolctl comes with
    scikit-learn; it is imported lazily and optional.
    """
    global _controller, _blas_users, _blas_limiter
    if _controller is None:
        try:
            module = importlib.import_module("threadpoolctl")
            _controller = module.ThreadpoolController()
        except Exception:  # missing or broken: fall back to the BLAS default
            _controller = False
    if _controller is False:
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def column_blocks(d: int, block: int = BLOCK) -> Iterator[slice]:
    """Column slices covering [0, d) in order."""
    for start in range(0, d, block):
        yield slice(start, min(start + block, d))


def lane_blocks(d: int, block: int = BLOCK) -> list[list[slice]]:
    """``column_blocks`` cut into at most ``LANES`` contiguous runs of equal length (+-1)."""
    blocks = list(column_blocks(d, block))
    lanes = min(LANES, len(blocks))
    if lanes <= 1:
        return [blocks]
    per, extra = divmod(len(blocks), lanes)
    out: list[list[slice]] = []
    start = 0
    for lane in range(lanes):
        stop = start + per + (1 if lane < extra else 0)
        out.append(blocks[start:stop])
        start = stop
    return out


_lane_pool: ThreadPoolExecutor | None = None
_lane_cap: int | None = None
_lane_state = threading.local()
_lane_lock = threading.Lock()
_warned: set[str] = set()
_log = logging.getLogger(__name__)


def lane_threads() -> int:
    """Threads for the lanes: ``CIFER_AGG_THREADS`` if set, else min(LANES, usable cores).

    A value that is not an integer is a configuration mistake, not bad input to a rule:
    it is logged once and the default is used, so it cannot fail an aggregation.
    """
    threads = min(LANES, _usable_cores())
    raw = os.environ.get("CIFER_AGG_THREADS", "").strip()
    if raw:
        try:
            threads = max(1, min(LANES, int(raw)))
        except ValueError:
            if raw not in _warned:
                _warned.add(raw)
                _log.warning("CIFER_AGG_THREADS must be an integer, got %r; using %d", raw, threads)
    return threads if _lane_cap is None else min(threads, _lane_cap)


def _usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def lane_thread_cap(threads: int) -> Iterator[None]:
    """Run the lanes on at most ``threads`` threads inside the block (process-wide).

    For benchmarks that time the single-threaded path next to the default; results are
    the same either way.
    """
    global _lane_cap
    previous, _lane_cap = _lane_cap, max(1, threads)
    try:
        yield
    finally:
        _lane_cap = previous


def run_lanes(work: Callable[[list[slice]], T], d: int, block: int = BLOCK) -> list[T]:
    """``work`` on each lane of columns, in parallel where there are threads; lane order.

    Why threads of our own and not BLAS threads: each lane is a fixed set of columns
    summed by single-threaded BLAS calls, so nothing spins waiting for a busy core (see
    ``blas_single_thread``) and the result is the same with one thread or two. numpy
    releases the GIL in the casts and products that make up the work. An error in a lane
    is raised after every lane has stopped, the lowest lane's first.

    Lanes started from inside a lane run in sequence (the one pool thread may be the
    caller, waiting on itself), and a forked child builds its own pool (the parent's
    threads do not exist there). A lane the pool has not started when lane 0 is done
    (another caller holds the pool thread) is taken back and run by the caller, so
    concurrent callers are never slower than one thread each. The pool thread runs in a
    copy of the caller's context, so ``np.errstate`` applies there too.
    """
    lanes = lane_blocks(d, block)
    if len(lanes) == 1 or lane_threads() == 1 or getattr(_lane_state, "inside", False):
        return [work(lane) for lane in lanes]

    def inside(lane: list[slice]) -> T:
        _lane_state.inside = True
        try:
            return work(lane)
        finally:
            _lane_state.inside = False

    futures: list[Future[T]] = []
    try:
        pool = _pool()
        for lane in lanes[1:]:
            futures.append(pool.submit(contextvars.copy_context().run, inside, lane))
    except RuntimeError:  # interpreter shutting down: no new threads, same result inline
        for f in futures:
            f.cancel()
        wait([f for f in futures if not f.cancelled()])
        return [work(lane) for lane in lanes]
    try:
        first = inside(lanes[0])
    finally:
        taken = [f.cancel() for f in futures]  # not started: run it here instead
        wait([f for f, t in zip(futures, taken, strict=True) if not t])
    rest = [
        inside(lane) if t else f.result()
        for lane, f, t in zip(lanes[1:], futures, taken, strict=True)
    ]
    return [first, *rest]


def _pool() -> ThreadPoolExecutor:
    """The lane pool of this process, built on first use."""
    global _lane_pool
    with _lane_lock:
        if _lane_pool is None:
            _lane_pool = ThreadPoolExecutor(max_workers=LANES - 1, thread_name_prefix="cifer-lane")
        return _lane_pool


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: forget the pool and its lock."""
    global _lane_pool, _lane_lock
    _lane_pool = None
    _lane_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def lane_sum(parts: list[F64Array]) -> F64Array:
    """Per-lane partial sums added in lane order (a fixed reduction order)."""
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def _block_buffer(rows: int, d: int, block: int = BLOCK) -> F64Array:
    """Flat float64 scratch space for ``rows`` x (up to) ``block`` columns.

    Each block is cast into a view of it (``_block_view``) instead of a fresh
    ``astype`` temporary: same values, one allocation per call instead of one per block
    (measured 10-15% of the Gram pass and a third of the combination pass at n = 50,
    d = 10^6).
    """
    return np.empty(rows * min(block, d), dtype=np.float64)


def _block_view(buf: F64Array, rows: int, sl: slice) -> F64Array:
    """A C-contiguous (rows, block width) view at the start of ``buf``."""
    width = sl.stop - sl.start
    return buf[: rows * width].reshape(rows, width)


#: Below this block width, gathering rows with one fancy index beats a Python loop.
_ROW_LOOP_MIN_WIDTH = 4096


def gram(updates: FloatArray, extra: tuple[F64Array, ...] = ()) -> F64Array:
    """Gram matrix Z Z^T in float64 of Z = [updates; extra rows], streamed over columns.

    Pairwise squared distances, norms, cosines and every quantity of the iterative rules
    follow from this (n + k) x (n + k) matrix, so d is touched once.
    """
    n, d = updates.shape
    m = n + len(extra)

    def lane(blocks: list[slice]) -> F64Array:
        part = np.zeros((m, m), dtype=np.float64)
        buf = _block_buffer(m, d, GRAM_BLOCK)
        for sl in blocks:
            z = _block_view(buf, m, sl)
            np.copyto(z[:n], updates[:, sl])
            for k, vec in enumerate(extra):
                z[n + k] = vec[sl]
            part += z @ z.T
        return part

    with blas_single_thread():
        out = lane_sum(run_lanes(lane, d, GRAM_BLOCK))
    # Symmetrise: syrk fills both triangles identically, but a general gemm may not.
    return (out + out.T) * 0.5


def sq_distances(g: F64Array) -> F64Array:
    """Pairwise squared Euclidean distances ||a||^2 + ||b||^2 - 2ab from a Gram matrix."""
    sq = np.diag(g)
    dist = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(dist, 0.0, out=dist)  # cancellation can give tiny negatives
    np.fill_diagonal(dist, 0.0)
    return dist


def combine(
    updates: FloatArray,
    coef: F64Array,
    extra: tuple[tuple[float, F64Array], ...] = (),
) -> F64Array:
    """sum_i coef[i] * updates[i] (+ sum c * v for (c, v) in extra), in float64."""
    n, d = updates.shape
    out = np.zeros(d, dtype=np.float64)
    nz = np.flatnonzero(coef)
    if nz.size:
        c = np.ascontiguousarray(coef[nz], dtype=np.float64)
        k = nz.size
        rows = nz.tolist()

        def lane(blocks: list[slice]) -> None:  # lanes write disjoint columns of out
            buf = _block_buffer(k, d)
            for sl in blocks:
                z = _block_view(buf, k, sl)
                if k == n:
                    np.copyto(z, updates[:, sl])
                elif z.shape[1] >= _ROW_LOOP_MIN_WIDTH:
                    for r, i in enumerate(rows):  # no float32 gather temporary
                        z[r] = updates[i, sl]
                else:
                    z[...] = updates[nz, sl]
                np.dot(c, z, out=out[sl])
                for scale, vec in extra:
                    if scale != 0.0:
                        out[sl] += scale * vec[sl]

        with blas_single_thread():
            run_lanes(lane, d)
    else:
        for scale, vec in extra:
            if scale != 0.0:
                out += scale * vec
    return out


def row_sq_norms(updates: FloatArray) -> F64Array:
    """Squared L2 norm of every row, in float64."""
    n, d = updates.shape

    def lane(blocks: list[slice]) -> F64Array:
        part = np.zeros(n, dtype=np.float64)
        for sl in blocks:
            b = updates[:, sl].astype(np.float64)
            part += np.einsum("ij,ij->i", b, b)
        return part

    return lane_sum(run_lanes(lane, d))


def sorted_columns(block: FloatArray) -> FloatArray:
    """Transpose an (n, B) block to a contiguous (B, n) array sorted along its rows.

    Sorting short contiguous rows uses numpy's SIMD sort; sorting along axis 0 of the
    strided block measured 5x slower, and np.partition (per-row introselect) 7x slower.
    """
    # Always a copy: when the block is a single column or row, block.T may already be
    # contiguous, and sorting it in place would reorder the caller's updates.
    t = np.array(block.T, order="C", copy=True)
    t.sort(axis=1)
    return t


def as_output(vec: F64Array, like: FloatArray) -> FloatArray:
    """Cast a float64 aggregate to the updates' dtype."""
    return vec.astype(like.dtype, copy=False)


def all_true(n: int) -> BoolArray:
    """Accepted mask for rules that exclude no client as a whole."""
    return np.ones(n, dtype=np.bool_)

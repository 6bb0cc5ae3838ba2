"""``cifer bench aggregation``: our robust aggregators against Flower's (and byzfl's) on the
same inputs, in one process.

Inputs (seeded, float32). n clients, the first f Byzantine: ``ceil(f / 2)`` send ALIE
(Baruch et al. 2019, :func:`cifer.compute.fl.attacks.alie` with z = ``alie_z(n, f)``, all
identical) and the rest send Gaussian noise (the honest mean plus N(0, 100^2) per
coordinate). The n - f honest clients send a shared mean mu ~ N(0, 1) plus N(0, 1) noise.
Our rules take the n x d matrix; Flower's take, per client, a list of layers and a sample
count: here ``NUM_LAYERS`` flat float32 layers of about d / 4 values each (views into the
client's row of the same matrix, so both sides read identical numbers) and a sample count
of 1 for every client (so Flower's weighted means are plain means, as ours are). byzfl's
aggregators take the n x d matrix itself (its numpy backend).

Timing. For each rule, each run times ours, then Flower's, then byzfl's call back to back,
so load on the shared machine hits all of them alike; we report medians over runs and the
ratio of medians. BLAS is limited to one thread for every library (our kernels always run
single-threaded; Flower and byzfl calls run inside the same threadpoolctl limit). Building
the n x d matrix from per-client layer lists is not part of a rule and is timed separately
(Flower's functions flatten or stack their inputs inside the timed call).

Agreement. Each library's output is compared with ours where the definitions agree, with
ours configured to the other library's definition when a parameter allows it: trimmed mean
with Flower's ``proportiontocut`` as our ``beta``; Krum and Multi-Krum against byzfl with
our f set to f - 1, because byzfl sums over n - f - 1 neighbours where we and Flower use
n - f - 2. Where no parameter makes the definitions equal (byzfl's geometric median, 3
Weiszfeld steps from 0), the rows say so and report both objectives. docs/benchmarks.md
lists every difference.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import math
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.aggregators import AggContext, AggregationError, aggregate
from cifer.compute.fl.aggregators.base import blas_single_thread, lane_thread_cap
from cifer.compute.fl.attacks import AttackContext, alie, alie_z

F32Array = npt.NDArray[np.float32]
AnyArray = npt.NDArray[Any]
Layers = list[F32Array]

#: Layers per client in Flower's input format (sizes as equal as possible, summing to d).
NUM_LAYERS = 4
#: Honest noise and the Byzantine "large noise" standard deviations.
HONEST_STD = 1.0
NOISE_ATTACK_STD = 100.0
#: Agreement tolerance: |ours - theirs| <= ATOL + RTOL * |theirs| elementwise (np.allclose).
#: Flower and byzfl accumulate means in float32 where we accumulate in float64 and round
#: once, so outputs of a few units in magnitude differ by up to a few float32 ulps (~1e-6).
RTOL = 1e-5
ATOL = 1e-5
#: Flower's rules (the ones it shares with us) and the rules only we have.
FLOWER_RULES = ("fedavg", "krum", "multi_krum", "median", "trimmed_mean", "bulyan")
OURS_ONLY = ("geometric_median", "centered_clipping", "fltrust", "bucketing", "reputation")
#: Rules held to a speed-up target against Flower (the robust ones) and the target.
TARGETS = {"krum": 10.0, "multi_krum": 10.0, "median": 3.0, "trimmed_mean": 3.0, "bulyan": 3.0}
#: Centered clipping settings (ours and byzfl's): radius sqrt(d) (one unit per coordinate)
#: and three iterations from v0 = 0.
CC_ITERS = 3
#: byzfl's geometric-median defaults (its smoothing nu and number of Weiszfeld steps T).
BYZFL_GM_NU = 0.1
BYZFL_GM_T = 3

Call = Callable[[], AnyArray]


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class BenchInputs:
    """The benchmark's updates in both layouts: ``updates`` (n x d) and per-client layers."""

    updates: F32Array
    layers: list[Layers]
    n: int
    f: int
    n_alie: int
    seed: int

    @property
    def d(self) -> int:
        return int(self.updates.shape[1])

    def flower_results(self) -> list[tuple[Layers, int]]:
        """Flower's input: (layers, num_examples) per client, 1 example each."""
        return [(layers, 1) for layers in self.layers]


def layer_bounds(d: int, layers: int = NUM_LAYERS) -> list[tuple[int, int]]:
    """[start, stop) of each layer: ``layers`` near-equal flat layers covering [0, d)."""
    k = max(1, min(layers, d))
    edges = [i * d // k for i in range(k + 1)]
    return list(itertools.pairwise(edges))


def make_inputs(n: int = 50, f: int = 10, d: int = 1_000_000, seed: int = 0) -> BenchInputs:
    """Seeded inputs: f Byzantine clients first (ALIE, then large noise), then n - f honest."""
    if n < 1 or d < 1 or not 0 <= f < n:
        raise ValueError(f"need n >= 1, d >= 1 and 0 <= f < n, got n={n}, f={f}, d={d}")
    rng = np.random.default_rng(seed)
    h = n - f
    x = np.empty((n, d), dtype=np.float32)
    mu = rng.standard_normal(d, dtype=np.float32)
    honest = x[f:]
    rng.standard_normal((h, d), dtype=np.float32, out=honest)
    honest *= np.float32(HONEST_STD)
    honest += mu
    n_alie = math.ceil(f / 2) if h >= 2 else 0  # ALIE needs a sample std of the honest
    if n_alie:
        ctx = AttackContext(
            n=h + n_alie,
            f=n_alie,
            byzantine=np.arange(n_alie, dtype=np.intp),
            params={"z": alie_z(n, f)},
        )
        x[:n_alie] = alie(honest, ctx)
    if f > n_alie:
        mean = honest.mean(axis=0, dtype=np.float64).astype(np.float32)
        noise = rng.standard_normal((f - n_alie, d), dtype=np.float32)
        x[n_alie:f] = mean + np.float32(NOISE_ATTACK_STD) * noise
    bounds = layer_bounds(d)
    layers = [[x[i, a:b] for a, b in bounds] for i in range(n)]
    return BenchInputs(updates=x, layers=layers, n=n, f=f, n_alie=n_alie, seed=seed)


def pack(layers: Sequence[Layers], d: int) -> F32Array:
    """The n x d matrix our rules take, from per-client layer lists (what a Flower-style
    server would have to do once per round before calling our rules)."""
    out = np.empty((len(layers), d), dtype=np.float32)
    for i, client in enumerate(layers):
        start = 0
        for layer in client:
            stop = start + layer.size
            out[i, start:stop] = layer.ravel()
            start = stop
    return out


# ---------------------------------------------------------------------------- libraries


def load_flower() -> types.ModuleType | None:
    """``flwr.server.strategy.aggregate``, or None if flwr is not installed."""
    if importlib.util.find_spec("flwr") is None:
        return None
    return importlib.import_module("flwr.server.strategy.aggregate")


def load_byzfl() -> types.ModuleType | None:
    """``byzfl.aggregators.aggregators``, or None if byzfl (or torch, scipy) is missing.

    byzfl's top-level ``__init__`` imports its training framework, which imports
    torchvision; PyPI's torchvision wheels link CUDA torch libraries and fail to import
    next to a CPU-only torch. The aggregators need only numpy, scipy and torch, so we
    import that subpackage without running the top-level ``__init__`` (a placeholder
    package stands in for it during the import and is removed afterwards).
    """
    name = "byzfl.aggregators.aggregators"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    for dep in ("torch", "scipy"):
        if importlib.util.find_spec(dep) is None:
            return None
    placeholder = "byzfl" not in sys.modules
    if placeholder:
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
    finally:
        if placeholder:
            sys.modules.pop("byzfl", None)


def version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleCase:
    """One rule: how to call ours, Flower's and byzfl's on the same inputs.

    ``ours_vs_byzfl`` is ours configured to byzfl's definition when that differs from
    ``ours`` (None: compare with ``ours``). ``byzfl_differs`` is set when no configuration
    of ours matches byzfl's definition; the outputs are then not compared.
    """

    rule: str
    ours: Call
    flower: Call | None = None
    byzfl: Call | None = None
    ours_vs_byzfl: Call | None = None
    flower_config: str = ""
    byzfl_config: str = ""
    byzfl_differs: str | None = None


def _flat(out: object) -> AnyArray:
    """A library's output as one flat array (Flower returns a list of layers)."""
    if isinstance(out, list | tuple):
        return np.concatenate([np.asarray(a).ravel() for a in out])
    if hasattr(out, "detach"):  # a torch tensor
        return np.asarray(out.detach().cpu().numpy()).ravel()
    return np.asarray(out).ravel()


def _ours(rule: str, x: F32Array, ctx: AggContext) -> Call:
    def call() -> AnyArray:
        return aggregate(rule, x, None, ctx).aggregate

    return call


def cases(
    inp: BenchInputs, flower: types.ModuleType | None, byzfl: types.ModuleType | None
) -> list[RuleCase]:
    """The benchmark's rules, configured so that definitions agree wherever they can."""
    x, n, f, d = inp.updates, inp.n, inp.f, inp.d
    results = inp.flower_results()
    base = AggContext(f=f)
    tau = math.sqrt(d)
    honest_mean = x[f:].mean(axis=0, dtype=np.float64).astype(np.float32)
    proportion = f / n
    out: list[RuleCase] = []

    def fl(fn: str, *args: Any, copy: bool = False, **kwargs: Any) -> Call | None:
        if flower is None:
            return None
        func = getattr(flower, fn)

        def call() -> AnyArray:
            res = list(results) if copy else results  # aggregate_bulyan pops from its list
            return _flat(func(res, *args, **kwargs))

        return call

    def bz(cls: str, *args: Any, **kwargs: Any) -> Call | None:
        if byzfl is None:
            return None
        factory = getattr(byzfl, cls)

        def call() -> AnyArray:
            return _flat(factory(*args, **kwargs)(x))

        return call

    out.append(
        RuleCase(
            "fedavg",
            _ours("fedavg", x, base),
            fl("aggregate"),
            bz("Average"),
            flower_config="aggregate(results), 1 example per client",
            byzfl_config="Average()",
        )
    )
    krum_f1 = _ours("krum", x, AggContext(f=f - 1)) if f >= 1 else None
    out.append(
        RuleCase(
            "krum",
            _ours("krum", x, base),
            fl("aggregate_krum", num_malicious=f, to_keep=0),
            bz("Krum", f=f) if f >= 1 else None,
            krum_f1,
            flower_config=f"aggregate_krum(num_malicious={f}, to_keep=0)",
            byzfl_config=f"Krum(f={f}) vs ours with f={f - 1} (n-f-1 neighbours)",
        )
    )
    mk_f1 = _ours("multi_krum", x, AggContext(f=f - 1, params={"m": n - f})) if f >= 1 else None
    out.append(
        RuleCase(
            "multi_krum",
            _ours("multi_krum", x, base),
            fl("aggregate_krum", num_malicious=f, to_keep=n - f),
            bz("MultiKrum", f=f) if f >= 1 else None,
            mk_f1,
            flower_config=f"aggregate_krum(num_malicious={f}, to_keep={n - f})",
            byzfl_config=f"MultiKrum(f={f}) vs ours with f={f - 1}, m={n - f}",
        )
    )
    out.append(
        RuleCase(
            "median",
            _ours("median", x, base),
            fl("aggregate_median"),
            bz("Median"),
            flower_config="aggregate_median(results)",
            byzfl_config="Median() (numpy backend)",
        )
    )
    k_flower = int(proportion * n)  # Flower's _trim_mean cut; ours floors beta * n alike
    tm_byzfl = _ours("trimmed_mean", x, base) if k_flower != f else None
    out.append(
        RuleCase(
            "trimmed_mean",
            _ours("trimmed_mean", x, base.with_(params={"beta": proportion})),
            fl("aggregate_trimmed_avg", proportiontocut=proportion),
            bz("TrMean", f=f),
            tm_byzfl,
            flower_config=f"aggregate_trimmed_avg(proportiontocut={proportion:g}); ours beta="
            f"{proportion:g}",
            byzfl_config=f"TrMean(f={f})",
        )
    )
    bulyan_call = (
        fl("aggregate_bulyan", f, flower.aggregate_krum, copy=True, to_keep=0) if flower else None
    )
    out.append(
        RuleCase(
            "bulyan",
            _ours("bulyan", x, base),
            bulyan_call,
            flower_config=f"aggregate_bulyan(num_malicious={f}, aggregate_krum, to_keep=0)",
        )
    )
    out.append(
        RuleCase(
            "geometric_median",
            _ours("geometric_median", x, base),
            byzfl=bz("GeometricMedian", nu=BYZFL_GM_NU, T=BYZFL_GM_T),
            byzfl_config=f"GeometricMedian(nu={BYZFL_GM_NU}, T={BYZFL_GM_T})",
            byzfl_differs=f"byzfl runs T={BYZFL_GM_T} Weiszfeld steps from 0 with nu="
            f"{BYZFL_GM_NU}; ours iterates from the mean to a 1e-6 relative tolerance",
        )
    )
    cc_ctx = base.with_(
        previous=np.zeros(d, dtype=np.float32), params={"tau": tau, "iters": CC_ITERS}
    )
    out.append(
        RuleCase(
            "centered_clipping",
            _ours("centered_clipping", x, cc_ctx),
            byzfl=bz("CenteredClipping", L=CC_ITERS, tau=float(tau)),
            byzfl_config=f"CenteredClipping(L={CC_ITERS}, tau=sqrt(d)), m=0; ours the same",
        )
    )
    out.append(RuleCase("fltrust", _ours("fltrust", x, base.with_(root_update=honest_mean))))

    def bucketing() -> AnyArray:
        ctx = base.with_(
            params={"inner": "median", "bucket_size": 2}, rng=np.random.default_rng(inp.seed)
        )
        return aggregate("bucketing", x, None, ctx).aggregate

    out.append(RuleCase("bucketing", bucketing))
    rep_ctx = base.with_(
        reputation=np.full(n, 900_000, dtype=np.int64), params={"clip_norm": 10.0 * tau}
    )
    out.append(RuleCase("reputation", _ours("reputation", x, rep_ctx)))
    return out


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Agreement:
    """How one library's output compares with ours."""

    max_abs_diff: float | None  # None when not compared
    ok: bool | None  # allclose within (RTOL, ATOL); None when not compared
    note: str = ""


@dataclass
class RuleResult:
    rule: str
    ours_s: list[float] = field(default_factory=list)
    ours_one_thread_s: list[float] = field(default_factory=list)
    flower_s: list[float] = field(default_factory=list)
    byzfl_s: list[float] = field(default_factory=list)
    flower: Agreement | None = None
    byzfl: Agreement | None = None
    flower_config: str = ""
    byzfl_config: str = ""

    @property
    def ours(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def ours_one_thread(self) -> float | None:
        """Ours with the column lanes run one after another on one thread."""
        return statistics.median(self.ours_one_thread_s) if self.ours_one_thread_s else None

    @property
    def ratio_one_thread(self) -> float | None:
        fm, o1 = self.flower_median, self.ours_one_thread
        return None if fm is None or o1 is None else fm / o1

    @property
    def flower_median(self) -> float | None:
        return statistics.median(self.flower_s) if self.flower_s else None

    @property
    def byzfl_median(self) -> float | None:
        return statistics.median(self.byzfl_s) if self.byzfl_s else None

    @property
    def ratio(self) -> float | None:
        """Flower's median time over ours (how many times faster we are)."""
        fm = self.flower_median
        return None if fm is None else fm / self.ours

    @property
    def byzfl_ratio(self) -> float | None:
        bm = self.byzfl_median
        return None if bm is None else bm / self.ours

    @property
    def target(self) -> float | None:
        return TARGETS.get(self.rule) if self.flower_s else None

    @property
    def meets_target(self) -> bool | None:
        t, r = self.target, self.ratio
        return None if t is None or r is None else r >= t


@dataclass
class BenchReport:
    n: int
    f: int
    d: int
    runs: int
    seed: int
    n_alie: int
    flower_version: str | None
    byzfl_version: str | None
    rows: list[RuleResult]
    pack_s: list[float]
    torch_median: TorchMedianCheck | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def pack_median(self) -> float:
        return statistics.median(self.pack_s)


def _timed(fn: Call) -> tuple[float, AnyArray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(ours: AnyArray, theirs: AnyArray) -> Agreement:
    """Max |ours - theirs| and whether they are allclose within (RTOL, ATOL)."""
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(theirs, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return Agreement(None, False, f"shapes differ: {a.shape} vs {b.shape}")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return Agreement(diff, bool(np.allclose(a, b, rtol=RTOL, atol=ATOL)))


def _objective(x: F32Array, v: AnyArray) -> float:
    """sum_i ||x_i - v||, the geometric median's objective, in float64 (row by row)."""
    v64 = np.asarray(v, dtype=np.float64).ravel()
    return float(sum(np.linalg.norm(x[i].astype(np.float64) - v64) for i in range(x.shape[0])))


def run(
    n: int = 50,
    f: int = 10,
    d: int = 1_000_000,
    runs: int = 3,
    seed: int = 0,
    *,
    rules: Sequence[str] | None = None,
    use_flower: bool = True,
    use_byzfl: bool = True,
    check_torch_median: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every rule (ours, Flower's, byzfl's) ``runs`` times and check agreement."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    say = progress or (lambda _msg: None)
    say("building inputs")
    inp = make_inputs(n, f, d, seed)
    flower = load_flower() if use_flower else None
    byzfl = load_byzfl() if use_byzfl else None
    all_cases = cases(inp, flower, byzfl)
    if rules is not None:
        unknown = set(rules) - {c.rule for c in all_cases}
        if unknown:
            raise ValueError(f"unknown rules: {sorted(unknown)}")
        all_cases = [c for c in all_cases if c.rule in rules]
    report = BenchReport(
        n=n,
        f=f,
        d=d,
        runs=runs,
        seed=seed,
        n_alie=inp.n_alie,
        flower_version=version("flwr") if flower is not None else None,
        byzfl_version=version("byzfl") if byzfl is not None else None,
        rows=[],
        pack_s=[],
    )
    with blas_single_thread():
        for _ in range(runs):
            report.pack_s.append(_timed(lambda: pack(inp.layers, d))[0])
        for case in all_cases:
            try:
                report.rows.append(_run_case(case, inp, runs, say))
            except AggregationError as exc:  # e.g. bulyan needs n >= 4f + 3
                report.skipped.append(f"{case.rule}: {exc}")
    if byzfl is not None and check_torch_median and importlib.util.find_spec("torch"):
        say("byzfl Median, torch backend")
        report.torch_median = byzfl_torch_median(inp)
    return report


def _run_case(
    case: RuleCase, inp: BenchInputs, runs: int, say: Callable[[str], None]
) -> RuleResult:
    row = RuleResult(case.rule, flower_config=case.flower_config, byzfl_config=case.byzfl_config)
    ours_out = flower_out = byzfl_out = None
    for r in range(runs):
        say(f"{case.rule}: run {r + 1}/{runs}, ours")
        t, ours_out = _timed(case.ours)
        row.ours_s.append(t)
        say(f"{case.rule}: run {r + 1}/{runs}, ours on one thread")
        with lane_thread_cap(1):
            t, one_out = _timed(case.ours)
        row.ours_one_thread_s.append(t)
        if one_out.tobytes() != ours_out.tobytes():
            raise RuntimeError(f"{case.rule}: one thread and two gave different aggregates")
        if case.flower is not None:
            say(f"{case.rule}: run {r + 1}/{runs}, Flower")
            t, flower_out = _timed(case.flower)
            row.flower_s.append(t)
        if case.byzfl is not None:
            say(f"{case.rule}: run {r + 1}/{runs}, byzfl")
            t, byzfl_out = _timed(case.byzfl)
            row.byzfl_s.append(t)
    assert ours_out is not None
    if flower_out is not None:
        row.flower = compare(ours_out, flower_out)
    if byzfl_out is not None:
        if case.byzfl_differs is not None:
            if case.rule == "geometric_median":
                ours_obj = _objective(inp.updates, ours_out)
                byz_obj = _objective(inp.updates, byzfl_out)
                note = (
                    f"differs: {case.byzfl_differs}; objective sum ||x_i - v||: ours "
                    f"{ours_obj:.9g}, byzfl {byz_obj:.9g}"
                )
            else:
                note = f"differs: {case.byzfl_differs}"
            diff = float(np.max(np.abs(ours_out.astype(np.float64) - byzfl_out)))
            row.byzfl = Agreement(diff, None, note)
        else:
            ref = case.ours_vs_byzfl() if case.ours_vs_byzfl is not None else ours_out
            row.byzfl = compare(ref, byzfl_out)
    return row


@dataclass(frozen=True)
class TorchMedianCheck:
    """byzfl's torch-backend Median, timed once, against ours and the lower median."""

    seconds: float
    vs_ours: Agreement
    vs_lower_median: Agreement


def byzfl_torch_median(inp: BenchInputs) -> TorchMedianCheck | None:
    """Time byzfl's torch-backend Median once (one torch thread) and compare it with our
    median (midpoint of the two middle values on even n) and with the lower median.

    byzfl 0.0.11's torch backend calls ``torch.quantile(q=0.5)``, which interpolates to
    the midpoint, as numpy does; ``torch.median`` (commented out in its source) returns
    the lower of the two. The two comparisons say which the installed byzfl does.
    """
    byzfl = load_byzfl()
    if byzfl is None:
        return None
    torch = importlib.import_module("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tensor = torch.from_numpy(inp.updates)
        t, out = _timed(lambda: _flat(byzfl.Median()(tensor)))
    finally:
        torch.set_num_threads(threads)
    ours = aggregate("median", inp.updates, None, AggContext(f=inp.f)).aggregate
    return TorchMedianCheck(t, compare(ours, out), compare(lower_median(inp.updates), out))


def lower_median(x: AnyArray) -> AnyArray:
    """The lower median of each column (``torch.median``'s convention), for reference."""
    k = (x.shape[0] - 1) // 2
    out: AnyArray = np.partition(x, k, axis=0)[k]
    return out

"""``cifer bench robustness``: the MNIST robustness table of Karimireddy, He and Jaggi
("Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022).

Setup (their code's defaults): 25 clients of which 5 Byzantine; the 20 honest clients split
MNIST's training set label-sorted (each sees one or two digits) and each Byzantine client
holds an IID shard (``byzantine_data="iid"``); FedSGD with worker momentum, batch 32, SGD
learning rate 0.01 in their heavy-ball form ``m = beta m + g``, which is 0.01 / (1 - beta)
in our ``m = beta m + (1 - beta) g`` form (the same trajectory); 600 rounds.

Attacks: BF (each attacker sends minus its own update), LF (labels y -> 9 - y), mimic, IPM
(epsilon 0.1), ALIE (z from n and f), min-max and min-sum. Rules: FedAvg, Krum, coordinate
median (CM), trimmed mean (TM, k = f), RFA (8 smoothed Weiszfeld steps), centered clipping
(CClip, tau 10 in our units = their 10 / (1 - beta), 3 iterations) and FLTrust (100 root
samples), each with and without bucketing (s = 2).

The grid: momentum 0.9 for every (rule, bucketing, attack) with seed 0; seeds 1 and 2 for
the default rule; momentum 0 for the rules in ``momentum0_rules``. Each finished run is
appended to ``results.jsonl`` in the output folder at once, so an interrupted sweep loses
at most the runs in flight, and rerunning the same command skips what is done. Runs go to
``jobs`` worker processes with one torch thread each.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Attack label -> (registered attack, parameters).
ATTACKS: dict[str, tuple[str, dict[str, object]]] = {
    "BF": ("sign_flip", {"mode": "own"}),
    "LF": ("label_flip", {}),
    "mimic": ("mimic", {}),
    "IPM": ("ipm", {"epsilon": 0.1}),
    "ALIE": ("alie", {}),
    "min-max": ("min_max", {}),
    "min-sum": ("min_sum", {}),
}
#: Rule label -> (registered aggregator, parameters).
RULES: dict[str, tuple[str, dict[str, object]]] = {
    "FedAvg": ("fedavg", {}),
    "Krum": ("krum", {}),
    "CM": ("median", {}),
    "TM": ("trimmed_mean", {}),
    "RFA": ("geometric_median", {"max_iter": 8}),
    "CClip": ("centered_clipping", {"tau": 10.0, "iters": 3}),
    "FLTrust": ("fltrust", {}),
    "CClip-auto": ("centered_clipping", {"tau": "auto", "iters": 3}),
}
#: The rule the project recommends for this threat model: centered clipping with the
#: median-distance radius (``tau="auto"``) over buckets of 2, with worker momentum 0.9.
DEFAULT_RULE = ("CClip-auto", True)
#: The paper's rules (the table); the default rule is run apart, with more seeds.
PAPER_RULES = ("FedAvg", "Krum", "CM", "TM", "RFA", "CClip", "FLTrust")
BUCKET_SIZE = 2
PAPER_LR = 0.01
CLIENTS, BYZANTINE, BATCH = 25, 5, 32
#: Final accuracy below this counts as a collapse.
COLLAPSE_BELOW = 0.5
#: Attacks under which the issue expects FedAvg to collapse.
FEDAVG_COLLAPSE_ATTACKS = ("BF", "IPM", "ALIE")
DEFAULT_TARGET = 0.97
#: Published values (percent) from the paper, keyed like :meth:`Cell.row`.
_CCLIP_PAPER = dict.fromkeys(("BF", "LF", "mimic", "IPM", "ALIE"), "97.8-98.2")
PAPER: dict[tuple[str, bool, float], dict[str, str]] = {
    ("CClip", False, 0.9): _CCLIP_PAPER,
    ("CClip", True, 0.9): _CCLIP_PAPER,
    ("Krum", False, 0.0): {"BF": "27.5"},
}


class BenchError(ValueError):
    """Bad benchmark settings (an unknown rule or attack name, a bad count)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What every run of a sweep shares; part of each result's key."""

    rounds: int = 600
    model: str = "cnn_small"
    dataset: str = "mnist"
    subset: int | tuple[int, int] | None = None
    eval_every: int = 50
    data_dir: str | None = None

    def digest(self) -> str:
        data = asdict(self)
        data.pop("data_dir")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of the grid."""

    attack: str
    rule: str
    bucketing: bool
    momentum: float
    seed: int

    @property
    def row(self) -> tuple[str, bool, float]:
        return (self.rule, self.bucketing, self.momentum)

    def key(self, settings: Settings) -> str:
        b = f"s{BUCKET_SIZE}" if self.bucketing else "s0"
        return f"{settings.digest()}|{self.attack}|{self.rule}|{b}|m{self.momentum}|seed{self.seed}"


@dataclass(slots=True)
class RunResult:
    """One finished (or failed) run, as stored in ``results.jsonl``."""

    key: str
    attack: str
    rule: str
    bucketing: bool
    momentum: float
    seed: int
    final_accuracy: float | None
    best_accuracy: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None

    @property
    def cell(self) -> Cell:
        return Cell(self.attack, self.rule, self.bucketing, self.momentum, self.seed)


def _check_names(names: Iterable[str], known: Mapping[str, object], what: str) -> list[str]:
    out = list(names)
    unknown = [n for n in out if n not in known]
    if unknown:
        raise BenchError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not out:
        raise BenchError(f"no {what} selected")
    return out


def grid(
    attacks: Sequence[str] = tuple(ATTACKS),
    rules: Sequence[str] = (*PAPER_RULES, DEFAULT_RULE[0]),
    *,
    seeds: int = 3,
    momentum0_rules: Sequence[str] = ("Krum", "CClip"),
    bucketing: Sequence[bool] = (False, True),
) -> list[Cell]:
    """The cells of a sweep, default rule first (see the module docstring)."""
    attacks = _check_names(attacks, ATTACKS, "attack")
    rules = _check_names(rules, RULES, "rule")
    if momentum0_rules:
        _check_names(momentum0_rules, RULES, "rule")
    if seeds < 1:
        raise BenchError(f"seeds must be >= 1, got {seeds}")
    cells: list[Cell] = []
    rule, bucket = DEFAULT_RULE
    if rule in rules and bucket in bucketing:
        cells += [Cell(a, rule, bucket, 0.9, s) for s in range(seeds) for a in attacks]
    for r in rules:
        for b in bucketing:
            if r != DEFAULT_RULE[0]:
                cells += [Cell(a, r, b, 0.9, 0) for a in attacks]
    for r in momentum0_rules:
        cells += [Cell(a, r, False, 0.0, 0) for a in attacks]
    return cells


def simulation_config(cell: Cell, settings: Settings) -> Any:
    """The :class:`SimulationConfig` of one cell."""
    from cifer.compute.fl.simulation import SimulationConfig

    attack, attack_params = ATTACKS[cell.attack]
    agg, agg_params = RULES[cell.rule]
    params = dict(agg_params)
    if cell.bucketing:
        params = {"inner": agg, "bucket_size": BUCKET_SIZE, **params}
        agg = "bucketing"
    return SimulationConfig(
        dataset=settings.dataset,
        partition="sorted",
        clients=CLIENTS,
        byzantine=BYZANTINE,
        byzantine_data="iid",
        attack=attack,
        attack_params=attack_params,
        aggregator=agg,
        agg_params=params,
        model=settings.model,
        rounds=settings.rounds,
        mode="fedsgd",
        momentum=cell.momentum,
        lr=PAPER_LR / (1.0 - cell.momentum),
        batch_size=BATCH,
        seed=cell.seed,
        eval_every=settings.eval_every,
        data_dir=settings.data_dir,
        subset=settings.subset,
    )


def run_cell(cell: Cell, settings: Settings) -> RunResult:
    """Run one cell; a failed simulation is recorded with its error, not raised."""
    from cifer.compute.fl.simulation import SimulationError, run_simulation

    t0 = time.perf_counter()
    key = cell.key(settings)
    base = {"key": key, **asdict(cell)}
    try:
        res = run_simulation(simulation_config(cell, settings))
    except SimulationError as exc:
        return RunResult(
            **base, final_accuracy=None, best_accuracy=None, wall_s=0.0, error=str(exc)
        )
    curve = [
        (m.round, float(m.test_accuracy)) for m in res.evaluated if m.test_accuracy is not None
    ]
    final, best = res.final_accuracy, res.best_accuracy
    return RunResult(
        **base,
        final_accuracy=final if math.isfinite(final) else None,
        best_accuracy=best if math.isfinite(best) else None,
        curve=curve,
        wall_s=time.perf_counter() - t0,
    )


def load_results(path: Path) -> dict[str, RunResult]:
    """Results already in ``path`` (a JSONL file), by key; a torn last line is skipped."""
    out: dict[str, RunResult] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            data["curve"] = [tuple(p) for p in data.get("curve", [])]
            res = RunResult(**data)
        except (json.JSONDecodeError, TypeError):
            continue
        if res.error is None:
            out[res.key] = res
    return out


def collect(cells: Sequence[Cell], settings: Settings, out_dir: Path) -> list[RunResult]:
    """The finished results of ``cells`` already in ``out_dir`` (for a report without runs)."""
    have = load_results(out_dir / "results.jsonl")
    return [have[k] for k in (c.key(settings) for c in cells) if k in have]


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def run_grid(
    cells: Sequence[Cell],
    settings: Settings,
    out_dir: Path,
    *,
    jobs: int = 1,
    on_done: Callable[[RunResult, int, int], None] | None = None,
) -> list[RunResult]:
    """Run the cells not yet in ``out_dir/results.jsonl``, ``jobs`` at a time, appending
    each result as it finishes. Returns the results of every cell (old and new), in
    ``cells`` order. ``on_done(result, done, total)`` reports progress."""
    if jobs < 1:
        raise BenchError(f"jobs must be >= 1, got {jobs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.jsonl"
    have = load_results(path)
    todo = [c for c in cells if c.key(settings) not in have]
    total, done = len(cells), len(cells) - len(todo)

    failed: dict[str, RunResult] = {}

    def record(res: RunResult) -> None:
        nonlocal done
        with path.open("a") as fh:
            fh.write(json.dumps(asdict(res)) + "\n")
        if res.error is None:
            have[res.key] = res
        else:
            failed[res.key] = res
        done += 1
        if on_done is not None:
            on_done(res, done, total)

    if jobs == 1:
        for cell in todo:
            record(run_cell(cell, settings))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_worker_init, initargs=(1,)
        ) as ex:
            pending: set[Future[RunResult]] = {ex.submit(run_cell, c, settings) for c in todo}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    record(fut.result())
    return [have.get(k) or failed[k] for k in (c.key(settings) for c in cells)]


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a rule, bucketing and momentum, with per-attack accuracies."""

    rule: str
    bucketing: bool
    momentum: float
    accuracy: dict[str, list[float]]
    errors: dict[str, str]

    def mean(self, attack: str) -> float | None:
        acc = self.accuracy.get(attack)
        return statistics.fmean(acc) if acc else None

    def spread(self, attack: str) -> float | None:
        acc = self.accuracy.get(attack)
        return statistics.stdev(acc) if acc and len(acc) > 1 else None

    def cell_text(self, attack: str) -> str:
        if attack in self.errors:
            return "error"
        m = self.mean(attack)
        if m is None:
            return ""
        s = self.spread(attack)
        n = len(self.accuracy[attack])
        return f"{100 * m:.1f}" + ("" if s is None else f" ± {100 * s:.1f} ({n} seeds)")

    @property
    def label(self) -> str:
        return self.rule + (f" + bucketing s={BUCKET_SIZE}" if self.bucketing else "")


def table_rows(results: Iterable[RunResult]) -> list[Row]:
    """Group results into rows (first-seen order), accuracies over seeds per attack."""
    rows: dict[tuple[str, bool, float], Row] = {}
    for r in results:
        row = rows.setdefault(
            r.cell.row, Row(r.rule, r.bucketing, r.momentum, accuracy={}, errors={})
        )
        if r.error is not None or r.final_accuracy is None:
            row.errors[r.attack] = r.error or "no accuracy"
        else:
            row.accuracy.setdefault(r.attack, []).append(r.final_accuracy)
    return list(rows.values())


@dataclass(frozen=True, slots=True)
class Verdict:
    """The issue's targets, checked on the measured table."""

    default_min: float | None
    default_ok: bool
    fedavg: dict[str, float | None]
    fedavg_collapses: dict[str, bool]

    @property
    def ok(self) -> bool:
        return self.default_ok and all(self.fedavg_collapses.values())


def verdict(rows: Sequence[Row], attacks: Sequence[str], target: float = DEFAULT_TARGET) -> Verdict:
    """Default rule at >= ``target`` under every attack; FedAvg (momentum 0.9) below
    :data:`COLLAPSE_BELOW` under BF, IPM and ALIE (those that were run)."""
    by = {(r.rule, r.bucketing, r.momentum): r for r in rows}
    default = by.get((*DEFAULT_RULE, 0.9))
    means = [default.mean(a) for a in attacks] if default else [None]
    default_min = None if None in means else min(m for m in means if m is not None)
    fed = by.get(("FedAvg", False, 0.9))
    fed_acc = {a: fed.mean(a) if fed else None for a in FEDAVG_COLLAPSE_ATTACKS if a in attacks}
    return Verdict(
        default_min=default_min,
        default_ok=default_min is not None and default_min >= target,
        fedavg=fed_acc,
        fedavg_collapses={a: v is not None and v < COLLAPSE_BELOW for a, v in fed_acc.items()},
    )


def markdown(rows: Sequence[Row], attacks: Sequence[str]) -> str:
    """The table as Markdown: final test accuracy (%), mean ± sample std over seeds, with
    the paper's published values where it has them."""
    head = ["rule", "momentum", *attacks, "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = PAPER.get((r.rule, r.bucketing, r.momentum), {})
        shown = {a: v for a, v in paper.items() if a in attacks}
        values = set(shown.values())
        if len(shown) > 1 and len(values) == 1:  # one range for several attacks
            ref = f"{values.pop()} ({', '.join(shown)})"
        else:
            ref = ", ".join(f"{a} {v}" for a, v in shown.items())
        cells = [r.cell_text(a) for a in attacks]
        lines.append(f"| {r.label} | {r.momentum:g} | " + " | ".join(cells) + f" | {ref} |")
    return "\n".join(lines)

"""Writing simulation results: the metrics JSON, the timing JSON and an accuracy plot.

A results directory holds ``metrics.json`` (config, summary and per-round metrics; no
timings, so two runs with the same seed give byte-identical files), ``timing.json``
(per-round wall times) and ``accuracy.png`` (test accuracy per round). An existing
non-empty directory is refused unless ``force`` is set, so a finished experiment is never
overwritten by accident.

The plot needs matplotlib (rendered with the non-interactive Agg backend). Without it the
JSON files are still written and :func:`write_results` reports why the PNG is missing.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifer.compute.fl.simulation import SimulationError, SimulationResult

METRICS_FILE = "metrics.json"
TIMING_FILE = "timing.json"
PLOT_FILE = "accuracy.png"
MATPLOTLIB_HINT = "matplotlib is not installed, so no accuracy plot: pip install matplotlib"


class PlottingUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


@dataclass(slots=True)
class WrittenFiles:
    """Paths written by :func:`write_results`, and notes on what was skipped."""

    metrics: Path
    timing: Path
    plot: Path | None
    notes: list[str] = field(default_factory=list)


def prepare_out_dir(out_dir: str | Path, *, force: bool = False) -> Path:
    """Create ``out_dir`` (and parents); refuse an existing non-empty one unless ``force``.

    Call this before a long run so a refusal costs nothing.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise SimulationError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SimulationError(
            f"output directory {path} already exists and is not empty; "
            "choose another --out or pass --force to overwrite"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"cannot create output directory {path}: {exc}") from exc
    return path


def dumps(doc: Any) -> str:
    """Stable JSON text: sorted keys, 2-space indent, no NaN (they are None already)."""
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(result: SimulationResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``timing.json`` into an existing directory."""
    path = Path(out_dir)
    metrics = path / METRICS_FILE
    timing = path / TIMING_FILE
    metrics.write_text(dumps(result.to_dict()), encoding="utf-8")
    timing.write_text(dumps(result.timing_dict()), encoding="utf-8")
    return metrics, timing


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; PlottingUnavailable without matplotlib."""
    try:
        # importlib: matplotlib is optional, so type checkers must not require it
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlottingUnavailable(MATPLOTLIB_HINT) from exc
    matplotlib.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")


def matplotlib_available() -> bool:
    """Whether the accuracy plot can be drawn."""
    try:
        pyplot()
    except PlottingUnavailable:
        return False
    return True


def default_label(result: SimulationResult) -> str:
    """A short legend label: attack vs rule."""
    cfg = result.config
    attack = cfg.attack if cfg.byzantine else "no attack"
    return f"{result.aggregator_rule} / {attack} (f={cfg.byzantine})"


def plot_accuracy(
    results: SimulationResult | Sequence[SimulationResult],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw test accuracy per round (one line per result) into a PNG at ``path``.

    Raises :class:`PlottingUnavailable` without matplotlib.
    """
    runs = [results] if isinstance(results, SimulationResult) else list(results)
    if not runs:
        raise ValueError("plot_accuracy: no results")
    if labels is not None and len(labels) != len(runs):
        raise ValueError("plot_accuracy: one label per result")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for k, res in enumerate(runs):
            xs = [0] + [m.round for m in res.evaluated]
            ys = [res.initial_accuracy] + [float(m.test_accuracy or 0.0) for m in res.evaluated]
            label = labels[k] if labels is not None else default_label(res)
            ax.plot(xs, ys, label=label, linewidth=1.5)
        cfg = runs[0].config
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.set_title(
            title
            or f"{cfg.dataset}, {cfg.partition}, {cfg.clients} clients, model {cfg.model}, "
            f"{cfg.mode}"
        )
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def write_results(
    result: SimulationResult,
    out_dir: str | Path,
    *,
    force: bool = False,
    plot: bool = True,
) -> WrittenFiles:
    """Write the JSON files and (if matplotlib is available) the accuracy PNG."""
    path = prepare_out_dir(out_dir, force=force)
    metrics, timing = write_json(result, path)
    notes: list[str] = []
    png: Path | None = None
    if plot:
        try:
            png = plot_accuracy(result, path / PLOT_FILE)
        except PlottingUnavailable as exc:
            notes.append(str(exc))
    return WrittenFiles(metrics, timing, png, notes)

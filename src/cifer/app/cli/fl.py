"""``cifer fl``: federated-learning experiments without a chain.

``cifer fl simulate`` runs :func:`cifer.compute.fl.simulation.run_simulation` with a
progress bar, prints a summary table and, with ``--out DIR``, writes ``metrics.json``,
``timing.json`` and ``accuracy.png``. ``--privacy secagg|ckks``, ``--clip-norm``,
``--sample-rate`` and ``--dp-*`` aggregate rounds under secure aggregation, CKKS and
client-level DP (:mod:`cifer.compute.fl.private_round`); ``metrics.json`` then has each
round's participants, protocol error and (epsilon, delta). Exit codes: 0 success, 2 bad
input (unknown names, an f the rule cannot tolerate, missing data, a diverging run) with a
one-line message.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(help="Federated learning: simulations of robust aggregation under attack.")
console = Console()
err_console = Console(stderr=True)

BAD_INPUT = 2


def parse_kv(items: list[str] | None, option: str) -> dict[str, object]:
    """``key=value`` strings to a dict; values are parsed as JSON (numbers, true/false,
    null, quoted strings), else kept as plain strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        if key in out:
            raise typer.BadParameter(f"{key!r} given twice", param_hint=option)
        value: Any
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, list | dict):
            value = raw
        out[key] = value
    return out


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(BAD_INPUT)


@app.command()
def simulate(
    dataset: str = typer.Option("digits", help="digits, breast_cancer, mnist, ..."),
    partition: str = typer.Option("iid", help="iid, dirichlet:ALPHA, sorted, shards:S."),
    clients: int = typer.Option(10, help="Number of clients n."),
    byzantine: int = typer.Option(0, help="Byzantine clients f (clients 0..f-1)."),
    attack: str = typer.Option("none", help="Attack name (or none, label_flip)."),
    attack_param: list[str] | None = typer.Option(
        None, "--attack-param", help="Attack parameter key=value (repeatable)."
    ),
    aggregator: str = typer.Option("fedavg", help="Aggregation rule (aliases: cclip, ...)."),
    agg_param: list[str] | None = typer.Option(
        None, "--agg-param", help="Rule parameter key=value, e.g. tau=1.0 (repeatable)."
    ),
    agg_f: int | None = typer.Option(None, help="f told to the rule (default: --byzantine)."),
    model: str = typer.Option("mlp", help="logreg, mlp, mlp:H, sklearn, sklearn_logreg, cnn."),
    rounds: int = typer.Option(20, help="Communication rounds."),
    fedsgd: bool = typer.Option(
        False, "--fedsgd/--fedavg", help="FedSGD with worker momentum, or FedAvg (default)."
    ),
    momentum: float = typer.Option(0.9, help="FedSGD worker momentum beta in [0, 1)."),
    local_epochs: int = typer.Option(1, help="FedAvg local epochs per round."),
    local_steps: int | None = typer.Option(None, help="FedAvg local steps (overrides epochs)."),
    lr: float = typer.Option(0.1, help="Client SGD step (FedAvg) or server step (FedSGD)."),
    server_lr: float = typer.Option(1.0, help="FedAvg server step on the aggregate delta."),
    batch_size: int = typer.Option(32, help="Minibatch size."),
    eval_every: int = typer.Option(1, help="Evaluate on the test set every k rounds."),
    seed: int = typer.Option(0, help="Seed for every random draw."),
    weighting: str = typer.Option("uniform", help="Client weights: uniform or samples."),
    root_size: int = typer.Option(100, help="Server root dataset size (FLTrust)."),
    data_dir: Path | None = typer.Option(None, help="Dataset root (default $CIFER_DATA_DIR)."),
    download: bool = typer.Option(False, "--download", help="Download missing dataset files."),
    subset: int | None = typer.Option(None, help="Keep at most N samples per split."),
    backend: str = typer.Option("local", help="local (in-process) or ray."),
    privacy: str = typer.Option(
        "plain", help="plain, secagg (secure aggregation) or ckks (homomorphic encryption)."
    ),
    privacy_param: list[str] | None = typer.Option(
        None,
        "--privacy-param",
        help="Protocol parameter key=value, e.g. value_bits=16 (secagg) (repeatable).",
    ),
    clip_norm: float | None = typer.Option(
        None, "--clip-norm", "--dp-clip", help="Clip every client update to this L2 norm."
    ),
    sample_rate: float = typer.Option(
        1.0, help="Each client takes part in a round with this probability (Poisson)."
    ),
    dp_epsilon: float | None = typer.Option(
        None, help="Client-level DP: target epsilon after all rounds (calibrates the noise)."
    ),
    dp_noise_multiplier: float | None = typer.Option(
        None, help="Client-level DP with this noise multiplier z (instead of --dp-epsilon)."
    ),
    dp_delta: float = typer.Option(1e-5, help="DP delta."),
    dp_noise: str = typer.Option(
        "central", help="DP noise: central (on the sum) or distributed (among the clients)."
    ),
    dp_min_clients: int | None = typer.Option(
        None, help="Distributed DP: clients whose noise shares make the full noise (default qN)."
    ),
    out: Path | None = typer.Option(None, help="Results directory (JSON + PNG)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory."),
    plot: bool = typer.Option(True, help="Write accuracy.png (needs matplotlib)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Run a federated-learning experiment and report per-round test accuracy."""
    from cifer.compute.fl.plotting import prepare_out_dir, write_results
    from cifer.compute.fl.simulation import (
        RoundMetrics,
        Simulation,
        SimulationConfig,
        SimulationError,
    )

    cfg_kwargs: dict[str, Any] = {
        "dataset": dataset,
        "partition": partition,
        "clients": clients,
        "byzantine": byzantine,
        "attack": attack,
        "attack_params": parse_kv(attack_param, "--attack-param"),
        "aggregator": aggregator,
        "agg_params": parse_kv(agg_param, "--agg-param"),
        "agg_f": agg_f,
        "model": model,
        "rounds": rounds,
        "mode": "fedsgd" if fedsgd else "fedavg",
        "local_epochs": local_epochs,
        "local_steps": local_steps,
        "momentum": momentum,
        "lr": lr,
        "server_lr": server_lr,
        "batch_size": batch_size,
        "eval_every": eval_every,
        "seed": seed,
        "weighting": weighting,
        "root_size": root_size,
        "data_dir": None if data_dir is None else str(data_dir),
        "download": download,
        "subset": subset,
        "backend": backend,
        "privacy": privacy,
        "privacy_params": parse_kv(privacy_param, "--privacy-param"),
        "clip_norm": clip_norm,
        "sample_rate": sample_rate,
        "dp_epsilon": dp_epsilon,
        "dp_noise_multiplier": dp_noise_multiplier,
        "dp_delta": dp_delta,
        "dp_noise": dp_noise,
        "dp_min_clients": dp_min_clients,
    }
    try:
        cfg = SimulationConfig(**cfg_kwargs)
        cfg.validate()
        if out is not None:
            prepare_out_dir(out, force=force)
        status = (
            contextlib.nullcontext()
            if quiet
            else err_console.status("loading data and building the model", spinner="dots")
        )
        with status:
            sim = Simulation(cfg)
    except SimulationError as exc:
        raise _fail(str(exc)) from None

    progress = Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
    task = progress.add_task("rounds", total=rounds, acc="")

    def on_round(m: RoundMetrics) -> None:
        acc = "" if m.test_accuracy is None else f"acc {m.test_accuracy:.4f}"
        progress.update(task, advance=1, acc=acc)

    try:
        with progress:
            result = sim.run(progress=on_round)
    except SimulationError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None

    console.print(_summary_table(result))
    if out is not None:
        try:
            written = write_results(result, out, force=True, plot=plot)
        except SimulationError as exc:
            raise _fail(str(exc)) from None
        console.print(f"metrics: {written.metrics}")
        console.print(f"timing:  {written.timing}")
        if written.plot is not None:
            console.print(f"plot:    {written.plot}")
        for note in written.notes:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False)


def _summary_table(result: Any) -> Table:
    cfg = result.config
    s = result.summary()
    t = result.timing_summary()
    mode = cfg.mode if cfg.mode == "fedavg" else f"fedsgd (beta={cfg.momentum})"
    table = Table(title="cifer fl simulate", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("setup", f"{cfg.dataset} / {cfg.partition} / {cfg.clients} clients / model {cfg.model}"),
        ("training", f"{mode}, {cfg.rounds} rounds, lr {cfg.lr}, batch {cfg.batch_size}"),
        ("attack", f"{cfg.attack} x {cfg.byzantine}" if cfg.byzantine else "none"),
        ("aggregator", f"{result.aggregator_rule} (f={cfg.f}) {dict(cfg.agg_params) or ''}"),
        ("parameters", f"{result.num_params:,}"),
        ("initial accuracy", _pct(s["initial_accuracy"])),
        ("final accuracy", _pct(s["final_accuracy"])),
        ("best accuracy", _pct(s["best_accuracy"])),
        ("mean accepted / round", f"{s['mean_accepted']:.2f} of {cfg.clients}"),
        ("mean Byzantine accepted", f"{s['mean_byzantine_accepted']:.2f} of {cfg.byzantine}"),
        ("median round time", f"{t['median_wall_s'] * 1e3:.1f} ms"),
        ("median overhead (no training/eval)", f"{t['median_overhead_s'] * 1e3:.2f} ms"),
        ("total time", f"{t['total_wall_s']:.2f} s"),
    ]
    rows[4:4] = _privacy_rows(result)
    for k, v in rows:
        table.add_row(k, v)
    return table


def _privacy_rows(result: Any) -> list[tuple[str, str]]:
    info = result.privacy
    if info is None:
        return []
    cfg = result.config
    clip = "" if info["clip_norm"] is None else f", clip {info['clip_norm']:g}"
    sampling = "" if cfg.sample_rate == 1.0 else f", sample rate {cfg.sample_rate:g}"
    rows = [("privacy", f"{info['mode']}{clip}{sampling}")]
    dp = info.get("dp")
    if dp is not None:
        eps = result.rounds[-1].epsilon
        rows.append(
            (
                "differential privacy",
                f"{dp['noise']} noise, z {dp['noise_multiplier']:.4f}, "
                f"epsilon {eps if eps is not None else float('nan'):.3f} at delta {dp['delta']:g}",
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


@app.command("list")
def list_names() -> None:
    """List datasets, partitions, models, attacks and aggregation rules."""
    from cifer.compute.fl.aggregators import aggregator_names
    from cifer.compute.fl.attacks import attack_names, data_attack_names
    from cifer.compute.fl.data import DATASETS, PARTITION_SPECS
    from cifer.compute.fl.simulation import AGGREGATOR_ALIASES
    from cifer.compute.fl.trainers import MODEL_NAMES

    known = set(aggregator_names())
    aliases = [f"{a}={t}" for a, t in AGGREGATOR_ALIASES.items() if a not in known]
    table = Table(show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("datasets", ", ".join(DATASETS))
    table.add_row("partitions", ", ".join(PARTITION_SPECS))
    table.add_row("models", ", ".join((*MODEL_NAMES, "mlp:H[,H]")))
    table.add_row("attacks", ", ".join(("none", *data_attack_names(), *attack_names())))
    table.add_row("aggregators", ", ".join(aggregator_names()))
    table.add_row("aliases", ", ".join(aliases))
    console.print(table)

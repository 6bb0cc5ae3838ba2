"""``cifer demo``: the whole system in one command (see :mod:`cifer.app.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cifer.app.demo import DemoConfig, DemoResult, RoundRow, run_demo

console = Console()


def demo_command(
    dataset: str = typer.Option(
        "digits", help="digits or breast_cancer (offline), mnist, fashion_mnist (CIFER_DATA_DIR)."
    ),
    attack: str = typer.Option("alie", help="Attack of the Byzantine clients (cifer fl attacks)."),
    rule: str = typer.Option("multi_krum", help="Robust aggregation rule the validators run."),
    clients: int = typer.Option(10, min=2, max=50),
    byzantine: int = typer.Option(3, min=0, help="How many of the clients are Byzantine."),
    rounds: int = typer.Option(8, min=1, max=200),
    partition: str = typer.Option("iid", help="iid, dirichlet:ALPHA or sorted."),
    model: str = typer.Option("mlp:32", help="Trainer recipe (logreg, mlp:H)."),
    seed: int = typer.Option(0),
    report: Path = typer.Option(Path("cifer-demo-report.html"), help="HTML report to write."),
    workdir: Path | None = typer.Option(
        None, help="Keep the localnet here (default: a temp dir, removed)."
    ),
) -> None:
    """Run a federated job on a 4-validator localnet with Byzantine clients, offline."""
    import os

    cfg = DemoConfig(
        dataset=dataset,
        partition=partition,
        clients=clients,
        byzantine=byzantine,
        attack=attack if byzantine else "none",
        rule=rule,
        model=model,
        rounds=rounds,
        seed=seed,
        data_dir=os.environ.get("CIFER_DATA_DIR"),
    )
    if byzantine >= clients:
        raise typer.BadParameter("--byzantine must be below --clients")
    table = Table(title="rounds (each line: a block-committed aggregate, recomputed by >2/3)")
    for col in (
        "round",
        "accuracy",
        "accepted",
        "rejected",
        "stragglers",
        "reputation (c0..)",
        "s",
    ):
        table.add_column(col)

    def on_round(row: RoundRow, res: DemoResult) -> None:
        reps = " ".join(
            f"[{'red' if st == 'Unreliable' else 'green' if st == 'Trusted' else 'white'}]"
            f"{score:.2f}[/]"
            for st, score in (row.reputation[i] for i in sorted(row.reputation))
        )
        console.print(
            f"round {row.round:>3}  acc {row.accuracy:.4f}  accepted {_ids(row.accepted)}  "
            f"rejected {_ids(row.rejected)}  rep {reps}  ({row.seconds:.1f} s)"
        )

    try:
        res = run_demo(
            cfg,
            workdir=workdir,
            report=report,
            on_status=lambda s: console.print(f"[bold]»[/] {s}"),
            on_round=on_round,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from None
    summary = Table(title=f"summary: job {res.job_id}, {res.wall_s:.0f} s")
    summary.add_column("run")
    summary.add_column("final accuracy", justify="right")
    summary.add_row(
        f"on chain, {cfg.rule}, {cfg.byzantine} x {cfg.attack}", f"{res.final_accuracy:.4f}"
    )
    summary.add_row("FedAvg, same attack (simulated)", f"{res.fedavg_attacked:.4f}")
    summary.add_row(f"{cfg.rule}, no attackers (simulated)", f"{res.rule_clean:.4f}")
    console.print(summary)
    prov = res.provenance
    console.print(f"final model asset id [bold]{prov.get('asset_id')}[/]")
    console.print(f"  model {prov.get('model')}  (from initial {prov.get('initial_model')})")
    for r, m in enumerate(prov.get("round_models", [])):
        console.print(f"  round {r}: {m}")
    console.print(f"  contributors: {len(prov.get('contributors', []))} clients")
    last = res.rows[-1] if res.rows else None
    if last is not None:
        states = {st for st, _ in last.reputation.values()}
        console.print(f"reputation states now: {', '.join(sorted(states))}")
    console.print(f"report: {res.report}")


def _ids(ids: list[int]) -> str:
    return ",".join(f"c{i}" for i in ids) or "-"

"""``cifer bench``: benchmarks. Each prints the machine, the command's settings and medians."""

from __future__ import annotations

import os
import platform
import statistics

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks (results and commands are recorded in docs/benchmarks.md).")
console = Console()


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@app.command()
def consensus(
    txs: int = typer.Option(4000, help="Signed ~1 KiB transfers per run."),
    validators: int = typer.Option(4, help="Validators in the simulated network."),
    runs: int = typer.Option(3, help="Repetitions; medians are reported."),
    commit_timeout_ms: int = typer.Option(
        200, help="Virtual wait after a commit before the next height (batches txs)."
    ),
    heights: int = typer.Option(200, help="Empty blocks for the consensus-only rate."),
) -> None:
    """Heights/s and tx/s of the in-process simulator running the real app, signatures on."""
    from cifer.app.bench.consensus import run_bench, run_heights

    if txs < 1 or runs < 1 or validators < 1:
        raise typer.BadParameter("--txs, --runs and --validators must be positive")
    console.print(f"machine: {machine()}")
    results = []
    with console.status("running") as status:
        for i in range(runs):
            status.update(f"run {i + 1}/{runs}: {txs} transfers through {validators} validators")
            results.append(run_bench(txs, validators, seed=i, commit_timeout_ms=commit_timeout_ms))
    table = Table(title=f"cifer bench consensus: {validators} validators, {txs} x 1 KiB transfers")
    for col in ("run", "committed txs", "heights", "wall s", "tx/s", "heights/s"):
        table.add_column(col, justify="right")
    for i, r in enumerate(results):
        table.add_row(
            str(i + 1),
            str(r.txs),
            str(r.heights),
            f"{r.wall_s:.2f}",
            f"{r.tx_per_s:.0f}",
            f"{r.heights_per_s:.1f}",
        )
    table.add_row(
        "median",
        "",
        "",
        f"{statistics.median(r.wall_s for r in results):.2f}",
        f"{statistics.median(r.tx_per_s for r in results):.0f}",
        f"{statistics.median(r.heights_per_s for r in results):.1f}",
    )
    console.print(table)
    console.print(
        f"tx size {results[0].tx_bytes} bytes; commit timeout {commit_timeout_ms} ms (virtual)"
    )
    with console.status("empty blocks"):
        empty = [run_heights(heights, validators, seed=i) for i in range(runs)]
    rates = ", ".join(f"{r.heights_per_s:.0f}" for r in empty)
    console.print(
        f"consensus alone ({heights} empty blocks, commit timeout 0): "
        f"median {statistics.median(r.heights_per_s for r in empty):.0f} heights/s ({rates})"
    )

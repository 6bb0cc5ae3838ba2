"""``cifer localnet``: local networks. ``sim`` and ``soak`` run the deterministic simulator."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cifer.base.chain.genesis import byzantine_tolerance
from cifer.base.consensus.sim.byzantine import BEHAVIOURS
from cifer.base.consensus.sim.runner import SimConfig, SimResult, run

app = typer.Typer(help="Local networks: simulated (sim, soak) and, later, real processes.")
console = Console()


def _behaviours(spec: str) -> tuple[str, ...]:
    if not spec:
        return ()
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    for n in names:
        if n not in BEHAVIOURS:
            raise typer.BadParameter(
                f"unknown behaviour {n!r}; choose from {', '.join(BEHAVIOURS)}"
            )
    return names


def _check_faults(validators: int, byzantine: int, allow_unsafe: bool) -> None:
    if validators < 1:
        raise typer.BadParameter("need at least one validator", param_hint="--validators")
    if not 0 <= byzantine <= validators:
        raise typer.BadParameter("must be between 0 and --validators", param_hint="--byzantine")
    f = byzantine_tolerance(validators)
    if byzantine > f and not allow_unsafe:
        raise typer.BadParameter(
            f"{validators} validators tolerate f={f} Byzantine (N >= 3f+1); pass "
            "--negative-control to run an unsafe configuration on purpose",
            param_hint="--byzantine",
        )


@app.command()
def sim(
    validators: int = typer.Option(4, "--validators", "-n", help="Number of validators."),
    byzantine: int = typer.Option(1, "--byzantine", "-f", help="How many are Byzantine."),
    heights: int = typer.Option(50, help="Stop once every honest validator committed this many."),
    seed: int = typer.Option(0, help="Seed of the whole schedule: same seed, same run."),
    behaviour: str = typer.Option(
        "", help=f"Comma-separated Byzantine behaviours ({', '.join(BEHAVIOURS)}); default random."
    ),
    chaos_ms: int = typer.Option(10_000, help="Virtual ms of drops, delays and partitions."),
    drop: float = typer.Option(0.1, help="Message drop probability during chaos."),
    negative_control: bool = typer.Option(
        False, help="Byzantine twins split the honest validators: must fork if f >= N/3."
    ),
) -> None:
    """Run one simulated network and check agreement, app hashes and liveness."""
    _check_faults(validators, byzantine, negative_control)
    if not 0.0 <= drop < 1.0:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--drop")
    with Progress(
        TextColumn("[bold]simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("heights"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("sim", total=heights)
        cfg = SimConfig(
            validators=validators,
            byzantine=byzantine,
            behaviours=_behaviours(behaviour),
            heights=heights,
            seed=seed,
            chaos_ms=chaos_ms,
            drop=drop,
            split_brain=negative_control,
            on_progress=lambda h: bar.update(task, completed=min(h, heights)),
        )
        t0 = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - t0
    _print_result(result, wall)
    if not result.ok:
        raise typer.Exit(1)


def _print_result(r: SimResult, wall: float) -> None:
    rounds = Counter(r.rounds)
    table = Table(
        title=f"seed {r.seed}: {r.validators} validators, Byzantine {r.byzantine or 'none'}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("honest heights", ", ".join(map(str, r.heights)))
    table.add_row(
        "rounds per height", ", ".join(f"round {k}: {v}" for k, v in sorted(rounds.items()))
    )
    if r.rounds:
        table.add_row("mean rounds per height", f"{statistics.mean(x + 1 for x in r.rounds):.2f}")
    table.add_row("evidence committed", str(r.evidence))
    table.add_row("txs submitted", str(r.txs))
    table.add_row("messages sent / dropped", f"{r.messages} / {r.dropped}")
    table.add_row("virtual time", f"{r.virtual_ms / 1000:.1f} s")
    table.add_row("wall time", f"{wall:.2f} s")
    console.print(table)
    checks = [
        (
            "agreement (no two honest blocks at one height)",
            not any(v.startswith("agreement") for v in r.violations),
        ),
        ("same app hash at every height", not any(v.startswith("app hash") for v in r.violations)),
        ("liveness after the network calms", r.live),
    ]
    for name, ok in checks:
        if name.startswith("liveness") and not r.safe:
            console.print(f"  [yellow]n/a[/]  {name} (not checked: safety already broken)")
            continue
        console.print(f"  {'[green]PASS' if ok else '[red]FAIL'}[/] {name}")
    for v in r.violations:
        console.print(f"  [red]{v}")


@app.command()
def soak(
    schedules: int = typer.Option(2000, help="Random schedules per validator count."),
    validators: str = typer.Option("4,7", help="Comma-separated validator counts."),
    heights: int = typer.Option(4, help="Heights per schedule."),
    first_seed: int = typer.Option(0, help="Seeds run from here upward."),
) -> None:
    """Many random schedules (f = (N-1)//3 Byzantine of N); exits 1 on any violation."""
    counts = [int(x) for x in validators.split(",") if x.strip()]
    failures: list[SimResult] = []
    total = schedules * len(counts)
    by_behaviour: Counter[str] = Counter()
    rounds: list[int] = []
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]soak"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("soak", total=total)
        for n in counts:
            for seed in range(first_seed, first_seed + schedules):
                r = run(
                    SimConfig(
                        validators=n, byzantine=byzantine_tolerance(n), heights=heights, seed=seed
                    )
                )
                for b in r.byzantine:
                    by_behaviour[b.split(":", 1)[1]] += 1
                rounds.extend(r.rounds)
                if not r.ok:
                    failures.append(r)
                bar.advance(task)
    wall = time.perf_counter() - t0
    console.print(
        f"{total} schedules ({', '.join(f'N={n}' for n in counts)}) in {wall:.0f} s: "
        f"{total - len(failures)} passed, {len(failures)} failed"
    )
    console.print(
        "Byzantine behaviours exercised: "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_behaviour.items()))
    )
    if rounds:
        mean = statistics.mean(x + 1 for x in rounds)
        console.print(f"heights committed: {len(rounds)}, mean rounds per height {mean:.3f}")
    for r in failures[:20]:
        console.print(f"[red]N={r.validators} seed={r.seed} {r.byzantine}: {r.violations}")
    if failures:
        raise typer.Exit(1)


@app.command("init")
def init_cmd(
    validators: int = typer.Option(4, "--validators", "-n", help="Number of validator nodes."),
    directory: Path = typer.Option(Path(".localnet"), "--dir", help="Where the homes go."),
    chain_id: str = typer.Option("cifer-localnet", help="Chain id."),
    accounts: int = typer.Option(100, help="Funded test accounts (keys: account_key(i))."),
    fault_injection: bool = typer.Option(False, help="Enable POST /debug/isolate (tests only)."),
    base_port: int = typer.Option(
        26656, help="Node i listens on p2p base+10i and API base+10i+1; 0 picks free ports."
    ),
) -> None:
    """Write a genesis and N node homes on free loopback ports, fully meshed."""
    from cifer.app.node.localnet import init_localnet

    try:
        spec = init_localnet(
            directory,
            validators,
            chain_id=chain_id,
            accounts=accounts,
            fault_injection=fault_injection,
            base_port=base_port,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"localnet [bold]{spec.chain_id}[/] with {validators} validators in {directory}")
    for n in spec.nodes:
        console.print(f"  {n.moniker}: api {n.api}  p2p 127.0.0.1:{n.p2p_port}  home {n.home}")
    console.print(f"start it with: cifer localnet start --dir {directory}")


@app.command("start")
def start_cmd(
    directory: Path = typer.Option(Path(".localnet"), "--dir", help="The localnet directory."),
    wait: float = typer.Option(60.0, help="Seconds to wait for every API to answer."),
) -> None:
    """Start every node process (in the background) and print their API URLs."""
    from cifer.app.node.localnet import Localnet

    try:
        net = Localnet.open(directory)
        net.start(wait)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    for n in net.spec.nodes:
        console.print(f"  {n.moniker}: {n.api}  (log: {Path(n.home) / 'node.log'})")
    console.print(f"stop it with: cifer localnet stop --dir {directory}")


@app.command("stop")
def stop_cmd(
    directory: Path = typer.Option(Path(".localnet"), "--dir", help="The localnet directory."),
) -> None:
    """Stop every node process (SIGTERM, then SIGKILL after 10 s)."""
    from cifer.app.node.localnet import Localnet

    try:
        Localnet.open(directory).stop()
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print("stopped")

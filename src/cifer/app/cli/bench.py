"""``cifer bench``: benchmarks. Each prints the machine, the command's settings and medians."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.status import Status
from rich.table import Table

from cifer.app.bench import robustness as rb
from cifer.app.bench.robustness import ATTACKS, RULES

app = typer.Typer(help="Benchmarks (results and commands are recorded in docs/benchmarks.md).")
console = Console(width=max(120, Console().width))


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


@app.command()
def ledger(
    validators: int = typer.Option(4, help="Validator processes in the localnet."),
    rate: str = typer.Option("1000", help="Offered tx/s; comma-separated for a sweep."),
    duration: float = typer.Option(20.0, help="Seconds of offered load per rate."),
    accounts: int = typer.Option(1000, help="Sending accounts (each sticks to one node)."),
) -> None:
    """Committed tx/s and commit latency of a real localnet under offered load."""
    from cifer.app.bench.ledger import run_ledger_bench, summarize

    try:
        rates = [int(x) for x in rate.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter("rates must be integers, e.g. 500,1000,1500") from None
    if not rates or min(rates) < 1 or duration <= 0 or validators < 1:
        raise typer.BadParameter("--rate, --duration and --validators must be positive")
    console.print(f"machine: {machine()}")
    table = Table(title=f"cifer bench ledger: {validators} validators, 1 KiB transfers")
    for col in (
        "offered tx/s",
        "committed tx/s",
        "p50 s",
        "p95 s",
        "max s",
        "blocks/min",
        "rounds/height",
        "committed/accepted",
    ):
        table.add_column(col, justify="right")
    for r in rates:
        with console.status(f"rate {r}") as status:
            res = run_ledger_bench(
                r,
                duration,
                validators,
                accounts,
                progress=_progress(status, r),
            )
        s = summarize(res)
        table.add_row(
            f"{s['offered_tx_s']:.0f}",
            f"{s['committed_tx_s']:.0f}",
            f"{s['p50_s']:.2f}",
            f"{s['p95_s']:.2f}",
            f"{s['max_s']:.2f}",
            f"{s['blocks_per_min']:.0f}",
            f"{s['rounds_per_height']:.2f}",
            f"{res.committed}/{res.accepted}",
        )
        if res.rejected_logs:
            console.print(f"rate {r}: rejected at admission: {res.rejected_logs}")
    console.print(table)


def _progress(status: Status, rate: int) -> Callable[[str], None]:
    return lambda m: status.update(f"rate {rate}: {m}")


@app.command()
def aggregation(
    clients: int = typer.Option(50, help="Clients (rows of the update matrix)."),
    byzantine: int = typer.Option(10, help="Byzantine clients among them (f)."),
    dim: int = typer.Option(1_000_000, help="Parameters per update (float32)."),
    runs: int = typer.Option(3, help="Repetitions; medians are reported."),
    seed: int = typer.Option(0, help="Seed of the synthetic updates."),
) -> None:
    """Our aggregation rules vs Flower's (and byzfl's) on identical inputs, in one process."""
    from cifer.app.bench import aggregation as agg
    from cifer.compute.fl.aggregators.base import LANES, lane_threads

    if clients < 1 or dim < 1 or runs < 1 or not 0 <= byzantine < clients:
        raise typer.BadParameter("need --clients, --dim, --runs >= 1, 0 <= --byzantine < clients")
    console.print(f"machine: {machine()}")
    if agg.load_flower() is None:
        console.print(
            "[yellow]Flower (flwr) is not installed, so only our rules are timed. Install the "
            "benchmark extra to compare: pip install -e '.\\[bench]'[/yellow]"
        )
    if agg.load_byzfl() is None:
        console.print("byzfl is not installed (or lacks torch/scipy): no byzfl column.")
    load_before = os.getloadavg()[0]
    with console.status("running") as status:
        report = agg.run(clients, byzantine, dim, runs, seed, progress=status.update)
    load_after = os.getloadavg()[0]

    def secs(v: float | None) -> str:
        return "" if v is None else f"{v:.3g}"

    def times(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}x"

    def agreement(a: agg.Agreement | None) -> str:
        if a is None:
            return ""
        if a.ok is None:
            return "differs: see docs"
        diff = "n/a" if a.max_abs_diff is None else f"{a.max_abs_diff:.1e}"
        return f"{diff} ok" if a.ok else f"{diff} MISMATCH"

    table = Table(
        title=f"cifer bench aggregation: n={report.n}, f={report.f}, d={report.d:,} float32, "
        f"median of {report.runs} runs"
    )
    headers = (
        "rule",
        "ours (s)",
        "Flower (s)",
        "ratio",
        "target",
        "ours 1 thread (s)",
        "ratio",
        "byzfl (s)",
        "ratio",
    )
    for col in headers:
        table.add_column(col, justify="left" if col == "rule" else "right")
    table.add_column("max |Δ| Flower", justify="right")
    table.add_column("max |Δ| byzfl", justify="right")
    for row in report.rows:
        target = row.target
        met = row.meets_target
        tgt = "" if target is None else f"{target:.0f}x " + ("met" if met else "MISSED")
        table.add_row(
            row.rule,
            secs(row.ours),
            secs(row.flower_median),
            times(row.ratio),
            tgt,
            secs(row.ours_one_thread),
            times(row.ratio_one_thread),
            secs(row.byzfl_median),
            times(row.byzfl_ratio),
            agreement(row.flower),
            agreement(row.byzfl),
        )
    console.print(table)
    console.print(
        f"versions: flwr {report.flower_version or 'not installed'}, "
        f"byzfl {report.byzfl_version or 'not installed'}; BLAS limited to 1 thread for all "
        f"(threadpoolctl); agreement = np.allclose(rtol={agg.RTOL:g}, atol={agg.ATOL:g})"
    )
    console.print(
        f"ours: {LANES} column lanes on {lane_threads()} thread(s) (CIFER_AGG_THREADS); "
        "'ours 1 thread' runs the same lanes one after another (identical output, checked)"
    )
    console.print(
        f"inputs: {report.n - report.f} honest (mean ~ N(0,1) + N(0,1) noise), "
        f"{report.n_alie} ALIE, {report.f - report.n_alie} large-noise (sd "
        f"{agg.NOISE_ATTACK_STD:g}); Flower gets {agg.NUM_LAYERS} flat layers per client "
        f"(views of the same rows), 1 example each"
    )
    console.print(
        f"building the {report.n} x {report.d:,} matrix from per-client layer lists: "
        f"{report.pack_median:.3f} s (not in our times; Flower's functions flatten inside theirs)"
    )
    for row in report.rows:
        notes = [c for c in (row.flower_config, row.byzfl_config) if c]
        if row.byzfl is not None and row.byzfl.note:
            notes.append(row.byzfl.note)
        if notes:
            console.print(f"  {row.rule}: " + "; ".join(notes))
    console.print("seconds per run (ours | ours 1 thread | Flower | byzfl):")
    for row in report.rows:
        cols = [row.ours_s, row.ours_one_thread_s, row.flower_s, row.byzfl_s]
        console.print(
            f"  {row.rule}: " + " | ".join(" ".join(f"{t:.3g}" for t in ts) or "-" for ts in cols)
        )
    console.print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after")
    tm = report.torch_median
    if tm is not None:
        console.print(
            f"byzfl Median, torch backend (1 thread): {tm.seconds:.3f} s; max |Δ| vs ours "
            f"{tm.vs_ours.max_abs_diff:.1e} ({'ok' if tm.vs_ours.ok else 'differs'}), vs the "
            f"lower median {tm.vs_lower_median.max_abs_diff:.1e} "
            f"({'ok' if tm.vs_lower_median.ok else 'differs'})"
        )
    for line in report.skipped:
        console.print(f"skipped {line}")


@app.command()
def simulate(
    clients: int = typer.Option(100, help="Clients (Flower: simulated SuperNodes)."),
    rounds: int = typer.Option(10, help="FedAvg rounds per run; round 1 is warm-up."),
    runs: int = typer.Option(3, help="Repetitions (ours then Flower's each); medians."),
    dataset: str = typer.Option(
        "mnist", help="mnist, fashion_mnist (from CIFER_DATA_DIR) or digits (offline)."
    ),
    local_steps: int = typer.Option(10, help="Local SGD steps (batch 32) per client per round."),
    seed: int = typer.Option(0, help="Seed of the partition, model and minibatches."),
    data_dir: str | None = typer.Option(None, help="Dataset root (default $CIFER_DATA_DIR)."),
    ours_only: bool = typer.Option(False, "--ours-only", help="Skip Flower (no flwr needed)."),
    flower_client_cpus: float = typer.Option(
        2.0, help="Flower's client_resources num_cpus (its default 2: one actor on 2 cores)."
    ),
) -> None:
    """Time per round of our simulation vs Flower's simulation engine, same FedAvg workload."""
    from rich.markup import escape

    from cifer.app.bench import simulate as sim
    from cifer.compute.fl.simulation import SimulationError

    workload = sim.Workload(
        dataset=dataset,
        clients=clients,
        rounds=rounds,
        local_steps=local_steps,
        seed=seed,
        data_dir=data_dir,
    )
    try:
        workload.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if runs < 1 or flower_client_cpus <= 0:
        raise typer.BadParameter("--runs and --flower-client-cpus must be positive")
    console.print(f"machine: {machine()}")
    load_before = os.getloadavg()[0]
    try:
        with console.status("running") as status:
            report = sim.run(
                workload,
                runs,
                flower=not ours_only,
                client_cpus=flower_client_cpus,
                progress=status.update,
            )
    except (sim.FlowerUnavailable, sim.BenchError, SimulationError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    load_after = os.getloadavg()[0]

    def secs(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    def times(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}x"

    last = f"2..{rounds}" if rounds > 2 else "2"
    table = Table(
        title=f"cifer bench simulate: {clients} clients, {dataset}, {workload.model} "
        f"({report.num_params:,} parameters), FedAvg, {local_steps} local steps; "
        f"medians of rounds {last}, median of {runs} runs"
    )
    for col in (
        "engine",
        "round s",
        "training s",
        "overhead s",
        "round 1 s",
        "run total s",
        "final acc",
    ):
        table.add_column(col, justify="left" if col == "engine" else "right")
    engines = [("ours", "ours")] + ([("flower", "Flower")] if report.flower else [])
    for key, label in engines:
        runs_of = report.ours if key == "ours" else report.flower
        table.add_row(
            label,
            secs(report.median(key, "round_s")),
            secs(report.median(key, "train_s")),
            secs(report.median(key, "overhead_s")),
            secs(report.median(key, "first_round_s")),
            f"{report.median(key, 'total_s'):.1f}",
            " ".join(f"{r.final_accuracy:.4f}" for r in runs_of),
        )
    if report.flower:
        table.add_row(
            "ours / Flower",
            times(report.ratio("round_s")),
            times(report.ratio("train_s")),
            times(report.ratio("overhead_s")),
            times(report.ratio("first_round_s")),
            times(report.ratio("total_s")),
            "",
        )
    console.print(table)
    if report.flower:
        ratio = report.ratio("overhead_s")
        met = "met" if report.meets_target else "MISSED"
        console.print(
            f"target: our overhead <= {sim.TARGET_OVERHEAD_RATIO:g} x Flower's: {met} "
            f"(ours/Flower = {times(ratio)})"
        )
        gap = sim.final_accuracy_gap(report)
        console.print(
            f"same training check: max |final accuracy ours - Flower| = {gap:.4f}; "
            f"flwr {report.flower_version}, Ray backend, client_resources num_cpus "
            f"{flower_client_cpus:g} -> {report.flower[0].workers} actor(s)"
        )
    console.print("per run, medians (round | training | overhead s):")
    for key, label in engines:
        runs_of = report.ours if key == "ours" else report.flower
        cells = ", ".join(
            f"{r.round_s:.4f} | {r.train_s:.4f} | {r.overhead_s:.4f}" for r in runs_of
        )
        console.print(f"  {label}: {cells}")
    console.print(
        "round = ours: simulator's per-round wall time minus evaluation; Flower: time "
        "between the strategy's evaluate_fn calls; training = clients' local-training "
        "compute (ours: train_s; Flower: sum over clients, timed in the ClientApp); "
        "overhead = round - training"
    )
    console.print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after")


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def robustness(
    out: Path = typer.Option(
        Path("bench-robustness"), help="Folder for results.jsonl (resumable) and table.md."
    ),
    quick: bool = typer.Option(
        False, help="A few-minute check: 3 attacks, FedAvg vs the default rule, MNIST subset."
    ),
    attacks: str = typer.Option(",".join(ATTACKS), help="Comma-separated attacks."),
    rules: str = typer.Option(
        ",".join(RULES), help="Comma-separated rules (the default rule runs with more seeds)."
    ),
    momentum0_rules: str = typer.Option(
        "Krum,CClip", help="Rules also run with momentum 0 (no bucketing); '' for none."
    ),
    seeds: int = typer.Option(3, help="Seeds for the default rule (others run seed 0)."),
    rounds: int = typer.Option(600, help="FedSGD rounds per run."),
    model: str = typer.Option("cnn_small", help="Model (cnn = the paper's 1.2M-param CNN)."),
    dataset: str = typer.Option("mnist", help="Dataset (MNIST in $CIFER_DATA_DIR)."),
    data_dir: str | None = typer.Option(None, help="Dataset folder (default $CIFER_DATA_DIR)."),
    jobs: int = typer.Option(
        min(2, os.cpu_count() or 1), help="Runs in parallel (one torch thread each)."
    ),
    report_only: bool = typer.Option(
        False, help="Print the table from the results already in --out; run nothing."
    ),
) -> None:
    """Final test accuracy of robust rules under attacks (Karimireddy et al., ICLR 2022)."""
    if rounds < 1:
        raise typer.BadParameter("--rounds must be >= 1")
    subset: int | tuple[int, int] | None = None
    if quick:
        attacks, momentum0_rules, seeds = "BF,IPM,ALIE", "", 1
        rules = f"FedAvg,{rb.DEFAULT_RULE[0]}"
        rounds, subset = min(rounds, 200), (12_000, 2_000)
    try:
        cells = rb.grid(
            _names(attacks),
            _names(rules),
            seeds=seeds,
            momentum0_rules=_names(momentum0_rules),
        )
        if quick:
            cells = [
                c for c in cells if (c.rule, c.bucketing) in (("FedAvg", False), rb.DEFAULT_RULE)
            ]
        settings = rb.Settings(
            rounds=rounds,
            model=model,
            dataset=dataset,
            subset=subset,
            eval_every=max(1, rounds // 12),
            data_dir=data_dir,
        )
    except rb.BenchError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"machine: {machine()}; {len(cells)} runs of {rounds} rounds, {jobs} at a time")
    console.print(
        f"model {model}, {dataset}, 25 clients (5 Byzantine, IID shards), honest label-sorted, "
        f"batch 32, lr 0.01 (heavy-ball units), results in {out}/results.jsonl"
    )
    t0 = time.perf_counter()
    if report_only:
        results = rb.collect(cells, settings, out)
        console.print(f"{len(results)} of {len(cells)} runs found in {out}/results.jsonl")
    else:
        results = _run_robustness(cells, settings, out, jobs)
    attack_list = list(dict.fromkeys(c.attack for c in cells))
    rows = rb.table_rows(results)
    text = rb.markdown(rows, attack_list)
    (out / "table.md").write_text(text + "\n")
    console.print(text)
    v = rb.verdict(rows, attack_list)
    if v.default_min is not None:
        state = "met" if v.default_ok else "MISSED"
        console.print(
            f"default rule ({rb.DEFAULT_RULE[0]} + bucketing, momentum 0.9): worst attack "
            f"{100 * v.default_min:.1f}% (target {100 * rb.DEFAULT_TARGET:.0f}%: {state})"
        )
    for attack, acc in v.fedavg.items():
        if acc is None:
            console.print(f"FedAvg under {attack}: not run yet")
            continue
        verdict = "collapses" if v.fedavg_collapses[attack] else "does not collapse"
        console.print(
            f"FedAvg under {attack}: {100 * acc:.1f}% ({verdict}; collapse = below "
            f"{100 * rb.COLLAPSE_BELOW:.0f}%)"
        )
    console.print(f"wall time {time.perf_counter() - t0:.0f} s (this invocation)")


def _run_robustness(
    cells: list[rb.Cell], settings: rb.Settings, out: Path, jobs: int
) -> list[rb.RunResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("runs", total=len(cells))

        def done(res: rb.RunResult, n: int, total: int) -> None:
            acc = "error" if res.final_accuracy is None else f"{100 * res.final_accuracy:.1f}%"
            bar.update(task, completed=n, description=f"{res.rule} {res.attack}: {acc}")
            if res.error:
                bar.console.print(f"[red]{res.key}: {res.error}[/red]")

        try:
            results = rb.run_grid(cells, settings, out, jobs=jobs, on_done=done)
        except rb.BenchError as exc:
            raise typer.BadParameter(str(exc)) from exc
        bar.update(task, completed=len(cells))
    return results


@app.command()
def onchain(
    clients: int = typer.Option(10, min=2, max=50),
    hidden: int = typer.Option(128, min=1, help="MLP width on 784 inputs (128: 101,770 params)."),
    rounds: int = typer.Option(5, min=1, max=100),
    runs: int = typer.Option(3, min=1, max=20),
    rule: str = typer.Option("multi_krum"),
    byzantine: int = typer.Option(3, min=0, help="f the rule is told (no client attacks)."),
) -> None:
    """Per-round overhead of an on-chain round (no local training) on 4 validators."""
    from cifer.app.bench.onchain import run_onchain

    res = run_onchain(
        clients=clients,
        hidden=hidden,
        rounds=rounds,
        runs=runs,
        rule=rule,
        byzantine=byzantine,
        on_status=lambda s: console.print(s),
    )
    table = Table(title=f"on-chain round vs in-process aggregation ({machine()})")
    for col in ("clients", "params", "rule", "on-chain round s", "in-process agg s", "ratio"):
        table.add_column(col)
    table.add_row(
        str(res.clients),
        f"{res.params:,}",
        res.rule,
        f"{res.round_median:.3f}",
        f"{res.engine_median:.4f}",
        f"{res.round_median / res.engine_median:.1f}x",
    )
    console.print(table)
    console.print(
        f"medians of {runs} runs; each run's on-chain figure is the median of {rounds} rounds"
    )


@app.command()
def assets(
    count: int = typer.Option(10_000, "--assets", min=10, help="Assets to register."),
    per_block: int = typer.Option(100, "--per-block", min=1, help="Registrations per block."),
    depth: int = typer.Option(50, "--depth", min=2, help="Length of derived-from chains."),
    samples: int = typer.Option(20, "--samples", min=1, help="Assets sampled per query."),
    home: Path = typer.Option(None, "--home", help="Keep the chain here (default: temporary)."),
) -> None:
    """Provenance queries and light-client proof verification on a chain of N assets."""
    from rich.progress import Progress

    from cifer.app.bench.assets import run_assets_bench

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("registering assets", total=count)
        res = run_assets_bench(
            count,
            per_block,
            depth,
            samples,
            home=home,
            on_progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(
        f"{res.assets:,} assets in {res.blocks} blocks ({res.per_block}/block), built in "
        f"{res.build_s:.1f} s ({res.assets / res.build_s:,.0f} registrations/s) on {machine()}"
    )
    t = Table(title="provenance queries (median over sampled assets)")
    t.add_column("query")
    t.add_column("ms", justify="right")
    for name, ms in res.query_ms.items():
        t.add_row(name, f"{ms:.2f}")
    console.print(t)
    console.print(
        f"ancestors of a deepest asset: {res.ancestors_found} edges; descendants of a root: "
        f"{res.descendants_found} edges"
    )
    t = Table(title="proof of a registration record")
    t.add_column("step")
    t.add_column("time", justify="right")
    t.add_row("build Merkle proof (node)", f"{res.proof_build_ms:.2f} ms")
    t.add_row(
        f"light client from genesis: {res.light_headers} headers, "
        f"{res.light_signatures} signatures, then the proof",
        f"{res.light_from_genesis_s * 1e3:.1f} ms ({res.per_header_us:.0f} µs/header)",
    )
    t.add_row("proof alone (headers already trusted)", f"{res.proof_only_ms:.3f} ms")
    console.print(t)


@app.command()
def privacy(
    clients: str = typer.Option("10,50", help="Client counts, comma-separated."),
    params: str = typer.Option("100000,1000000", help="Parameters per update, comma-separated."),
    runs: int = typer.Option(3, min=1, help="Repetitions; medians are reported."),
    modes: str = typer.Option("plain,secagg,ckks", help="Privacy modes, comma-separated."),
    flower: bool = typer.Option(True, "--flower/--no-flower", help="Also time Flower's SecAgg+."),
    dropout: float = typer.Option(0.1, help="Fraction of clients dropping in the drop rows."),
    seed: int = typer.Option(0, help="Seed of the updates and of who drops."),
    json_path: Path | None = typer.Option(None, "--json", help="Write every raw timing here."),
) -> None:
    """Per-round time and bytes per client of plain, secagg and ckks rounds (no training),
    with Flower's SecAgg+ against its plaintext round side by side."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from cifer.app.bench import privacy as pv

    try:
        ns = pv.parse_ints(clients, "--clients")
        ds = pv.parse_ints(params, "--params")
        mode_list = pv.parse_modes(modes)
    except pv.BenchError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"machine: {machine()}")
    if flower and not pv.flower_available():
        console.print(
            "[yellow]Flower (flwr) is not installed: no Flower columns. Install the "
            "benchmark extra to compare: pip install -e '.\\[bench]'[/yellow]"
        )
    load_before = os.getloadavg()[0]
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("runs", total=len(ns) * len(ds) * runs)

        def show(text: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=text)

        try:
            report = pv.run(
                ns,
                ds,
                runs,
                mode_list,
                flower=flower,
                dropout=dropout,
                seed=seed,
                progress=show,
                machine=machine(),
            )
        except pv.BenchError as exc:
            raise typer.BadParameter(str(exc)) from None
    load_after = os.getloadavg()[0]

    def secs(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    def ms(v: float | None) -> str:
        return "" if v is None else f"{1e3 * v:.1f}"

    def times(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}x"

    def size(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.0f} kB"

    for cfg in report.configs:
        table = Table(
            title=f"cifer bench privacy: n={cfg.n}, d={cfg.d:,}, median of {runs} runs "
            f"(secagg degree {cfg.degree}, threshold {cfg.threshold}; drop = {cfg.dropped} "
            "clients leave after sharing keys)"
        )
        table.add_column("mode", no_wrap=True)
        for col in ("round s", "client ms", "server s", "vs plain", "up", "down"):
            table.add_column(col, justify="right")
        for col in ("Flower s", "F client ms", "F server s", "F vs plain", "F up", "F down"):
            table.add_column(col, justify="right", style="cyan")
        for row in pv.ROWS:
            if row not in cfg.rows:
                continue
            cells: list[str] = [row]
            for name in (row, pv.FLOWER_ROW.get(row)):
                if name is None or name not in cfg.rows or not cfg.rows[name].runs:
                    cells += [""] * 6
                    continue
                cells += [
                    secs(cfg.median(name)),
                    ms(cfg.median(name, "per_client_s")),
                    secs(cfg.median(name, "server_s")),
                    times(cfg.ratio(name)),
                    size(cfg.median(name, "bytes_up")),
                    size(cfg.median(name, "bytes_down")),
                ]
            table.add_row(*cells)
        console.print(table)
        for note in cfg.notes:
            console.print(f"  {note}")
        for name, mr in cfg.rows.items():
            if mr.note:
                console.print(f"  {name}: {mr.note}")
            if mr.runs:
                errs = max(r.max_abs_err for r in mr.runs)
                exact = [r.exact for r in mr.runs if r.exact is not None]
                check = f"; unmasked sum exact: {all(exact)}" if exact else ""
                rounds = " ".join(f"{r.round_s:.3f}" for r in mr.runs)
                console.print(
                    f"  {name}: rounds {rounds} s; max |mean - float mean| {errs:.1e}{check}"
                )
        if cfg.ckks_setup_s is not None:
            console.print(
                f"  ckks per-job setup (keys, sealing to {cfg.n - 1} clients, opening, "
                f"public context): {cfg.ckks_setup_s:.2f} s, not in the round"
            )
    for mode, target, ratio, met in report.verdicts():
        state = "not run" if met is None else ("met" if met else "MISSED")
        n, d = pv.TARGET_CONFIG
        console.print(
            f"target at n={n}, d={d:,}: {mode} <= {target:g}x plain: {state} ({times(ratio)})"
        )
    console.print(
        "round = every client's work (one after another) + one validator's, no local "
        "training; client ms = mean per client; bytes = mean per client per round; "
        f"versions: {', '.join(f'{k} {v}' for k, v in report.versions.items())}"
    )
    console.print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after")
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
        console.print(f"raw timings written to {json_path}")

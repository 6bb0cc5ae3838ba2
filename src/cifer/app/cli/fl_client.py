"""``cifer client``: take part in on-chain FL jobs from the command line.

``cifer client run`` is one client process: it loads a dataset, keeps only its own slice
(``--partition i/n``, cut exactly as the simulator cuts it, so n processes with the same
seed hold disjoint data), builds the trainer the job names and runs
:meth:`cifer.app.sdk.Client.run`. Only update blobs leave the process.
Exit codes: 0 done, 1 the node refused or could not be reached, 2 bad input, 130 stopped.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cifer.app.cli.client import NodeOpt, load_signer, parse_amount
from cifer.app.sdk.client import Client, ClientError, NodeUnreachable, RoundReport, RunResult

app = typer.Typer(
    help="Take part in federated training jobs on a Cifer chain.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)

BAD_INPUT = 2
NODE_ERROR = 1

KeyOpt = typer.Option(..., "--key", help="Key name, or test:N for a localnet test account.")
HomeOpt = typer.Option(None, "--home", help="Keyring home (default ~/.cifer).")
RetryOpt = typer.Option(
    60.0, "--retry", help="Seconds to keep retrying while the node does not answer."
)


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def parse_partition(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n), with the CLI's wording on error."""
    from cifer.compute.fl.data import PartitionError, client_slice

    try:
        return client_slice(text)
    except PartitionError:
        raise typer.BadParameter(
            f"expected i/n with 0 <= i < n, e.g. 0/3; got {text!r}", param_hint="--partition"
        ) from None


def _client_fail(exc: ClientError, node: str) -> typer.Exit:
    if isinstance(exc, NodeUnreachable):
        return _fail(f"cannot reach node {node}: {exc}", NODE_ERROR)
    return _fail(str(exc), NODE_ERROR)


def _fetch_job(client: Client, job_id: int) -> dict[str, Any]:
    try:
        return client.job(job_id)
    except ClientError as exc:
        if exc.status == 404:
            raise _fail(f"no job {job_id} on {client.node}", NODE_ERROR) from None
        raise _client_fail(exc, client.node) from None


def _load_data(dataset: str, data_dir: str | None) -> tuple[Any, Any]:
    from cifer.compute.fl.data import load_dataset

    try:
        return load_dataset(dataset, data_dir=data_dir)
    except (ValueError, OSError) as exc:
        raise _fail(f"dataset {dataset!r}: {exc}") from None


def _fit_shape(x: np.ndarray[Any, Any], shape: list[int], dataset: str) -> np.ndarray[Any, Any]:
    """Reshape inputs to the job's input shape when only the layout differs."""
    want = tuple(int(s) for s in shape)
    if tuple(x.shape[1:]) == want:
        return x
    if math.prod(x.shape[1:]) == math.prod(want):
        return x.reshape(len(x), *want)
    raise _fail(
        f"dataset {dataset!r} has inputs of shape {list(x.shape[1:])}, the job's model "
        f"expects {list(want)}"
    )


@app.command()
def run(
    node: str = NodeOpt,
    key: str = KeyOpt,
    job: int = typer.Option(..., "--job", help="Job id."),
    dataset: str = typer.Option(
        ..., "--dataset", help="digits, breast_cancer, mnist or fashion_mnist."
    ),
    partition: str = typer.Option(
        ..., "--partition", help="This client's slice i/n: part i of the data cut in n."
    ),
    partitioner: str = typer.Option(
        "iid", "--partitioner", help="iid, dirichlet:ALPHA or sorted (as in the simulator)."
    ),
    seed: int = typer.Option(0, "--seed", help="Partition seed; equal on every client."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Dataset files (default $CIFER_DATA_DIR) for MNIST."
    ),
    epochs: int | None = typer.Option(None, help="Local epochs (default: the job's hint)."),
    lr: float | None = typer.Option(None, help="Learning rate (default: the job's hint)."),
    batch: int | None = typer.Option(None, help="Batch size (default: the job's hint)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    timeout: float | None = typer.Option(None, help="Give up after this many seconds."),
    require_privacy: str | None = typer.Option(
        None,
        "--require-privacy",
        help="Refuse the job unless its mode is at least this: secagg, ckks, +dp (e.g. ckks+dp).",
    ),
    retry: float = RetryOpt,
    home: str | None = HomeOpt,
) -> None:
    """Train on your own slice of a dataset for job JOB until it is done. The job's privacy
    mode is followed: under secagg the update leaves masked, under ckks encrypted."""
    from cifer.compute.fl.data import PartitionError, parse_partition_spec
    from cifer.compute.fl.data import partition as split
    from cifer.compute.fl.trainers import TrainerError, make_trainer

    i, n = parse_partition(partition)
    try:
        parse_partition_spec(partitioner)
    except PartitionError as exc:
        raise typer.BadParameter(str(exc), param_hint="--partitioner") from None
    signer = load_signer(key, home)
    with Client(node, signer, retry_s=retry) as client:
        info = _fetch_job(client, job)
        if info["status"] == "done":
            raise _fail(f"job {job} has already finished", NODE_ERROR)
        train, test = _load_data(dataset, data_dir)
        try:
            idx = split(train.y, n, partitioner, seed)[i]
        except PartitionError as exc:
            raise _fail(f"--partition {partition} with {partitioner}: {exc}") from None
        x = _fit_shape(train.x[idx], info["input_shape"], dataset)
        y = train.y[idx]
        if train.num_classes > int(info["num_classes"]):
            raise _fail(
                f"dataset {dataset!r} has {train.num_classes} classes, job {job}'s model "
                f"{info['num_classes']}"
            )
        try:
            trainer = make_trainer(
                info["model"], info["input_shape"], int(info["num_classes"]), seed=seed
            )
        except TrainerError as exc:
            raise _fail(f"job {job}'s model {info['model']!r}: {exc}") from None
        console.print(
            f"client {client.address}: job {job} ({info['name']!r}, {info['rule']}, "
            f"{info['rounds']} rounds), {len(y)} local samples ({dataset} part {i}/{n})",
            highlight=False,
        )

        def report(r: RoundReport) -> None:
            if progress:
                return
            verdict = (
                "not submitted"
                if not r.submitted
                else ("accepted" if r.accepted else "rejected") + f", paid {r.paid} ucif"
            )
            console.print(
                f"round {r.round}: {verdict}; train {r.train_s:.2f} s, "
                f"upload+submit {r.submit_s:.2f} s",
                highlight=False,
            )

        stop = threading.Event()
        try:
            result = client.run(
                job,
                trainer,
                x,
                y,
                epochs=epochs,
                lr=lr,
                batch=batch,
                progress=progress,
                on_round=report,
                stop=stop,
                timeout_s=timeout,
                require_privacy=require_privacy,
            )
        except KeyboardInterrupt:
            stop.set()
            err_console.print("stopped")
            raise typer.Exit(130) from None
        except ClientError as exc:
            raise _client_fail(exc, node) from None
        _summary(client, result, trainer, _fit_shape(test.x, info["input_shape"], dataset), test.y)


def _summary(
    client: Client, result: RunResult, trainer: Any, x: np.ndarray[Any, Any], y: Any
) -> None:
    table = Table(title=f"job {result.job_id}: {result.status}", show_header=False)
    table.add_row("client", result.address)
    table.add_row("rounds submitted", str(result.rounds_submitted))
    table.add_row("rounds skipped", str(result.rounds_skipped))
    accepted = sum(bool(r.accepted) for r in result.rounds)
    table.add_row("accepted by the rule", f"{accepted} of {result.rounds_submitted}")
    table.add_row("earned", f"{sum(r.paid for r in result.rounds)} ucif")
    trained = [r for r in result.rounds if r.train_s > 0]
    if trained:
        table.add_row("median train", f"{np.median([r.train_s for r in trained]):.3f} s")
        table.add_row("median upload+submit", f"{np.median([r.submit_s for r in trained]):.3f} s")
    table.add_row("final model", result.final_model)
    try:
        trainer.set_params(client.model(result.final_model))
        acc = trainer.evaluate(x, y)["accuracy"]
        table.add_row("local test accuracy", f"{acc:.4f} ({len(y)} samples)")
    except (ClientError, ValueError) as exc:
        table.add_row("local test accuracy", f"unavailable: {exc}")
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    console.print(table)


@app.command("job")
def show_job(
    job_id: int = typer.Argument(..., help="Job id."),
    node: str = NodeOpt,
    retry: float = RetryOpt,
) -> None:
    """Print a job: spec, status, current round, model hash, members."""
    from cifer.base.crypto.keys import PrivateKey

    # reads need no key; any key will do for the Client
    with Client(node, PrivateKey.generate(), retry_s=retry) as client:
        console.print_json(data=_fetch_job(client, job_id))


@app.command()
def create(
    node: str = NodeOpt,
    key: str = KeyOpt,
    name: str = typer.Option(..., "--name", help="Job name."),
    dataset: str = typer.Option(
        "digits", "--dataset", help="Dataset that fixes the input shape and classes."
    ),
    model: str = typer.Option("logreg", "--model", help="Trainer recipe: logreg, mlp:H, ..."),
    rule: str | None = typer.Option(
        None, "--rule", help="Aggregation rule (default multi_krum; fedavg under secagg/ckks)."
    ),
    rule_param: list[str] | None = typer.Option(
        None, "--rule-param", help="Rule parameter key=value (repeatable)."
    ),
    byzantine: int = typer.Option(0, "--byzantine", help="f the rule must tolerate."),
    rounds: int = typer.Option(5, "--rounds"),
    min_clients: int = typer.Option(..., "--min-clients"),
    max_clients: int | None = typer.Option(None, "--max-clients"),
    round_blocks: int = typer.Option(20, "--round-blocks", help="Round deadline in blocks."),
    reward: str = typer.Option(..., "--reward", help="Escrowed reward, e.g. 10cif."),
    epochs: int = typer.Option(1, help="Local epochs hint for clients."),
    lr: float = typer.Option(0.1, help="Learning rate hint for clients."),
    batch: int = typer.Option(32, help="Batch size hint for clients."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights."),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    privacy: str = typer.Option(
        "plain", "--privacy", help="plain, secagg (masked sums) or ckks (encrypted sums)."
    ),
    secagg_threshold: int | None = typer.Option(
        None, "--secagg-threshold", help="Shamir/collusion threshold t (default degree/2 + 1)."
    ),
    secagg_degree: int | None = typer.Option(
        None, "--secagg-degree", help="Neighbours per client (default: all, up to 16 clients)."
    ),
    clip: float = typer.Option(
        1.0, "--clip", help="secagg: each update value is clipped to [-clip, clip]."
    ),
    dp_noise: float = typer.Option(
        0.0, "--dp-noise", help="DP noise multiplier z (0: no DP); noise is split among clients."
    ),
    dp_clip: float = typer.Option(1.0, "--dp-clip", help="DP: L2 clip norm C of each update."),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", help="DP: delta."),
    retry: float = RetryOpt,
    home: str | None = HomeOpt,
) -> None:
    """Create a job with freshly initialised weights; prints its id.

    Private modes fix the roster when the job starts (--max-clients = --min-clients) and
    average the clipped updates (robust rules need plaintext)."""
    from cifer.app.cli.fl import parse_kv
    from cifer.compute.fl.trainers import TrainerError, make_trainer

    ucif = parse_amount(reward)
    params = {k: str(v) for k, v in parse_kv(rule_param, "--rule-param").items()}
    if rule is None:
        rule = "multi_krum" if privacy == "plain" else "fedavg"
    secagg, dp = _privacy_params(
        privacy,
        min_clients,
        rounds,
        secagg_threshold,
        secagg_degree,
        clip,
        dp_noise,
        dp_clip,
        dp_delta,
    )
    train, _ = _load_data(dataset, data_dir)
    try:
        trainer = make_trainer(model, train.input_shape, train.num_classes, seed=seed)
    except TrainerError as exc:
        raise _fail(f"model {model!r}: {exc}") from None
    signer = load_signer(key, home)
    with Client(node, signer, retry_s=retry) as client:
        try:
            job_id = client.create_job(
                name=name,
                model=model,
                input_shape=list(train.input_shape),
                num_classes=train.num_classes,
                initial_params=trainer.get_params(),
                rule=rule,
                rule_params=params,
                byzantine=byzantine,
                rounds=rounds,
                min_clients=min_clients,
                max_clients=max_clients,
                round_blocks=round_blocks,
                reward=ucif,
                train={"epochs": epochs, "lr": lr, "batch": batch},
                privacy=privacy,
                secagg=secagg,
                dp=dp,
            )
        except ClientError as exc:
            raise _client_fail(exc, node) from None
    console.print(json.dumps({"job_id": job_id}))


def _privacy_params(
    privacy: str,
    n: int,
    rounds: int,
    threshold: int | None,
    degree: int | None,
    clip: float,
    dp_noise: float,
    dp_clip: float,
    dp_delta: float,
) -> tuple[Any, Any]:
    """SecAggParams and DpConfig from the CLI's numbers, with clear errors."""
    from cifer.compute.privacy.dp import DpConfig, DpError
    from cifer.compute.privacy.secagg import SecAggParams, harary_degree

    if privacy not in ("plain", "secagg", "ckks"):
        raise typer.BadParameter("expected plain, secagg or ckks", param_hint="--privacy")
    secagg = None
    if privacy == "secagg":
        k = degree if degree is not None else (n - 1 if n <= 16 else harary_degree(n))
        if not clip > 0:
            raise typer.BadParameter("must be > 0", param_hint="--clip")
        secagg = SecAggParams(
            threshold=threshold if threshold is not None else k // 2 + 1,
            degree=k,
            clip_micros=round(clip * 1_000_000),
        )
    dp = None
    if dp_noise > 0:
        try:
            dp = DpConfig.of(
                mode="distributed",
                noise_multiplier=dp_noise,
                clip_norm=dp_clip,
                sampling_rate=1.0,
                delta=dp_delta,
                min_clients=n,
                rounds=rounds,
            )
        except DpError as exc:
            raise typer.BadParameter(str(exc), param_hint="--dp-noise") from None
    return secagg, dp

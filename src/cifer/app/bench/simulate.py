"""``cifer bench simulate``: time per round of our in-process FL simulation against
Flower's simulation engine on the same workload, side by side in one process.

Workload (:class:`Workload`). ``clients`` clients (default 100) hold an IID partition of
the dataset's training split (default MNIST, 600 samples each); the model is the NumPy MLP
``mlp`` (784-128-10, 101,770 parameters on MNIST); every round every client loads the
global model, runs ``local_steps`` minibatch SGD steps (batch 32, lr 0.1) and sends its
result; the server takes the sample-weighted mean (FedAvg). Both engines run the same
Cifer trainer (:func:`cifer.compute.fl.trainers.make_trainer` through
:class:`~cifer.compute.fl.trainers.ModelSpec`) on the same partition
(:func:`cifer.compute.fl.simulation.build_clients`) with the same per-client random
streams (:func:`cifer.compute.fl.simulation.client_rng`), from the same initial model,
so they do the same arithmetic; only the float rounding of the mean differs (Flower
averages models in float32, we average deltas). Both limit BLAS to one thread for local
training.

* Ours: :func:`cifer.compute.fl.simulation.run_simulation` (local backend; evaluation only
  after the last round, and left out of the round time).
* Flower 1.41: :func:`flwr.simulation.run_simulation` with the Ray backend, a ServerApp
  running Flower's message-API FedAvg (``fraction_train=1.0``: all clients every round;
  no federated evaluation) and a ClientApp whose train function runs the trainer. Each
  Ray actor loads the dataset and builds the partition once (cached per process, as
  Flower's examples do), so that happens in round 1. Client resources are Flower's
  default (2 CPUs per client), which on a 2-core machine means one actor: clients train
  one after another, as ours do.

Timing. Round time: ours is the simulator's own per-round timing (``wall_s - eval_s``);
Flower's is the time between consecutive calls of the strategy's ``evaluate_fn`` hook,
which ``Strategy.start`` calls before round 1 and after every round (it does nothing
here). Training time is the clients' local training compute: ours is the simulator's
``train_s`` (set parameters, local steps, read parameters, for every client in turn);
Flower's is the sum over the round's clients of the same span, measured inside the
ClientApp (after Flower has decoded the incoming arrays, before it encodes the reply).
Overhead = round time - training time. The first ``WARMUP_ROUNDS`` rounds of every run are
left out (Flower's first round starts the actors and loads the clients' data); each run
reports medians over its remaining rounds, and the report takes the median over runs.
Each run times ours, then Flower, back to back, so machine load hits both alike.

Flower and Ray are optional (``pip install 'cifer[bench]'``); without them
:func:`run_flower` raises :class:`FlowerUnavailable`. Flower's telemetry and Ray's usage
statistics are switched off (environment variables set before the first import, unless
already set), their logs are limited to errors, and Ray is shut down after every run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import statistics
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cifer.compute.fl.aggregators.base import blas_single_thread
from cifer.compute.fl.params import ParamSpec
from cifer.compute.fl.simulation import (
    ClientData,
    SimulationConfig,
    SimulationError,
    build_clients,
    client_rng,
    run_simulation,
)
from cifer.compute.fl.trainers import ModelSpec, Trainer, param_spec

#: Rounds at the start of each run left out of the medians.
WARMUP_ROUNDS = 1
#: Target: our per-round overhead at most this fraction of Flower's.
TARGET_OVERHEAD_RATIO = 0.5
#: Flower's default CPUs per simulated client (``client_resources``).
FLOWER_CLIENT_CPUS = 2.0
INSTALL_HINT = "pip install 'cifer[bench]'"
#: Set (unless already set) before flwr and Ray are imported: no telemetry, no usage stats.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
#: Modules the Flower side needs (``ray`` is flwr's simulation extra).
FLOWER_MODULES = (
    "flwr.app",
    "flwr.clientapp",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.simulation",
    "ray",
)

Progress = Callable[[str], None]


class FlowerUnavailable(RuntimeError):
    """Flower or its Ray simulation extra cannot be imported."""


class BenchError(RuntimeError):
    """A run did not do the expected work (a client failed, rounds are missing)."""


# ------------------------------------------------------------------------------ workload


@dataclass(frozen=True, slots=True)
class Workload:
    """What both engines run. ``data_dir`` None means ``$CIFER_DATA_DIR`` (or the default)."""

    dataset: str = "mnist"
    clients: int = 100
    rounds: int = 10
    local_steps: int = 10
    batch_size: int = 32
    lr: float = 0.1
    model: str = "mlp"
    seed: int = 0
    data_dir: str | None = None

    def validate(self) -> None:
        for name in ("clients", "local_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rounds <= WARMUP_ROUNDS:
            raise ValueError(
                f"rounds must be > {WARMUP_ROUNDS}: the first {WARMUP_ROUNDS} round(s) of each "
                f"run are warm-up and not measured (got {self.rounds})"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def config(self) -> SimulationConfig:
        """Our simulator's config for this workload (FedAvg, no attack, sample weights)."""
        return SimulationConfig(
            dataset=self.dataset,
            partition="iid",
            clients=self.clients,
            aggregator="fedavg",
            mode="fedavg",
            model=self.model,
            rounds=self.rounds,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            eval_every=self.rounds,  # evaluate only after the last round
            weighting="samples",  # FedAvg's weights, as Flower's FedAvg uses
            data_dir=self.data_dir,
        )

    def to_record(self) -> dict[str, int | float | str]:
        """Flat values for a Flower ConfigRecord (no None: data_dir "" means default)."""
        return {
            "dataset": self.dataset,
            "clients": self.clients,
            "rounds": self.rounds,
            "local-steps": self.local_steps,
            "batch-size": self.batch_size,
            "lr": self.lr,
            "model": self.model,
            "seed": self.seed,
            "data-dir": self.data_dir or "",
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Workload:
        """Inverse of :meth:`to_record` (extra keys such as ``server-round`` ignored)."""
        return cls(
            dataset=str(record["dataset"]),
            clients=int(record["clients"]),
            rounds=int(record["rounds"]),
            local_steps=int(record["local-steps"]),
            batch_size=int(record["batch-size"]),
            lr=float(record["lr"]),
            model=str(record["model"]),
            seed=int(record["seed"]),
            data_dir=str(record["data-dir"]) or None,
        )


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class RoundTiming:
    """One round: its wall time, the clients' training compute and how many trained."""

    round: int
    round_s: float
    train_s: float
    clients: int

    @property
    def overhead_s(self) -> float:
        """Round time outside local training."""
        return self.round_s - self.train_s


@dataclass(slots=True)
class EngineRun:
    """One run of one engine. ``total_s``: the whole call (our data loading and set-up;
    Flower's Ray start, actors, data loading in the actors, shutdown)."""

    engine: str
    rounds: list[RoundTiming]
    total_s: float
    final_accuracy: float
    workers: int = 1

    @property
    def measured(self) -> list[RoundTiming]:
        """The rounds that count (after the warm-up)."""
        return self.rounds[WARMUP_ROUNDS:]

    @property
    def first_round_s(self) -> float:
        """Round 1, not in the medians (Flower starts its actors in it)."""
        return self.rounds[0].round_s

    @property
    def round_s(self) -> float:
        return statistics.median(r.round_s for r in self.measured)

    @property
    def train_s(self) -> float:
        return statistics.median(r.train_s for r in self.measured)

    @property
    def overhead_s(self) -> float:
        return statistics.median(r.overhead_s for r in self.measured)


@dataclass(slots=True)
class Report:
    """Every run of both engines; medians over runs of the per-run medians."""

    workload: Workload
    ours: list[EngineRun]
    flower: list[EngineRun] = field(default_factory=list)
    num_params: int = 0
    flower_version: str | None = None

    @staticmethod
    def _median(runs: Sequence[EngineRun], attr: str) -> float | None:
        if not runs:
            return None
        return statistics.median(float(getattr(r, attr)) for r in runs)

    def median(self, engine: str, attr: str) -> float | None:
        """Median over runs of ``attr`` (round_s, train_s, overhead_s, total_s, ...)."""
        return self._median(self.ours if engine == "ours" else self.flower, attr)

    def ratio(self, attr: str) -> float | None:
        """Ours / Flower for the medians of ``attr``; None without Flower."""
        ours, theirs = self.median("ours", attr), self.median("flower", attr)
        if ours is None or theirs is None or theirs <= 0:
            return None
        return ours / theirs

    @property
    def meets_target(self) -> bool | None:
        """Our overhead at most ``TARGET_OVERHEAD_RATIO`` times Flower's (None without it)."""
        ratio = self.ratio("overhead_s")
        return None if ratio is None else ratio <= TARGET_OVERHEAD_RATIO


# ------------------------------------------------------------------------------ ours


def run_ours(workload: Workload, progress: Progress | None = None) -> tuple[EngineRun, int]:
    """One run of our simulator; returns the run and the model's parameter count."""
    workload.validate()
    cfg = workload.config()
    t0 = time.perf_counter()

    def hook(m: Any) -> None:
        if progress is not None:
            progress(f"ours: round {m.round}/{cfg.rounds}")

    result = run_simulation(cfg, progress=hook)
    total = time.perf_counter() - t0
    rounds = [
        RoundTiming(
            round=m.round,
            round_s=m.wall_s - m.eval_s,
            train_s=m.train_s,
            clients=m.accepted + m.rejected,
        )
        for m in result.rounds
    ]
    run = EngineRun(
        engine="ours",
        rounds=rounds,
        total_s=total,
        final_accuracy=result.final_accuracy,
    )
    _check_run(run, workload)
    return run, result.num_params


def _check_run(run: EngineRun, workload: Workload) -> None:
    got = [r.round for r in run.rounds]
    if got != list(range(1, workload.rounds + 1)):
        raise BenchError(f"{run.engine}: expected rounds 1..{workload.rounds}, got {got}")
    short = [r.round for r in run.rounds if r.clients != workload.clients]
    if short:
        raise BenchError(
            f"{run.engine}: rounds {short} did not train all {workload.clients} clients"
        )


# ------------------------------------------------------------------------------ Flower


def load_flower() -> types.SimpleNamespace:
    """The Flower modules the comparison uses (``app``, ``clientapp``, ``serverapp``,
    ``strategy``, ``simulation``, ``ray``) and flwr's version; raises
    :class:`FlowerUnavailable` with the install command if any is missing."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        mods = [importlib.import_module(name) for name in FLOWER_MODULES]
        version = importlib.metadata.version("flwr")
    except ImportError as exc:  # ModuleNotFoundError and PackageNotFoundError included
        raise FlowerUnavailable(
            "the Flower comparison needs Flower with its Ray simulation engine, which is "
            f"not installed ({exc}): {INSTALL_HINT} (or pip install 'flwr[simulation]'), "
            "or run our side alone with --ours-only"
        ) from exc
    app, clientapp, serverapp, strategy, simulation, ray = mods
    return types.SimpleNamespace(
        app=app,
        clientapp=clientapp,
        serverapp=serverapp,
        strategy=strategy,
        simulation=simulation,
        ray=ray,
        version=version,
    )


@dataclass(slots=True)
class _ClientState:
    """What a Ray actor process keeps between messages: the partition and a trainer."""

    clients: list[ClientData]
    trainer: Trainer
    spec: ParamSpec
    blas: contextlib.AbstractContextManager[object]


#: Per-process cache (one entry per workload) in Flower's actor processes.
_CLIENT_STATES: dict[Workload, _ClientState] = {}


def _client_state(workload: Workload) -> _ClientState:
    state = _CLIENT_STATES.get(workload)
    if state is None:
        from cifer.compute.fl.data import load_dataset

        cfg = workload.config()
        train, _ = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
        clients = build_clients(cfg, train)
        trainer = _model_spec(workload, train).build()
        blas = blas_single_thread()  # for the life of the actor process, as ours per round
        blas.__enter__()
        state = _ClientState(clients, trainer, param_spec(trainer), blas)
        _CLIENT_STATES[workload] = state
    return state


def _model_spec(workload: Workload, train: Any) -> ModelSpec:
    return ModelSpec(workload.model, train.input_shape, train.num_classes, workload.seed)


def _flower_train(message: Any, context: Any) -> Any:
    """The ClientApp's train function (module level, so Ray pickles it by reference)."""
    app = importlib.import_module("flwr.app")
    config = message.content["config"]
    workload = Workload.from_record(config)
    server_round = int(config["server-round"])
    cid = int(context.node_config["partition-id"])
    state = _client_state(workload)
    data = state.clients[cid]
    arrays = message.content["arrays"]
    params = {name: arrays[name].numpy() for name in state.spec.names}
    t0 = time.perf_counter()
    rng = client_rng(workload.seed, server_round, cid)
    state.trainer.set_params(params)
    state.trainer.fit(
        data.x,
        data.y,
        epochs=1,
        batch_size=workload.batch_size,
        lr=workload.lr,
        rng=rng,
        steps=workload.local_steps,
    )
    out = state.trainer.get_params()
    train_s = time.perf_counter() - t0
    content = app.RecordDict(
        {
            "arrays": app.ArrayRecord({k: app.Array(v) for k, v in out.items()}),
            "metrics": app.MetricRecord(
                {"num-examples": len(data), "train-s": train_s, "clients": 1}
            ),
        }
    )
    return app.Message(content, reply_to=message)


def _sum_metrics(app: Any) -> Callable[[list[Any], str], Any]:
    """FedAvg's train-metrics aggregation: sums (training seconds, clients, examples)."""

    def aggregate(records: list[Any], weight_key: str) -> Any:
        totals = {"num-examples": 0, "train-s": 0.0, "clients": 0}
        for record in records:
            metrics = next(iter(record.metric_records.values()))
            for key in totals:
                totals[key] += metrics[key]
        return app.MetricRecord(totals)

    return aggregate


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Flower and Ray loggers at ERROR and Ray's FutureWarnings hidden for the duration
    (deprecation notes, per-round INFO lines and Ray's start-up messages would otherwise
    flood the console)."""
    loggers = [logging.getLogger(name) for name in ("flwr", "ray")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_flower(
    workload: Workload,
    progress: Progress | None = None,
    client_cpus: float = FLOWER_CLIENT_CPUS,
) -> EngineRun:
    """One run of Flower's simulation engine (Ray backend) on ``workload``."""
    workload.validate()
    fl = load_flower()
    from cifer.compute.fl.data import load_dataset

    cfg = workload.config()
    try:
        train, test = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    except (ValueError, OSError) as exc:
        raise SimulationError(f"dataset {cfg.dataset!r}: {exc}") from exc
    trainer = _model_spec(workload, train).build()  # the seeded initial model, as ours
    initial = trainer.get_params()
    stamps: list[float] = []
    cluster_cpus: list[float] = []
    holder: dict[str, Any] = {}
    app = fl.app

    def stamp(server_round: int, arrays: Any) -> None:
        stamps.append(time.perf_counter())
        if server_round == 1:
            cluster_cpus.append(float(fl.ray.cluster_resources().get("CPU", 0.0)))
        if progress is not None and server_round < workload.rounds:
            progress(f"Flower: round {server_round + 1}/{workload.rounds}")
        return None

    def server_main(grid: Any, context: Any) -> None:
        strategy = fl.strategy.FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=workload.clients,
            min_evaluate_nodes=0,
            min_available_nodes=workload.clients,
            train_metrics_aggr_fn=_sum_metrics(app),
        )
        holder["result"] = strategy.start(
            grid=grid,
            initial_arrays=app.ArrayRecord({k: app.Array(v) for k, v in initial.items()}),
            num_rounds=workload.rounds,
            train_config=app.ConfigRecord(workload.to_record()),
            evaluate_fn=stamp,
        )

    server_app = fl.serverapp.ServerApp()
    server_app.main()(server_main)
    client_app = fl.clientapp.ClientApp()
    client_app.train()(_flower_train)
    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    if progress is not None:
        progress("Flower: starting Ray and the simulation engine")
    t0 = time.perf_counter()
    try:
        with _quiet_logs():
            fl.simulation.run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=workload.clients,
                backend_name="ray",
                backend_config=backend_config,
            )
    finally:
        if fl.ray.is_initialized():  # the engine shuts Ray down; make sure on errors too
            fl.ray.shutdown()
    total = time.perf_counter() - t0
    result = holder.get("result")
    if result is None or len(stamps) != workload.rounds + 1:
        raise BenchError(
            f"Flower: the ServerApp did not finish {workload.rounds} rounds "
            f"({max(len(stamps) - 1, 0)} done); see the errors logged above"
        )
    metrics = result.train_metrics_clientapp
    rounds = []
    for r in range(1, workload.rounds + 1):
        m = metrics.get(r)
        rounds.append(
            RoundTiming(
                round=r,
                round_s=stamps[r] - stamps[r - 1],
                train_s=0.0 if m is None else float(m["train-s"]),
                clients=0 if m is None else int(m["clients"]),
            )
        )
    final = {k: result.arrays[k].numpy() for k in initial}
    trainer.set_params(final)
    accuracy = float(trainer.evaluate(test.x, test.y)["accuracy"])
    cpus = cluster_cpus[0] if cluster_cpus else float(os.cpu_count() or 1)
    run = EngineRun(
        engine="flower",
        rounds=rounds,
        total_s=total,
        final_accuracy=accuracy,
        workers=max(int(cpus // client_cpus), 1),
    )
    _check_run(run, workload)
    return run


# ------------------------------------------------------------------------------ driver


def run(
    workload: Workload,
    runs: int = 3,
    *,
    flower: bool = True,
    client_cpus: float = FLOWER_CLIENT_CPUS,
    progress: Progress | None = None,
) -> Report:
    """``runs`` repetitions of ours then Flower's (unless ``flower`` is False). Checks
    that Flower can be imported before any work."""
    workload.validate()
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    version = load_flower().version if flower else None
    report = Report(workload=workload, ours=[], flower_version=version)

    def tagged(i: int) -> Progress | None:
        if progress is None:
            return None
        cb = progress
        return lambda msg: cb(f"run {i + 1}/{runs}: {msg}")

    for i in range(runs):
        ours, report.num_params = run_ours(workload, tagged(i))
        report.ours.append(ours)
        if flower:
            report.flower.append(run_flower(workload, tagged(i), client_cpus))
    return report


def final_accuracy_gap(report: Report) -> float | None:
    """Largest |ours - Flower| final test accuracy over runs (same training: near 0)."""
    if not report.flower:
        return None
    return max(
        abs(a.final_accuracy - b.final_accuracy)
        for a, b in zip(report.ours, report.flower, strict=True)
    )

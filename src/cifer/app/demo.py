"""``cifer demo``: a federated training job on a real 4-validator localnet, offline.

Ten clients (three of them Byzantine) train on their own shard of a scikit-learn dataset,
upload model deltas and submit them on chain; the validators aggregate with a robust rule,
recompute each other's aggregates, and update reputation and rewards. The demo watches the
chain, evaluates every round's global model on held-out data, and ends with a comparison
against FedAvg under the same attack (a simulation of the same partition) and the final
model's provenance. Every process it starts is stopped, whatever happens.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.sdk.client import Client, ClientError
from cifer.compute.fl.attacks.base import AttackContext
from cifer.compute.fl.attacks.registry import run_attack
from cifer.compute.fl.attacks.statistical import alie_z
from cifer.compute.fl.simulation import (
    SimulationConfig,
    attack_kind,
    build_clients,
    run_simulation,
)
from cifer.compute.fl.trainers import make_trainer

UCIF = 10**6


@dataclass(frozen=True)
class DemoConfig:
    dataset: str = "digits"
    partition: str = "iid"
    clients: int = 10
    byzantine: int = 3
    attack: str = "alie"
    rule: str = "multi_krum"
    model: str = "mlp:32"
    rounds: int = 8
    epochs: int = 5
    lr: float = 0.1
    batch: int = 32
    round_blocks: int = 40
    reward_cif: int = 1_000
    seed: int = 0
    data_dir: str | None = None

    def sim(self, **over: Any) -> SimulationConfig:
        base: dict[str, Any] = dict(
            dataset=self.dataset,
            partition=self.partition,
            clients=self.clients,
            byzantine=self.byzantine,
            attack=self.attack if self.byzantine else "none",
            aggregator=self.rule,
            model=self.model,
            rounds=self.rounds,
            local_epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch,
            seed=self.seed,
            data_dir=self.data_dir,
        )
        base.update(over)
        return SimulationConfig(**base)


@dataclass
class RoundRow:
    round: int
    accuracy: float
    accepted: list[int]
    rejected: list[int]
    stragglers: list[int]
    reputation: dict[int, tuple[str, float]]
    seconds: float


@dataclass
class DemoResult:
    config: DemoConfig
    rows: list[RoundRow] = field(default_factory=list)
    initial_accuracy: float = 0.0
    fedavg_attacked: float = 0.0
    rule_clean: float = 0.0
    job_id: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    report: Path | None = None

    @property
    def final_accuracy(self) -> float:
        return self.rows[-1].accuracy if self.rows else self.initial_accuracy


class Colluders:
    """Byzantine clients pooling their honest deltas each round to craft the attack (the
    non-omniscient setting: they know only their own data)."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.f = cfg.byzantine
        self._lock = threading.Condition()
        self._rounds: dict[int, dict[int, np.ndarray]] = {}
        self._out: dict[int, np.ndarray] = {}

    def transform(self, slot: int) -> Callable[[np.ndarray, int], np.ndarray]:
        def fn(delta: np.ndarray, r: int) -> np.ndarray:
            with self._lock:
                self._rounds.setdefault(r, {})[slot] = delta
                self._lock.notify_all()
                end = time.monotonic() + 30
                while r not in self._out and len(self._rounds[r]) < self.f:
                    if not self._lock.wait(max(0.0, end - time.monotonic())):
                        break
                if r not in self._out:
                    got = self._rounds[r]
                    honest = np.stack([got[k] for k in sorted(got)])
                    k = honest.shape[0]
                    # The colluders' own honest deltas stand in for the honest clients';
                    # ALIE keeps the z of the real network (n clients, f attackers).
                    params: dict[str, object] = {}
                    if self.cfg.attack == "alie":
                        params["z"] = alie_z(self.cfg.clients, self.f)
                    ctx = AttackContext(
                        n=2 * k,
                        f=k,
                        byzantine=np.arange(k),
                        rng=np.random.default_rng(self.cfg.seed * 1000 + r),
                        aggregator=self.cfg.rule,
                        params=params,
                    )
                    full = run_attack(self.cfg.attack, honest, ctx, allow_plugins=False)
                    self._out[r] = full[0]
                return self._out[r].astype(np.float32)

        return fn


def _png(result: DemoResult) -> bytes | None:
    from cifer.compute.fl.plotting import PlottingUnavailable, pyplot

    try:
        plt = pyplot()
    except PlottingUnavailable:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs = [0] + [r.round + 1 for r in result.rows]
    ys = [result.initial_accuracy] + [r.accuracy for r in result.rows]
    ax.plot(xs, ys, marker="o", label=f"on chain: {result.config.rule}")
    ax.axhline(
        result.fedavg_attacked,
        color="tab:red",
        ls="--",
        label="FedAvg under the same attack (simulated)",
    )
    ax.axhline(
        result.rule_clean,
        color="tab:green",
        ls=":",
        label=f"{result.config.rule}, no attackers (simulated)",
    )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(result: DemoResult, path: Path) -> Path:
    cfg = result.config
    png = _png(result)
    img = (
        f'<img alt="accuracy per round" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        if png
        else "<p>(install matplotlib for the accuracy plot)</p>"
    )
    rows = "".join(
        f"<tr><td>{r.round}</td><td>{r.accuracy:.4f}</td><td>{_ids(r.accepted)}</td>"
        f"<td>{_ids(r.rejected)}</td><td>{_ids(r.stragglers)}</td></tr>"
        for r in result.rows
    )
    prov = result.provenance
    lineage = "".join(
        f"<li><code>{html.escape(m)}</code></li>" for m in prov.get("round_models", [])
    )
    doc = f"""<!doctype html><meta charset="utf-8"><title>Cifer demo report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style>
<h1>Cifer demo: job {result.job_id}</h1>
<p>{cfg.clients} clients ({cfg.byzantine} Byzantine, attack <b>{html.escape(cfg.attack)}</b>),
dataset {html.escape(cfg.dataset)} ({html.escape(cfg.partition)}), model {html.escape(cfg.model)},
rule <b>{html.escape(cfg.rule)}</b>, {cfg.rounds} rounds on 4 validators; {result.wall_s:.0f} s.</p>
{img}
<h2>Summary</h2><table>
<tr><th>run</th><th>final accuracy</th></tr>
<tr><td>on chain, {html.escape(cfg.rule)}, under attack</td>
<td>{result.final_accuracy:.4f}</td></tr>
<tr><td>FedAvg, same attack (simulated)</td><td>{result.fedavg_attacked:.4f}</td></tr>
<tr><td>{html.escape(cfg.rule)}, no attackers (simulated)</td><td>{result.rule_clean:.4f}</td></tr>
</table>
<h2>Rounds</h2><table><tr><th>round</th><th>accuracy</th><th>accepted</th><th>rejected</th>
<th>stragglers</th></tr>{rows}</table>
<h2>Final model</h2><p>asset id <code>{html.escape(str(prov.get("asset_id", "")))}</code><br>
model <code>{html.escape(str(prov.get("model", "")))}</code><br>
initial model <code>{html.escape(str(prov.get("initial_model", "")))}</code></p>
<p>aggregates, round by round:</p><ol start="0">{lineage}</ol>
<p>contributors: {html.escape(", ".join(prov.get("contributors", [])))}</p>
"""
    path.write_text(doc)
    return path


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _ids(ids: list[int]) -> str:
    return " ".join(f"c{i}" for i in ids) or "-"


def run_demo(
    cfg: DemoConfig,
    *,
    workdir: Path | None = None,
    report: Path | None = None,
    on_status: Callable[[str], None] = print,
    on_round: Callable[[RoundRow, DemoResult], None] | None = None,
    timeout_s: float = 600.0,
) -> DemoResult:
    """Run the whole demo; raises RuntimeError with the reason if the job cannot finish."""
    from cifer.compute.fl.data import load_dataset

    t0 = time.monotonic()
    result = DemoResult(cfg)
    sim_cfg = cfg.sim()
    sim_cfg.validate()
    train, test = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    parts = build_clients(sim_cfg, train)
    model_attack = cfg.byzantine > 0 and attack_kind(cfg.attack) == "model"
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="cifer-demo-")) if workdir is None else workdir
    net_dir = root / "localnet"
    on_status(f"starting a localnet of 4 validators in {net_dir}")
    init_localnet(net_dir, 4, accounts=cfg.clients + 2)
    net = Localnet.open(net_dir)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    # SIGTERM (e.g. from `timeout`) must still run the finally below and stop the nodes.
    prev = signal.signal(signal.SIGTERM, _raise_interrupt)
    errors: list[str] = []
    try:
        net.start(90)
        nodes = [n.api for n in net.spec.nodes]
        evaluator = make_trainer(cfg.model, train.input_shape, train.num_classes, seed=cfg.seed)
        result.initial_accuracy = float(evaluator.evaluate(test.x, test.y)["accuracy"])
        creator = Client(nodes[0], account_key(0))
        job_id = creator.create_job(
            name=f"demo-{cfg.dataset}",
            model=cfg.model,
            input_shape=train.input_shape,
            num_classes=train.num_classes,
            initial_params=evaluator.get_params(),
            rule=cfg.rule,
            byzantine=cfg.byzantine,
            rounds=cfg.rounds,
            min_clients=cfg.clients,
            round_blocks=cfg.round_blocks,
            reward=cfg.reward_cif * UCIF,
            train={"epochs": cfg.epochs, "lr": cfg.lr, "batch": cfg.batch},
        )
        result.job_id = job_id
        on_status(
            f"job {job_id}: {cfg.clients} clients ({cfg.byzantine} Byzantine, {cfg.attack}), "
            f"rule {cfg.rule}, {cfg.rounds} rounds"
        )
        colluders = Colluders(cfg)
        keys = [account_key(1 + i) for i in range(cfg.clients)]
        addr_to_id = {k.public.bech32: i for i, k in enumerate(keys)}

        def client_main(i: int) -> None:
            part = parts[i]
            trainer = make_trainer(cfg.model, train.input_shape, train.num_classes, seed=cfg.seed)
            transform = colluders.transform(i) if (part.byzantine and model_attack) else None
            try:
                with Client(nodes[i % len(nodes)], keys[i]) as c:
                    c.run(
                        job_id,
                        trainer,
                        part.x,
                        part.y,
                        progress=False,
                        transform_update=transform,
                        stop=stop,
                        timeout_s=timeout_s,
                        seed=cfg.seed * 100 + i,
                    )
            except Exception as exc:  # reported by the main loop, which then stops all
                errors.append(f"client c{i}: {type(exc).__name__}: {exc}")

        for i in range(cfg.clients):
            t = threading.Thread(target=client_main, args=(i,), name=f"client{i}", daemon=True)
            t.start()
            threads.append(t)
        deadline = time.monotonic() + timeout_s
        next_round = 0
        last = time.monotonic()
        while next_round < cfg.rounds:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish in {timeout_s:.0f} s")
            if errors:
                raise RuntimeError("; ".join(errors))
            try:
                rec = creator.round(job_id, next_round)
            except ClientError:
                time.sleep(0.2)
                continue
            evaluator.set_params(creator.model(rec["model"]))
            acc = float(evaluator.evaluate(test.x, test.y)["accuracy"])
            ids = [addr_to_id.get(a, -1) for a in rec["clients"]]
            reps = {
                i: (info["state"], int(info["score_ppm"]) / 1e6)
                for i, k in enumerate(keys)
                for info in [creator.reputation(k.public.bech32)]
            }
            now = time.monotonic()
            row = RoundRow(
                next_round,
                acc,
                [i for i, ok in zip(ids, rec["accepted"], strict=True) if ok],
                [i for i, ok in zip(ids, rec["accepted"], strict=True) if not ok],
                [addr_to_id.get(a, -1) for a in rec["stragglers"]],
                reps,
                now - last,
            )
            last = now
            result.rows.append(row)
            if on_round is not None:
                on_round(row, result)
            next_round += 1
        end = time.monotonic() + 30
        while True:
            try:
                result.provenance = creator.provenance(job_id)
                break
            except ClientError:
                if time.monotonic() > end:
                    raise RuntimeError(f"job {job_id} has no provenance record") from None
                time.sleep(0.2)
        creator.close()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        net.stop()
        signal.signal(signal.SIGTERM, prev)
    on_status("simulating FedAvg under the same attack, and the rule without attackers")
    result.fedavg_attacked = run_simulation(cfg.sim(aggregator="fedavg")).final_accuracy
    result.rule_clean = run_simulation(cfg.sim(byzantine=0, attack="none")).final_accuracy
    result.wall_s = time.monotonic() - t0
    result.report = write_report(result, report or Path("cifer-demo-report.html"))
    if own_dir:
        shutil.rmtree(root, ignore_errors=True)
    return result

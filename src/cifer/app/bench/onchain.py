"""``cifer bench onchain``: what an on-chain round costs beyond local training.

A real 4-validator localnet runs jobs whose clients submit precomputed deltas (no training),
so the measured round time is all overhead: serialising and uploading blobs, replicating
them, signing and gossiping txs, the blocks that carry them, the aggregate computed by the
proposer and recomputed by every validator, and clients polling for the next round. Side
by side, the same aggregation runs in process through the same engine (blob decode, rule,
new model blob): the FL engine's share of the round.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifer.app.contracts.fl import CreateJob, Job, JobStatus, UpdateRef
from cifer.app.fl_engine import BlobEngine
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.sdk.client import Client
from cifer.compute.blobs.store import BlobStore
from cifer.compute.fl.params import ParamSpec, to_bytes
from cifer.compute.fl.trainers import make_trainer

UCIF = 10**6


@dataclass(frozen=True)
class OnchainResult:
    clients: int
    params: int
    rounds: int
    rule: str
    round_s: list[float]  # median on-chain round time of each run
    engine_s: list[float]  # in-process aggregation of the same inputs, each run

    @property
    def round_median(self) -> float:
        return statistics.median(self.round_s)

    @property
    def engine_median(self) -> float:
        return statistics.median(self.engine_s)


def _model(hidden: int) -> dict[str, np.ndarray]:
    return make_trainer(f"mlp:{hidden}", (784,), 10, seed=0).get_params()


def _deltas(init: dict[str, np.ndarray], n: int, rounds: int, seed: int) -> list[list[bytes]]:
    spec = ParamSpec.of(init)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        base = 0.01 * rng.standard_normal(spec.size).astype(np.float32)
        out.append(
            [
                to_bytes(
                    spec.unflatten(base + 0.001 * rng.standard_normal(spec.size).astype(np.float32))
                )
                for _ in range(n)
            ]
        )
    return out


def engine_round_s(init: dict[str, np.ndarray], blobs: list[bytes], rule: str, f: int) -> float:
    """In-process: the engine aggregates the same blobs (decode, rule, new model blob)."""
    store = BlobStore(None)
    engine = BlobEngine(store)
    init_hash = store.put(to_bytes(init))
    refs = [UpdateRef(bytes([i]) * 20, store.put(b), 100, 1_000_000) for i, b in enumerate(blobs)]
    job = Job(
        id=1,
        creator=b"\0" * 20,
        spec=CreateJob(
            name="bench",
            model="mlp",
            input_shape=[784],
            num_classes=10,
            initial_model=init_hash,
            rule=rule,
            rule_params={},
            byzantine=f,
            privacy="plain",
            rounds=1,
            min_clients=len(blobs),
            max_clients=len(blobs),
            round_blocks=10,
            reward=1,
        ),
        status=JobStatus.CLOSING,
        round=0,
        round_start=1,
        model=init_hash,
        escrow_left=1,
        members=len(blobs),
        created=1,
    )
    t = time.perf_counter()
    engine.aggregate(job, refs)
    return time.perf_counter() - t


class _ClientLoops:
    """Clients that submit a precomputed delta as soon as each round opens."""

    def __init__(self, clients: list[Client], job_id: int, deltas: list[list[bytes]]) -> None:
        self.clients = clients
        self.job_id = job_id
        self.deltas = deltas
        self.done = threading.Event()
        self.errors: list[str] = []
        self.opened: dict[int, float] = {}

    def run(self, i: int) -> None:
        sent = -1
        c = self.clients[i]
        try:
            while not self.done.is_set():
                job = c.job(self.job_id)
                if job["status"] == "done":
                    return
                r = int(job["round"])
                if job["status"] == "running" and r > sent:
                    self.opened.setdefault(r, time.perf_counter())
                    c.submit_blob(self.job_id, r, self.deltas[r][i], 100)
                    sent = r
                time.sleep(0.05)
        except Exception as exc:  # reported by the driver, which then stops
            self.errors.append(f"client {i}: {exc}")


def run_onchain(
    *,
    clients: int = 10,
    hidden: int = 128,
    rounds: int = 5,
    runs: int = 3,
    rule: str = "multi_krum",
    byzantine: int = 3,
    on_status: Callable[[str], None] = print,
) -> OnchainResult:
    init = _model(hidden)
    d = ParamSpec.of(init).size
    round_s: list[float] = []
    engine_s: list[float] = []
    root = Path(tempfile.mkdtemp(prefix="cifer-bench-onchain-"))
    init_localnet(root / "net", 4, accounts=runs * clients + 2)
    net = Localnet.open(root / "net")
    try:
        net.start(90)
        nodes = [n.api for n in net.spec.nodes]
        for run in range(runs):
            deltas = _deltas(init, clients, rounds, seed=run)
            engine_s.append(engine_round_s(init, deltas[0], rule, byzantine))
            creator = Client(nodes[0], account_key(0))
            job_id = creator.create_job(
                name=f"bench-{run}",
                model=f"mlp:{hidden}",
                input_shape=[784],
                num_classes=10,
                initial_params=init,
                rule=rule,
                byzantine=byzantine,
                rounds=rounds,
                min_clients=clients,
                round_blocks=200,
                reward=100 * UCIF,
            )
            # fresh accounts per run: reputation from an earlier run must not decide who joins
            first = 1 + run * clients
            cls = [Client(nodes[i % 4], account_key(first + i)) for i in range(clients)]
            for c in cls:
                c.join(job_id)
            loop = _ClientLoops(cls, job_id, deltas)
            threads = [threading.Thread(target=loop.run, args=(i,)) for i in range(clients)]
            errors, opened = loop.errors, loop.opened
            for t in threads:
                t.start()
            end = time.monotonic() + 60 * rounds
            while time.monotonic() < end and not errors:
                if creator.job(job_id)["status"] == "done":
                    break
                time.sleep(0.05)
            finished = time.perf_counter()
            loop.done.set()
            for t in threads:
                t.join(30)
            if errors:
                raise RuntimeError("; ".join(errors))
            if creator.job(job_id)["status"] != "done":
                raise RuntimeError(f"job {job_id} did not finish")
            starts = [opened[r] for r in sorted(opened)] + [finished]
            per_round = [b - a for a, b in itertools.pairwise(starts)]
            round_s.append(statistics.median(per_round))
            on_status(
                f"run {run + 1}/{runs}: on-chain round {round_s[-1]:.3f} s (median of "
                f"{len(per_round)}), in-process aggregation {engine_s[-1]:.3f} s"
            )
            for c in [*cls, creator]:
                c.close()
    finally:
        net.stop()
    return OnchainResult(clients, d, rounds, rule, round_s, engine_s)

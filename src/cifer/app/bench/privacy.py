"""``cifer bench privacy``: the cost of one aggregation round under each privacy mode
(``plain``, ``secagg``, ``ckks``), and Flower's SecAgg+ against Flower's plaintext round,
side by side in one process.

What a round is. Every client's work (quantize and mask, or encrypt; serialize what it
sends; decode what it reads; read the new model, which under ``ckks`` means decrypting the
aggregate) plus one validator's work (decode and admit every message, sum, unmask or add
ciphertexts, dequantize, serialize the new model). Local training is left out: it is the
same in every mode. Clients run one after another in one process, so the round time is the
sum of the clients' time and the server's time; both are reported separately (client time
as the mean per client). Per-job setup (CKKS key generation and key sharing, loading the
public context) is timed once per configuration and reported apart from the round.

Modes, on the same seeded float32 updates (n clients x d parameters, N(0, 0.05^2)):

* ``plain``: each client serializes its update as safetensors
  (:func:`cifer.compute.fl.params.to_bytes`); the server parses every blob and runs FedAvg
  through the aggregator registry (``aggregate("fedavg", ...)``, equal weights).
* ``secagg``: :mod:`cifer.compute.privacy.secagg` with the module's defaults (Z_2^32,
  16-bit levels, clip 1.0), the SecAgg+ Harary degree k = :func:`harary_degree` (n) and
  threshold t = k // 2 + 1. All four phases; every message is a canonical struct, encoded
  by its sender and decoded by each reader. A client reads every admitted AdvertiseKeys
  and ShareKeys of the round (what :class:`SecAggClient` needs to know A and S) and the
  list of survivors. The ``secagg 10% drop`` row drops ``round(0.1 n)`` clients (seeded
  choice, at least one) after they shared keys and before they send masked input, so the
  server reconstructs their mask keys and removes their pairwise masks.
* ``ckks``: :mod:`cifer.compute.privacy.ckks` with its default parameters (N = 8192,
  primes 60/40/60, scale 2^40); clients encrypt (:func:`encrypt_update`), the validator adds
  each upload to a :class:`CkksAccumulator` (key checks kept ready, as by default, but not
  requested: they are made only when the aggregate's canaries fail) and serializes the sum;
  every client decrypts the aggregate (:func:`decrypt_aggregate`).

Flower (optional, ``flwr`` 1.41): its own code paths, driven in process. A ServerApp-side
workflow (``default_fit_workflow`` with ``FedAvg`` for the plaintext round,
``SecAggPlusWorkflow`` for SecAgg+) runs against a grid that hands each message to that
node's ``ClientApp`` (a ``NumPyClient`` returning the same update, with ``secaggplus_mod``
for SecAgg+) and serializes every message both ways with Flower's protobuf serde, as its
gRPC transport would. Client time is decoding the incoming message, the ClientApp call
and encoding the reply; everything else in the workflow call is the server's. SecAgg+ gets
the same graph degree and threshold as ours (``num_shares`` = k + 1, since Flower counts
the client itself, ``reconstruction_threshold`` = t), ``max_weight`` = 1.0 (every client
reports one example, so its weight factor is exact) and Flower's quantization defaults
(clip 8.0, 2^22 levels, modulus 2^32). Its dropout row drops the same clients at the same
point (they get the collect-masked-vectors message and never answer, as after a timeout).

Bytes per client: what a client sends (up) and reads (down) in one round, as the mean over
clients. Ours count encoded payloads (messages, safetensors blobs, CKKS uploads and the
aggregate), not the chain transaction or signature around them; Flower's count whole
serialized protobuf Messages (metadata included). Each run checks its result: the maximum
|difference| from the float mean of the included updates, and for ``secagg`` that the
unmasked integer sum equals the sum of the clients' quantized levels exactly.

Each run executes every mode of a configuration back to back (ours, then Flower's), so
machine load hits them alike; the report gives medians over runs and ratios of medians.
BLAS is limited to one thread throughout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cifer.base.encoding import decode, encode
from cifer.compute.fl.aggregators import AggContext, aggregate
from cifer.compute.fl.aggregators.base import blas_single_thread
from cifer.compute.fl.params import from_bytes, to_bytes
from cifer.compute.privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SecAggClient,
    SecAggParams,
    SecAggRound,
    SecAggServer,
    ShareKeys,
    UnmaskShares,
    harary_degree,
    max_dropouts,
)

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]

MODES: Final = ("plain", "secagg", "ckks")
#: Fraction of clients that drop out mid-round in the dropout rows.
DROPOUT_FRACTION: Final = 0.1
#: Standard deviation of the synthetic updates (well inside both clip ranges).
UPDATE_STD: Final = 0.05
#: Targets from the issue: round time at most this multiple of plain's, at TARGET_CONFIG.
TARGETS: Final = {"secagg": 1.5, "ckks": 2.0}
TARGET_CONFIG: Final = (50, 100_000)
#: Our rows in table order, and the Flower row timed next to each (Flower has no CKKS).
ROWS: Final = ("plain", "secagg", "secagg-drop", "ckks")
FLOWER_ROW: Final = {
    "plain": "flower-plain",
    "secagg": "flower-secagg",
    "secagg-drop": "flower-secagg-drop",
}
JOB_ID: Final = 7
ROUND: Final = 1
#: Parameters of the untimed warm-up round of each configuration.
WARMUP_PARAMS: Final = 4096
QUIET_ENV: Final = {"FLWR_TELEMETRY_ENABLED": "0"}

Progress = Callable[[str, int, int], None]


class BenchError(ValueError):
    """The benchmark cannot run as asked (bad sizes or modes)."""


# ---------------------------------------------------------------------------- results


@dataclass
class RoundTiming:
    """One round of one mode: seconds, bytes per client and the correctness check."""

    round_s: float
    client_s: float  # all clients together
    server_s: float
    n: int
    bytes_up: float  # mean per client
    bytes_down: float
    max_abs_err: float  # vs the float mean of the included updates
    exact: bool | None = None  # secagg: unmasked sum == sum of quantized levels

    @classmethod
    def from_clock(
        cls,
        clock: _Clock,
        n: int,
        up_total: float,
        down_total: float,
        max_abs_err: float,
        exact: bool | None = None,
    ) -> RoundTiming:
        """A round timed by a client/server clock, with byte totals over all n clients."""
        return cls(
            clock.client + clock.server,
            clock.client,
            clock.server,
            n,
            up_total / n,
            down_total / n,
            max_abs_err,
            exact,
        )

    @property
    def per_client_s(self) -> float:
        return self.client_s / self.n


@dataclass
class RoundResult:
    """A round's timing and the aggregate it produced (kept out of the report)."""

    timing: RoundTiming
    mean: npt.NDArray[np.floating[Any]]
    included: tuple[int, ...]


@dataclass
class ModeRuns:
    """All runs of one row (e.g. ``secagg-drop``) of one configuration."""

    name: str
    runs: list[RoundTiming] = field(default_factory=list)
    note: str | None = None  # why the row was not run

    def median(self, attr: str) -> float | None:
        if not self.runs:
            return None
        return float(statistics.median(float(getattr(r, attr)) for r in self.runs))


@dataclass
class ConfigReport:
    """One (n, d): every row's runs, the secagg parameters and per-job setup times."""

    n: int
    d: int
    degree: int
    threshold: int
    dropped: int
    rows: dict[str, ModeRuns] = field(default_factory=dict)
    ckks_setup_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def median(self, row: str, attr: str = "round_s") -> float | None:
        r = self.rows.get(row)
        return None if r is None else r.median(attr)

    def ratio(self, row: str) -> float | None:
        """Median round time of ``row`` over the median of its own plaintext baseline."""
        base = "flower-plain" if row.startswith("flower-") else "plain"
        a, b = self.median(row), self.median(base)
        return None if a is None or b is None or b <= 0 else a / b


@dataclass
class PrivacyReport:
    """Everything one invocation measured (``to_json`` adds the medians and ratios)."""

    runs: int
    seed: int
    dropout: float
    machine: str
    versions: dict[str, str]
    configs: list[ConfigReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for cfg, raw in zip(self.configs, out["configs"], strict=True):
            raw["medians"] = {
                name: {
                    attr: cfg.median(name, attr)
                    for attr in (
                        "round_s",
                        "client_s",
                        "per_client_s",
                        "server_s",
                        "bytes_up",
                        "bytes_down",
                    )
                }
                | {"ratio_to_plain": cfg.ratio(name)}
                for name in cfg.rows
            }
        return out

    def verdicts(self) -> list[tuple[str, float, float | None, bool | None]]:
        """(mode, target, measured ratio, met) at :data:`TARGET_CONFIG`, where it ran."""
        out: list[tuple[str, float, float | None, bool | None]] = []
        for cfg in self.configs:
            if (cfg.n, cfg.d) != TARGET_CONFIG:
                continue
            for mode, target in TARGETS.items():
                if mode in cfg.rows:
                    r = cfg.ratio(mode)
                    out.append((mode, target, r, None if r is None else r <= target))
        return out


# ---------------------------------------------------------------------------- helpers


class _Clock:
    """Accumulates perf_counter time into the client or the server account."""

    def __init__(self) -> None:
        self.client = 0.0
        self.server = 0.0

    @contextlib.contextmanager
    def on_client(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.client += time.perf_counter() - t0

    @contextlib.contextmanager
    def on_server(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.server += time.perf_counter() - t0


def make_updates(n: int, d: int, seed: int = 0) -> F32Array:
    """Seeded float32 updates, one row per client."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, d), dtype=np.float32)
    out *= np.float32(UPDATE_STD)
    return out


def client_ids(n: int) -> list[bytes]:
    """n distinct 20-byte ids (address-sized) in ascending (roster) order."""
    return sorted(hashlib.sha256(b"cifer/bench/privacy/%d" % i).digest()[:20] for i in range(n))


def secagg_params(n: int) -> SecAggParams:
    """The secagg module's defaults with the SecAgg+ degree and a majority threshold."""
    k = harary_degree(n)
    return SecAggParams(threshold=k // 2 + 1, degree=k)


def dropout_count(n: int, fraction: float) -> int:
    return max(1, round(fraction * n)) if fraction > 0 else 0


def pick_dropouts(n: int, count: int, seed: int) -> frozenset[int]:
    rng = np.random.default_rng([seed, n, 0xD809])
    return frozenset(int(i) for i in rng.choice(n, size=count, replace=False))


def _float_mean(updates: F32Array, included: Sequence[int]) -> F64Array:
    rows = np.asarray(updates[list(included)], dtype=np.float64)
    out: F64Array = rows.mean(axis=0)
    return out


def _err(mean: npt.NDArray[Any], ref: F64Array) -> float:
    return float(np.max(np.abs(np.asarray(mean, dtype=np.float64) - ref)))


def quantized_sum(updates: F32Array, params: SecAggParams, included: Sequence[int]) -> Any:
    """Sum of the included clients' quantized levels: what unmasking must return exactly."""
    q = params.quantizer()
    total = np.zeros(updates.shape[1], dtype=np.int64)
    for i in included:
        total += q.quantize(updates[i])
    return total


def _model_bytes(vec: npt.NDArray[Any]) -> bytes:
    return to_bytes({"model": np.asarray(vec, dtype=np.float32)})


# ---------------------------------------------------------------------------- our rounds


def plain_round(updates: F32Array) -> RoundResult:
    """Safetensors up, FedAvg through the aggregator registry, the new model down."""
    n, d = updates.shape
    clock = _Clock()
    up = down = 0
    with clock.on_server():
        matrix = np.empty((n, d), dtype=np.float32)
    for i in range(n):
        with clock.on_client():
            blob = to_bytes({"update": updates[i]})
        up += len(blob)
        with clock.on_server():
            matrix[i] = from_bytes(blob)["update"]
        del blob
    with clock.on_server():
        res = aggregate("fedavg", matrix, np.ones(n), AggContext())
        model = _model_bytes(res.aggregate)
    for _ in range(n):
        with clock.on_client():
            from_bytes(model)
        down += len(model)
    included = tuple(range(n))
    timing = RoundTiming.from_clock(
        clock, n, up, down, _err(res.aggregate, _float_mean(updates, included))
    )
    return RoundResult(timing, res.aggregate, included)


def secagg_round(
    updates: F32Array,
    params: SecAggParams,
    *,
    dropped: frozenset[int] = frozenset(),
    seed: bytes = bytes(32),
) -> RoundResult:
    """All four phases of :mod:`cifer.compute.privacy.secagg`; ``dropped`` clients leave
    after sharing keys (before masked input)."""
    n, d = updates.shape
    ids = client_ids(n)
    clock = _Clock()
    up = [0] * n
    down = [0] * n
    with clock.on_server():
        rnd = SecAggRound(params, job_id=JOB_ID, round=ROUND, seed=seed, roster=ids, length=d)
        server = SecAggServer(rnd)
    clients: list[SecAggClient] = []
    adverts: list[bytes] = []
    for i in range(n):  # phase 0
        with clock.on_client():
            c = SecAggClient(rnd, ids[i])
            raw = encode(c.advertise())
        clients.append(c)
        adverts.append(raw)
        up[i] += len(raw)
        with clock.on_server():
            server.add_advertise(decode(raw, AdvertiseKeys))
    shares: list[bytes] = []
    for i, c in enumerate(clients):  # phase 1: each client reads the admitted adverts
        with clock.on_client():
            got = [decode(r, AdvertiseKeys) for r in adverts]
            raw = encode(c.share_keys(got))
        shares.append(raw)
        down[i] += sum(map(len, adverts))
        up[i] += len(raw)
        with clock.on_server():
            server.add_share_keys(decode(raw, ShareKeys))
    quantizer = rnd.quantizer()
    alive = [i for i in range(n) if i not in dropped]
    for i in alive:  # phase 2: survivors read the ShareKeys and mask their levels
        c = clients[i]
        with clock.on_client():
            complaints = c.receive_shares([decode(r, ShareKeys) for r in shares])
            levels = quantizer.quantize(updates[i])
            raw = encode(c.masked_input(levels))
        if complaints:
            raise RuntimeError(f"unexpected complaints in an honest round: {complaints}")
        down[i] += sum(map(len, shares))
        up[i] += len(raw)
        with clock.on_server():
            server.add_masked_input(decode(raw, MaskedInput))
        del raw
    with clock.on_server():
        survivors = encode(sorted(ids[i] for i in alive))
    for i in alive:  # phase 3
        c = clients[i]
        with clock.on_client():
            raw = encode(c.unmask(decode(survivors, list[bytes])))
        down[i] += len(survivors)
        up[i] += len(raw)
        with clock.on_server():
            server.add_unmask(decode(raw, UnmaskShares))
    with clock.on_server():
        res = server.finish()
        mean = res.mean(quantizer).astype(np.float32)
        model = _model_bytes(mean)
    for i in range(n):  # every client reads the new model (a dropped one, when it is back)
        with clock.on_client():
            from_bytes(model)
        down[i] += len(model)
    included = tuple(alive)
    exact = bool(np.array_equal(res.levels, quantized_sum(updates, params, included)))
    timing = RoundTiming.from_clock(
        clock, n, sum(up), sum(down), _err(mean, _float_mean(updates, included)), exact
    )
    return RoundResult(timing, mean, included)


@dataclass
class CkksJob:
    """Per-job CKKS state: the clients' keys and the validators' public context."""

    keys: Any  # CkksKeys
    public: Any  # PublicContext
    setup_s: float


def ckks_setup(n: int) -> CkksJob:
    """Key generation, sealing the secret context to the other n - 1 clients, each opening
    its share, and a validator loading the public context: once per job, timed apart."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from cifer.compute.privacy import ckks

    holders = [X25519PrivateKey.generate() for _ in range(n - 1)]
    t0 = time.perf_counter()
    keys = ckks.CkksKeys.generate()
    for sk in holders:
        me = sk.public_key().public_bytes_raw()
        share = keys.share(job_id=JOB_ID, recipient=me)
        ckks.CkksKeys.open_share(share, job_id=JOB_ID, private_key=sk, info=keys.info)
    public = ckks.PublicContext(keys.info, keys.public_context)
    return CkksJob(keys, public, time.perf_counter() - t0)


def ckks_round(updates: F32Array, job: CkksJob) -> RoundResult:
    """Encrypt, add as uploads arrive (one upload in memory at a time), decrypt per client."""
    from cifer.compute.privacy import ckks

    n, d = updates.shape
    ids = client_ids(n)
    clock = _Clock()
    up = down = 0
    with clock.on_server():
        acc = ckks.CkksAccumulator(job.public, job_id=JOB_ID, round_=ROUND, n_params=d)
    for i in range(n):
        with clock.on_client():
            blob = ckks.encrypt_update(
                job.keys, updates[i], job_id=JOB_ID, round_=ROUND, sender=ids[i]
            )
        up += len(blob)
        with clock.on_server():
            acc.add(ids[i], blob)
        del blob
    with clock.on_server():
        agg = acc.result()
    mean: npt.NDArray[Any] = np.zeros(0)
    for _ in range(n):
        with clock.on_client():
            mean = ckks.decrypt_aggregate(
                job.keys, agg, job_id=JOB_ID, round_=ROUND, n_params=d
            ).mean
        down += len(agg)
    included = tuple(range(n))
    timing = RoundTiming.from_clock(clock, n, up, down, _err(mean, _float_mean(updates, included)))
    return RoundResult(timing, mean, included)


# ---------------------------------------------------------------------------- Flower


def flower_available() -> bool:
    return importlib.util.find_spec("flwr") is not None


class _Flower:
    """Flower's modules, imported lazily (flwr is an optional extra)."""

    def __init__(self) -> None:
        for k, v in QUIET_ENV.items():
            os.environ.setdefault(k, v)
        imp = importlib.import_module
        self.version = importlib.metadata.version("flwr")
        self.app = imp("flwr.app")
        self.clientapp = imp("flwr.clientapp")
        self.client = imp("flwr.client")
        self.mod = imp("flwr.client.mod")
        self.common = imp("flwr.common")
        self.serde = imp("flwr.common.serde")
        self.proto = imp("flwr.proto.message_pb2")
        self.compat = imp("flwr.compat.common.recorddict_compat")
        self.legacy = imp("flwr.server.compat.legacy_context")
        self.proxy = imp("flwr.server.compat.grid_client_proxy")
        self.strategy = imp("flwr.server.strategy")
        self.workflow = imp("flwr.server.workflow")
        self.defaults = imp("flwr.server.workflow.default_workflows")
        self.constant = imp("flwr.server.workflow.constant")
        self.sa = imp("flwr.common.secure_aggregation.secaggplus_constants")
        ident = imp("flwr.supercore.task_identity").TaskIdentity
        # What Flower's server runtime sets before a ServerApp runs (messages read it).
        ident.task_id, ident.run_id = 1, 1
        ident.node_id = imp("flwr.common.constant").SUPERLINK_NODE_ID


class _DirectGrid:
    """A Flower Grid that delivers each message straight to the node's ClientApp, with
    protobuf serialization both ways; counts bytes and the clients' time. ``drop`` nodes
    never answer the collect-masked-vectors stage (as after a timeout)."""

    def __init__(self, fl: _Flower, apps: dict[int, Any], contexts: dict[int, Any]) -> None:
        self.fl = fl
        self.apps = apps
        self.contexts = contexts
        self.drop: frozenset[int] = frozenset()
        self.client_s = 0.0
        self.up = dict.fromkeys(apps, 0)
        self.down = dict.fromkeys(apps, 0)

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def _stage(self, msg: Any) -> str | None:
        rec = msg.content.config_records.get(self.fl.sa.RECORD_KEY_CONFIGS)
        if rec is None:
            return None
        stage = rec.get(self.fl.sa.Key.STAGE)
        return stage if isinstance(stage, str) else None

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        fl, pm = self.fl, self.fl.proto.Message
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink's job
            data = fl.serde.message_to_proto(msg).SerializeToString()
            self.down[nid] += len(data)
            if nid in self.drop and self._stage(msg) == fl.sa.Stage.COLLECT_MASKED_VECTORS:
                continue
            t0 = time.perf_counter()
            incoming = fl.serde.message_from_proto(pm.FromString(data))
            reply = self.apps[nid](incoming, self.contexts[nid])
            out = fl.serde.message_to_proto(reply).SerializeToString()
            self.client_s += time.perf_counter() - t0
            self.up[nid] += len(out)
            replies.append(fl.serde.message_from_proto(pm.FromString(out)))
        return replies


def _quiet_flower() -> contextlib.AbstractContextManager[None]:
    from cifer.compute.fl.private_round import quiet_logger

    return quiet_logger("flwr")


def flower_round(
    fl: _Flower,
    updates: F32Array,
    *,
    secagg: SecAggParams | None = None,
    dropped: frozenset[int] = frozenset(),
) -> RoundResult:
    """One Flower fit round: FedAvg in plaintext, or SecAgg+ with ``secagg``'s degree and
    threshold; ``dropped`` clients never send masked vectors."""
    n, d = updates.shape
    nids = [1000 + i for i in range(n)]  # Flower's SuperLink is node 1
    numpy_client: Any = fl.client.NumPyClient

    class _Client(numpy_client):  # type: ignore[misc]
        def __init__(self, row: F32Array) -> None:
            self.row = row

        def fit(self, parameters: Any, config: Any) -> tuple[list[F32Array], int, dict[str, Any]]:
            return [self.row], 1, {}

    def client_fn_for(i: int) -> Callable[[Any], Any]:
        def client_fn(context: Any) -> Any:
            return _Client(updates[i]).to_client()

        client_fn.__annotations__ = {"context": fl.app.Context}
        return client_fn

    mods = [fl.mod.secaggplus_mod] if secagg is not None else []
    apps = {
        nid: fl.clientapp.ClientApp(client_fn=client_fn_for(i), mods=mods)
        for i, nid in enumerate(nids)
    }
    contexts = {
        nid: fl.app.Context(
            run_id=1, node_id=nid, node_config={}, state=fl.app.RecordDict(), run_config={}
        )
        for nid in nids
    }
    grid = _DirectGrid(fl, apps, contexts)
    grid.drop = frozenset(nids[i] for i in dropped)
    strategy = fl.strategy.FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n
    )
    base = fl.app.Context(
        run_id=1, node_id=0, node_config={}, state=fl.app.RecordDict(), run_config={}
    )
    context = fl.legacy.LegacyContext(base, strategy=strategy)
    for nid in nids:
        context.client_manager.register(fl.proxy.GridClientProxy(node_id=nid, grid=grid, run_id=1))
    cfg = fl.app.ConfigRecord()
    cfg[fl.constant.Key.CURRENT_ROUND] = ROUND
    context.state.config_records[fl.constant.MAIN_CONFIGS_RECORD] = cfg
    model = fl.common.ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])
    context.state.array_records[fl.constant.MAIN_PARAMS_RECORD] = (
        fl.compat.parameters_to_arrayrecord(model, keep_input=True)
    )
    if secagg is None:
        workflow = fl.defaults.default_fit_workflow
    else:
        workflow = fl.workflow.SecAggPlusWorkflow(
            num_shares=secagg.degree + 1,
            reconstruction_threshold=secagg.threshold,
            max_weight=1.0,
        )
    with _quiet_flower():
        t0 = time.perf_counter()
        workflow(grid, context)
        total = time.perf_counter() - t0
    params = fl.compat.arrayrecord_to_parameters(
        context.state.array_records[fl.constant.MAIN_PARAMS_RECORD], keep_input=True
    )
    mean = np.asarray(fl.common.parameters_to_ndarrays(params)[0])
    included = tuple(i for i in range(n) if i not in dropped)
    if mean.shape != (d,) or not np.any(mean):
        raise RuntimeError("Flower's round produced no aggregate")
    timing = RoundTiming(
        total,
        grid.client_s,
        total - grid.client_s,
        n,
        sum(grid.up.values()) / n,
        sum(grid.down.values()) / n,
        _err(mean, _float_mean(updates, included)),
    )
    return RoundResult(timing, mean, included)


# ---------------------------------------------------------------------------- driver


def parse_ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise BenchError(f"no {what} given")
    return out


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES))
    if bad or not modes:
        raise BenchError(f"unknown modes {bad}; choose from {', '.join(MODES)}")
    return [m for m in MODES if m in modes]


def run(
    clients: Sequence[int],
    params: Sequence[int],
    runs: int = 3,
    modes: Sequence[str] = MODES,
    *,
    flower: bool = True,
    dropout: float = DROPOUT_FRACTION,
    seed: int = 0,
    progress: Progress | None = None,
    machine: str = "",
) -> PrivacyReport:
    """Every (n, d) configuration, ``runs`` times each, every row back to back per run.
    ``progress(description, done, total)`` reports each row as it starts (``done`` counts
    finished runs of all configurations, out of ``total``)."""
    if runs < 1 or not clients or not params:
        raise BenchError("need at least one run, one client count and one parameter count")
    if min(clients) < 3 or min(params) < 1:
        raise BenchError("secure aggregation needs at least 3 clients and 1 parameter")
    if not 0 <= dropout < 1:
        raise BenchError(f"dropout must be in [0, 1), got {dropout}")
    modes = parse_modes(",".join(modes))
    fl = _Flower() if flower and flower_available() else None
    versions = {"numpy": np.__version__}
    if "ckks" in modes:
        versions["tenseal"] = importlib.metadata.version("tenseal")
    if fl is not None:
        versions["flwr"] = fl.version
    report = PrivacyReport(runs, seed, dropout, machine, versions)
    total = len(clients) * len(params) * runs
    done = 0

    def say(text: str) -> None:
        if progress is not None:
            progress(text, done, total)

    with blas_single_thread():
        for n in clients:
            for d in params:
                say(f"n={n} d={d:,}: setup")
                state = _Config.start(n, d, modes, fl, flower=flower, dropout=dropout, seed=seed)
                report.configs.append(state.report)
                for r in range(runs):
                    label = f"n={n} d={d:,} run {r + 1}/{runs}"
                    state.run_once(seed + r, _prefixed(say, label))
                    done += 1
                say(f"n={n} d={d:,}: done")
    return report


def _prefixed(say: Callable[[str], None], label: str) -> Callable[[str], None]:
    return lambda text: say(f"{label}: {text}")


@dataclass
class _Config:
    """One configuration while it runs: its report, its updates and its CKKS job."""

    report: ConfigReport
    updates: F32Array
    params: SecAggParams
    fl: _Flower | None
    ckks_job: CkksJob | None

    @classmethod
    def start(
        cls,
        n: int,
        d: int,
        modes: Sequence[str],
        fl: _Flower | None,
        *,
        flower: bool,
        dropout: float,
        seed: int,
    ) -> _Config:
        p = secagg_params(n)
        drop = dropout_count(n, dropout)
        cfg = ConfigReport(n, d, p.degree, p.threshold, drop)
        for m in modes:
            cfg.rows[m] = ModeRuns(m)
            if m == "secagg" and drop:
                row = cfg.rows["secagg-drop"] = ModeRuns("secagg-drop")
                if drop > max_dropouts(p):
                    row.note = (
                        f"{drop} dropouts exceed the {max_dropouts(p)} that degree {p.degree}, "
                        f"threshold {p.threshold} tolerate: not run"
                    )
        cfg.notes.append(
            f"secagg: degree {p.degree}, threshold {p.threshold}, "
            f"{drop} of {n} clients drop in the dropout rows"
        )
        if fl is not None:
            for m in ("plain", "secagg", "secagg-drop"):
                if m in cfg.rows:
                    cfg.rows[FLOWER_ROW[m]] = ModeRuns(FLOWER_ROW[m], note=cfg.rows[m].note)
        elif flower:
            cfg.notes.append("Flower (flwr) is not installed: pip install -e '.[bench]'")
        job = None
        if "ckks" in modes:
            job = ckks_setup(n)
            cfg.ckks_setup_s = job.setup_s
        state = cls(cfg, make_updates(n, d, seed), p, fl, job)
        state.warm_up(seed)
        return state

    def warm_up(self, seed: int) -> None:
        """One untimed round of every row on the first :data:`WARMUP_PARAMS` parameters
        (imports, first calls into TenSEAL and Flower, allocator growth)."""
        small = dataclasses.replace(self, updates=self.updates[:, :WARMUP_PARAMS].copy())
        small.report = dataclasses.replace(
            self.report, rows={k: ModeRuns(k, note=v.note) for k, v in self.report.rows.items()}
        )
        small.run_once(seed, lambda _: None)

    def run_once(self, seed: int, say: Callable[[str], None]) -> None:
        cfg, updates, params, fl = self.report, self.updates, self.params, self.fl
        dropped = pick_dropouts(cfg.n, cfg.dropped, seed)
        round_seed = hashlib.sha256(b"cifer/bench/privacy/round/%d" % seed).digest()
        calls: dict[str, Callable[[], RoundResult]] = {
            "plain": lambda: plain_round(updates),
            "secagg": lambda: secagg_round(updates, params, seed=round_seed),
            "secagg-drop": lambda: secagg_round(updates, params, dropped=dropped, seed=round_seed),
        }
        if self.ckks_job is not None:
            job = self.ckks_job
            calls["ckks"] = lambda: ckks_round(updates, job)
        if fl is not None:
            calls["flower-plain"] = lambda: flower_round(fl, updates)
            calls["flower-secagg"] = lambda: flower_round(fl, updates, secagg=params)
            calls["flower-secagg-drop"] = lambda: flower_round(
                fl, updates, secagg=params, dropped=dropped
            )
        for name, row in cfg.rows.items():
            if row.note is not None:
                continue
            say(name)
            gc.collect()
            row.runs.append(calls[name]().timing)

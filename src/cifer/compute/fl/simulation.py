"""Federated-learning simulation without a chain: clients, attackers, a robust server.

:func:`run_simulation` runs :class:`SimulationConfig` round by round and returns a
:class:`SimulationResult` (per-round test accuracy and loss, accepted/rejected counts,
aggregator score summaries, timings); ``cifer fl simulate`` is a thin shell around it and
:mod:`.plotting` writes the results.

Setup. The dataset's training split is partitioned among ``clients`` clients
(:func:`cifer.compute.fl.data.partition`, seeded by ``seed``). Clients ``0 .. f-1`` (``f =
byzantine``) are Byzantine, the usual simulation layout (:meth:`AttackContext.first`).
With ``byzantine_data="iid"`` the honest clients alone split the training set and each
Byzantine client holds an IID shard (Karimireddy et al.'s layout, :func:`build_clients`).
All clients share one model layout; the global model starts from the trainer's seeded
initialisation.

One round, in the two training styles:

* ``fedavg`` (default): every training client loads the global model ``w``, runs
  ``local_epochs`` epochs (or ``local_steps`` minibatch steps) of SGD with ``lr`` and sends
  its model delta ``u_i = w_i - w``; the server applies ``w += server_lr * agg(u)``.
* ``fedsgd``: every training client computes one minibatch gradient ``g_i`` at ``w`` and
  keeps worker momentum ``m_i = beta * m_i + (1 - beta) * g_i`` (Karimireddy, He, Jaggi,
  "Learning from History for Byzantine Robust Optimization", ICML 2021, Alg. 2; the
  heavy-ball form ``m_i = beta * m_i + g_i`` is the same up to a factor 1 / (1 - beta) on
  the step); it sends ``m_i`` and the server applies ``w -= lr * agg(m)``. ``beta = 0`` is
  plain FedSGD. Momentum starts at zero.

Byzantine clients. ``attack`` names a model-poisoning attack (:mod:`.attacks`): the
attackers' rows are produced by the attack from the honest clients' updates of the same
round (the omniscient threat model), and from their own honest updates for attacks that
use them (``scaling``/``backdoor``, ``sign_flip`` with ``mode=own``, and plug-ins). The data
attack ``label_flip`` instead flips the Byzantine clients' labels (``y -> C - 1 - y``) once,
before training; they then train honestly on the poisoned data. ``none`` makes the
Byzantine clients honest (the rule still assumes ``f``). With ``byzantine = 0`` the attack
is ignored.

The server. The rule gets all n updates as one float32 [n, d] matrix, uniform weights (or
sample counts with ``weighting="samples"``) and an :class:`AggContext` with ``f`` (``agg_f``,
default ``byzantine``), the rule's parameters, ``previous`` = the previous round's aggregate
(the centre of centered clipping), a uniform full reputation, and a Generator seeded from
``(seed, round)``. FLTrust's root update is computed each round exactly like an honest
client's, on ``root_size`` training samples drawn once from the whole training split.

Privacy (:mod:`.private_round`). ``privacy`` = ``plain`` (default), ``secagg`` or ``ckks``
runs the real secure-aggregation or CKKS protocol on each round's updates, with every party
in process; ``clip_norm`` clips every update to that L2 norm on the client; ``dp_epsilon``
(or ``dp_noise_multiplier``) adds client-level DP-FedAvg: Gaussian noise ``dp_noise`` =
``central`` or ``distributed`` (split among clients), the noise multiplier calibrated for
``rounds`` rounds at ``dp_delta``, and each round's (epsilon, delta) from the RDP accountant
in the metrics. ``sample_rate`` q < 1 lets each client take part in a round with probability
q (Poisson sampling, the accountant's assumption; seeded by ``(seed, round)``), for
FedAvg without Byzantine clients. Under any of these the rule must be averaging
(``fedavg`` or ``reputation``): robust rules need plaintext updates, and DP's sensitivity
bound holds for a clipped average. Under ``ckks`` a run repeats only up to CKKS noise.

Determinism. Every random draw comes from a Generator seeded from ``seed`` and the round
and client indices (model init, partition, minibatches, attacks, the rule), so a seed fixes
the run on one machine; the JSON of :meth:`SimulationResult.to_dict` without timings is
then byte-identical. Timings live apart (``timing=True``).

Speed. Updates are written straight into one preallocated [n, d] float32 matrix; the
per-round work outside local training is the attack, the rule and a few O(n d) passes.
For ``fedsgd`` with a trainer that has ``client_gradients`` (the NumPy and torch models),
all clients' gradients are computed in vectorised chunks rather than one by one.
``backend="ray"`` runs client training as Ray tasks (``pip install 'cifer[ray]'``).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.aggregators import (
    AggContext,
    AggregationError,
    AggResult,
    aggregate,
    aggregator_names,
)
from cifer.compute.fl.aggregators.base import blas_single_thread
from cifer.compute.fl.attacks import (
    AttackContext,
    AttackError,
    attack_names,
    data_attack_names,
    flip_labels,
    get_attack,
    run_attack,
)
from cifer.compute.fl.params import DTYPE, F32Array, ParamError, ParamSpec
from cifer.compute.fl.private_round import PrivacyError, PrivateAggregator, PrivateRoundResult
from cifer.compute.fl.trainers import (
    BatchGradientTrainer,
    ModelSpec,
    Trainer,
    TrainerError,
    get_flat,
    local_update,
    param_spec,
    sample_batch,
    set_flat,
)

#: Aggregator aliases resolved here when the registry does not define them itself.
AGGREGATOR_ALIASES: dict[str, str] = {
    "cclip": "centered_clipping",
    "cc": "centered_clipping",
    "mkrum": "multi_krum",
    "tmean": "trimmed_mean",
    "gm": "geometric_median",
}
#: Attacks that use the attackers' own honest updates.
OWN_UPDATE_ATTACKS = frozenset({"scaling", "backdoor"})
#: Reputation given to every client (full trust, in ppm).
FULL_REPUTATION = 1_000_000
#: Clients per vectorised FedSGD gradient call.
GRADIENT_CHUNK = 32

# Tags that separate the random streams derived from the seed.
_TAG_CLIENT, _TAG_ATTACK, _TAG_AGG, _TAG_ROOT, _TAG_ROOT_DATA, _TAG_PREFLIGHT = range(1, 7)
_TAG_SAMPLE = 7

Progress = Callable[["RoundMetrics"], None]


class SimulationError(ValueError):
    """Bad simulation input (config, dataset, rule, attack) or a failed round; the
    message names the component, and the client and round where there is one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """One experiment. See the module docstring for the semantics of each field."""

    dataset: str = "digits"
    partition: str = "iid"
    clients: int = 10
    byzantine: int = 0
    attack: str = "none"
    attack_params: Mapping[str, object] = field(default_factory=dict)
    aggregator: str = "fedavg"
    agg_params: Mapping[str, object] = field(default_factory=dict)
    agg_f: int | None = None
    model: str = "mlp"
    rounds: int = 20
    mode: Literal["fedavg", "fedsgd"] = "fedavg"
    local_epochs: int = 1
    local_steps: int | None = None
    momentum: float = 0.9
    lr: float = 0.1
    server_lr: float = 1.0
    batch_size: int = 32
    seed: int = 0
    eval_every: int = 1
    weighting: Literal["uniform", "samples"] = "uniform"
    byzantine_data: Literal["partition", "iid"] = "partition"
    root_size: int = 100
    data_dir: str | None = None
    download: bool = False
    subset: int | tuple[int, int] | None = None
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    vectorize: bool = True
    privacy: Literal["plain", "secagg", "ckks"] = "plain"
    privacy_params: Mapping[str, object] = field(default_factory=dict)
    clip_norm: float | None = None
    sample_rate: float = 1.0
    dp_epsilon: float | None = None
    dp_noise_multiplier: float | None = None
    dp_delta: float = 1e-5
    dp_noise: Literal["central", "distributed"] = "central"
    dp_min_clients: int | None = None

    @property
    def f(self) -> int:
        """The f the rule is told (``agg_f``, default ``byzantine``)."""
        return self.byzantine if self.agg_f is None else self.agg_f

    @property
    def aggregator_rule(self) -> str:
        """The registered aggregator name after alias resolution."""
        return resolve_aggregator(self.aggregator)

    @property
    def dp(self) -> bool:
        """Whether client-level differential privacy is on."""
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    @property
    def private_aggregation(self) -> bool:
        """Whether rounds are aggregated by :mod:`.private_round` (a privacy mode, clipping,
        DP or client sampling) rather than by the rule on all clients' plaintext updates."""
        return (
            self.privacy != "plain"
            or self.dp
            or self.clip_norm is not None
            or self.sample_rate != 1.0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        out = asdict(self)
        out["attack_params"] = dict(self.attack_params)
        out["agg_params"] = dict(self.agg_params)
        out["privacy_params"] = dict(self.privacy_params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulationConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimulationError(f"unknown config field(s): {', '.join(unknown)}")
        fields = dict(data)
        if isinstance(fields.get("subset"), list):
            fields["subset"] = tuple(fields["subset"])
        return cls(**fields)

    def validate(self) -> None:
        """Check field ranges and names (the rule and attack are checked by a dry run in
        :func:`run_simulation`)."""
        _check_int("clients", self.clients, 1)
        _check_int("byzantine", self.byzantine, 0)
        if self.byzantine >= self.clients:
            raise SimulationError(
                f"byzantine={self.byzantine} must be smaller than clients={self.clients} "
                "(at least one honest client)"
            )
        if self.agg_f is not None:
            _check_int("agg_f", self.agg_f, 0)
            if self.agg_f > self.clients:
                raise SimulationError(f"agg_f={self.agg_f} exceeds clients={self.clients}")
        _check_int("rounds", self.rounds, 1)
        _check_int("local_epochs", self.local_epochs, 0)
        if self.local_steps is not None:
            _check_int("local_steps", self.local_steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("eval_every", self.eval_every, 1)
        _check_int("root_size", self.root_size, 1)
        _check_int("seed", self.seed, 0)
        if self.seed >= 2**32:
            raise SimulationError(f"seed must be < 2**32, got {self.seed}")
        if isinstance(self.subset, tuple):
            if len(self.subset) != 2:
                raise SimulationError(f"subset must be N or (train, test), got {self.subset!r}")
            for part in self.subset:
                _check_int("subset", part, 1)
        elif self.subset is not None:
            _check_int("subset", self.subset, 1)
        if self.mode not in ("fedavg", "fedsgd"):
            raise SimulationError(f"mode must be 'fedavg' or 'fedsgd', got {self.mode!r}")
        if self.mode == "fedavg" and self.local_steps is None and self.local_epochs < 1:
            raise SimulationError("local_epochs must be >= 1 (or set local_steps)")
        for name, value in (("lr", self.lr), ("server_lr", self.server_lr)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise SimulationError(f"{name} must be a positive finite number, got {value!r}")
        m = self.momentum
        if not isinstance(m, int | float) or not 0.0 <= m < 1.0:
            raise SimulationError(f"momentum must be in [0, 1), got {m!r}")
        if self.weighting not in ("uniform", "samples"):
            raise SimulationError(
                f"weighting must be 'uniform' or 'samples', got {self.weighting!r}"
            )
        if self.byzantine_data not in ("partition", "iid"):
            raise SimulationError(
                f"byzantine_data must be 'partition' or 'iid', got {self.byzantine_data!r}"
            )
        if self.backend not in ("local", "ray"):
            raise SimulationError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        rule = resolve_aggregator(self.aggregator)
        attack_kind(self.attack)
        self._validate_privacy(rule)

    def _validate_privacy(self, rule: str) -> None:
        from cifer.compute.fl.private_round import (
            AVERAGING_RULES,
            PRIVACY_MODES,
            PrivacyError,
            check_rule,
            privacy_options,
        )

        if self.privacy not in PRIVACY_MODES:
            raise SimulationError(
                f"privacy must be one of {', '.join(PRIVACY_MODES)}, got {self.privacy!r}"
            )
        for name, value in (
            ("clip_norm", self.clip_norm),
            ("dp_epsilon", self.dp_epsilon),
            ("dp_noise_multiplier", self.dp_noise_multiplier),
        ):
            if value is not None and not _positive_float(value):
                raise SimulationError(f"{name} must be a positive finite number, got {value!r}")
        q = self.sample_rate
        if not _positive_float(q) or q > 1:
            raise SimulationError(f"sample_rate must lie in (0, 1], got {q!r}")
        if q < 1 and (self.byzantine or self.mode != "fedavg"):
            raise SimulationError(
                "client sampling (sample_rate < 1) runs FedAvg without Byzantine clients"
            )
        if q < 1 and rule not in AVERAGING_RULES:
            raise SimulationError(
                f"client sampling (sample_rate < 1) aggregates with {' or '.join(AVERAGING_RULES)}"
                f", not {rule!r}"
            )
        if self.dp:
            if self.dp_epsilon is not None and self.dp_noise_multiplier is not None:
                raise SimulationError("give dp_epsilon or dp_noise_multiplier, not both")
            if self.clip_norm is None:
                raise SimulationError("DP needs a clip norm (--dp-clip / --clip-norm)")
            if not isinstance(self.dp_delta, float | int) or not 0 < self.dp_delta < 1:
                raise SimulationError(f"dp_delta must lie in (0, 1), got {self.dp_delta!r}")
            if self.dp_noise not in ("central", "distributed"):
                raise SimulationError(
                    f"dp_noise must be 'central' or 'distributed', got {self.dp_noise!r}"
                )
            if self.dp_min_clients is not None:
                _check_int("dp_min_clients", self.dp_min_clients, 1)
            if self.weighting != "uniform":
                raise SimulationError("DP-FedAvg weights clients uniformly: use weighting=uniform")
        try:
            check_rule(self.privacy, rule, dp=self.dp)
            privacy_options(self.privacy, self.privacy_params)
        except (PrivacyError, TypeError) as exc:
            raise SimulationError(str(exc)) from exc
        bounded = (
            self.clip_norm is not None
            or "value_range" in self.privacy_params
            or (rule == "reputation" and "clip_norm" in self.agg_params)
        )
        if self.privacy == "secagg" and not bounded:
            raise SimulationError(
                "secagg needs a bound on update values: set clip_norm (norm-clipped "
                "averaging is the rule under secure aggregation) or privacy_params value_range"
            )


def _positive_float(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise SimulationError(f"{name} must be an integer >= {low}, got {value!r}")


def resolve_aggregator(name: str) -> str:
    """The registered rule for ``name`` (aliases such as ``cclip`` resolved), or a plug-in
    path unchanged; unknown names raise :class:`SimulationError`."""
    known = aggregator_names()
    if name in known or ":" in name:
        return name
    target = AGGREGATOR_ALIASES.get(name)
    if target is not None and target in known:
        return target
    aliases = ", ".join(f"{a}={t}" for a, t in AGGREGATOR_ALIASES.items())
    raise SimulationError(
        f"unknown aggregator {name!r}; known: {', '.join(known)} (aliases: {aliases})"
    )


def attack_kind(name: str) -> Literal["none", "data", "model"]:
    """Whether ``name`` is no attack, a data attack or a model attack (plug-in paths are
    model attacks); unknown names raise :class:`SimulationError`."""
    if name == "none":
        return "none"
    if name in data_attack_names():
        return "data"
    if name in attack_names() or ":" in name:
        return "model"
    known = ["none", *data_attack_names(), *attack_names()]
    raise SimulationError(f"unknown attack {name!r}; known: {', '.join(known)}")


# ------------------------------------------------------------------------------ results


@dataclass(slots=True)
class RoundMetrics:
    """What one round produced. ``test_*`` are None on rounds without evaluation.

    Scores are the rule's per-client scores (see each rule): their min/median/max over
    all clients and their means over honest and Byzantine clients. Timings: ``train_s``
    covers local training (with worker momentum and the FLTrust root update), ``attack_s``
    the finite-update check and the attack, ``aggregate_s`` the rule and the server step,
    ``eval_s`` the test evaluation.
    """

    round: int
    test_accuracy: float | None
    test_loss: float | None
    train_loss: float | None
    accepted: int
    rejected: int
    byzantine_accepted: int
    honest_rejected: int
    score_min: float | None
    score_median: float | None
    score_max: float | None
    score_honest_mean: float | None
    score_byzantine_mean: float | None
    update_norm: float
    # timings (seconds; excluded from the deterministic JSON)
    wall_s: float = 0.0
    train_s: float = 0.0
    attack_s: float = 0.0
    aggregate_s: float = 0.0
    eval_s: float = 0.0
    # privacy (None, and left out of the JSON, when the run has no privacy features)
    participants: int | None = None
    skipped: bool | None = None
    clipped: int | None = None
    protocol_error: float | None = None
    epsilon: float | None = None
    epsilon_round: float | None = None
    noise_multiplier: float | None = None

    TIMING_FIELDS = ("wall_s", "train_s", "attack_s", "aggregate_s", "eval_s")
    OPTIONAL_FIELDS = (
        "participants",
        "skipped",
        "clipped",
        "protocol_error",
        "epsilon",
        "epsilon_round",
        "noise_multiplier",
    )

    @property
    def overhead_s(self) -> float:
        """Round time outside local training and evaluation."""
        return max(self.wall_s - self.train_s - self.eval_s, 0.0)

    def metrics(self) -> dict[str, Any]:
        """Deterministic fields, with non-finite floats as None."""
        out = {}
        for name in self.__dataclass_fields__:
            if name in self.TIMING_FIELDS:
                continue
            if name in self.OPTIONAL_FIELDS and getattr(self, name) is None:
                continue
            out[name] = _clean(getattr(self, name))
        return out

    def timing(self) -> dict[str, float]:
        """Timing fields plus the derived ``overhead_s``."""
        out = {name: float(getattr(self, name)) for name in self.TIMING_FIELDS}
        out["overhead_s"] = self.overhead_s
        return out


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(slots=True)
class SimulationResult:
    """A finished run: the config, setup facts and per-round metrics."""

    config: SimulationConfig
    rounds: list[RoundMetrics]
    num_params: int
    num_train: int
    num_test: int
    num_classes: int
    client_sizes: list[int]
    aggregator_rule: str
    initial_accuracy: float
    initial_loss: float
    wall_s: float = 0.0
    setup_s: float = 0.0
    privacy: dict[str, Any] | None = None  # PrivateAggregator.describe(), when used

    @property
    def evaluated(self) -> list[RoundMetrics]:
        """Rounds with a test evaluation."""
        return [r for r in self.rounds if r.test_accuracy is not None]

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round (always evaluated)."""
        acc = self.rounds[-1].test_accuracy
        return float("nan") if acc is None else acc

    @property
    def best_accuracy(self) -> float:
        """Best test accuracy over evaluated rounds."""
        accs = [r.test_accuracy for r in self.evaluated if r.test_accuracy is not None]
        return max(accs) if accs else float("nan")

    def summary(self) -> dict[str, Any]:
        """Headline numbers (deterministic)."""
        accepted = [r.accepted for r in self.rounds]
        byz = [r.byzantine_accepted for r in self.rounds]
        return {
            "final_accuracy": _clean(self.final_accuracy),
            "best_accuracy": _clean(self.best_accuracy),
            "final_loss": _clean(self.rounds[-1].test_loss),
            "initial_accuracy": _clean(self.initial_accuracy),
            "mean_accepted": float(np.mean(accepted)),
            "mean_byzantine_accepted": float(np.mean(byz)),
        } | self._privacy_summary()

    def _privacy_summary(self) -> dict[str, Any]:
        if self.privacy is None:
            return {}
        out: dict[str, Any] = {
            "privacy": self.privacy["mode"],
            "skipped_rounds": sum(1 for r in self.rounds if r.skipped),
            "max_protocol_error": max(
                (r.protocol_error for r in self.rounds if r.protocol_error is not None),
                default=None,
            ),
        }
        if self.rounds[-1].epsilon is not None:
            out["final_epsilon"] = self.rounds[-1].epsilon
            out["delta"] = self.privacy["dp"]["delta"]
        return out

    def timing_summary(self) -> dict[str, float]:
        """Median per-round timings and totals."""
        t = [r.timing() for r in self.rounds]
        out = {f"median_{k}": float(np.median([x[k] for x in t])) for k in t[0]}
        out["total_wall_s"] = self.wall_s
        out["setup_s"] = self.setup_s
        return out

    def to_dict(self, *, timing: bool = False) -> dict[str, Any]:
        """The metrics document. Without ``timing`` it is identical for identical runs."""
        out: dict[str, Any] = {
            "format": "cifer-fl-simulation/1",
            "config": self.config.to_dict(),
            "aggregator_rule": self.aggregator_rule,
            "num_params": self.num_params,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
            "client_sizes": self.client_sizes,
            "summary": self.summary(),
            "rounds": [r.metrics() for r in self.rounds],
        }
        if self.privacy is not None:
            out["privacy"] = self.privacy
        if timing:
            out["timing"] = self.timing_dict()
        return out

    def timing_dict(self) -> dict[str, Any]:
        """Per-round timings and their medians."""
        return {
            "summary": self.timing_summary(),
            "rounds": [{"round": r.round, **r.timing()} for r in self.rounds],
        }


# ------------------------------------------------------------------------------ setup


@dataclass(slots=True)
class ClientData:
    """One client's training data; ``flipped`` when label flipping was applied."""

    x: F32Array
    y: npt.NDArray[np.int64]
    byzantine: bool
    flipped: bool = False

    def __len__(self) -> int:
        return int(self.y.shape[0])


def build_clients(cfg: SimulationConfig, train: Any) -> list[ClientData]:
    """Partition ``train`` (an ArrayDataset) among the clients; Byzantine clients are
    ``0 .. byzantine-1`` and get flipped labels under the ``label_flip`` attack.

    With ``byzantine_data="iid"`` (Karimireddy et al.'s layout) the honest clients split
    the whole training set by ``partition`` among themselves, so no class is lost to the
    attackers, and Byzantine client j gets IID shard j (mod n - f) of the same set."""
    from cifer.compute.fl.data import partition

    f = cfg.byzantine
    try:
        if cfg.byzantine_data == "iid" and f > 0:
            honest = cfg.clients - f
            shards = partition(train.y, honest, "iid", cfg.seed)
            parts = [shards[j % honest] for j in range(f)]
            parts += partition(train.y, honest, cfg.partition, cfg.seed)
        else:
            parts = partition(train.y, cfg.clients, cfg.partition, cfg.seed)
    except ValueError as exc:
        raise SimulationError(f"partition {cfg.partition!r}: {exc}") from exc
    flip = attack_kind(cfg.attack) == "data" and cfg.byzantine > 0
    clients = []
    for i, idx in enumerate(parts):
        if idx.size == 0:
            raise SimulationError(
                f"partition {cfg.partition!r} gave client {i} no training samples; "
                "use fewer clients or another partition"
            )
        x, y = train.x[idx], train.y[idx]
        byz = i < f
        flipped = False
        if byz and flip:
            y = _data_attack(cfg, y, train.num_classes)
            flipped = True
        clients.append(ClientData(x, y, byz, flipped))
    return clients


def _data_attack(cfg: SimulationConfig, y: npt.NDArray[np.int64], num_classes: int) -> Any:
    if cfg.attack != "label_flip":  # only data attack registered today
        raise SimulationError(f"data attack {cfg.attack!r} is not supported by the simulator")
    params = dict(cfg.attack_params)
    unknown = sorted(set(params) - {"num_classes"})
    if unknown:
        raise SimulationError(f"attack 'label_flip' has no parameter(s) {', '.join(unknown)}")
    nc = params.get("num_classes", num_classes)
    if isinstance(nc, bool) or not isinstance(nc, int):
        raise SimulationError(f"attack 'label_flip': num_classes must be an integer, got {nc!r}")
    try:
        return flip_labels(y, nc)
    except AttackError as exc:
        raise SimulationError(f"attack 'label_flip': {exc}") from exc


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng([seed, *path])


def client_rng(seed: int, round_: int, client: int) -> np.random.Generator:
    """The Generator client ``client`` trains with in round ``round_`` (1-based): with the
    global model of that round it reproduces the client's update exactly."""
    return _rng(seed, _TAG_CLIENT, round_, client)


def _own_updates_needed(cfg: SimulationConfig) -> bool:
    if attack_kind(cfg.attack) != "model":
        return False
    if ":" in cfg.attack or cfg.attack in OWN_UPDATE_ATTACKS:
        return True
    return cfg.attack == "sign_flip" and cfg.attack_params.get("mode") == "own"


@dataclass(slots=True)
class _State:
    cfg: SimulationConfig
    rule: str
    kind: Literal["none", "data", "model"]
    clients: list[ClientData]
    test_x: F32Array
    test_y: npt.NDArray[np.int64]
    trainer: Trainer
    spec: ParamSpec
    model_spec: ModelSpec
    w: F32Array
    updates: F32Array
    weights: npt.NDArray[np.float64]
    training: npt.NDArray[np.intp]  # clients that train: honest, and Byzantine unless the
    # attack replaces their updates without using them; always a suffix start..n-1

    @property
    def trained(self) -> slice:
        """Rows of the training clients, as a slice (views, not copies)."""
        return slice(int(self.training[0]), self.cfg.clients)

    momentum: F32Array | None
    root: ClientData | None
    root_momentum: F32Array | None
    previous: F32Array | None = None
    backend: _RayBackend | None = None
    private: PrivateAggregator | None = None


def _load(cfg: SimulationConfig) -> tuple[Any, Any]:
    from cifer.compute.fl.data import load_dataset

    try:
        return load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, subset=cfg.subset
        )
    except (ValueError, OSError) as exc:
        raise SimulationError(f"dataset {cfg.dataset!r}: {exc}") from exc


def _setup(cfg: SimulationConfig) -> _State:
    cfg.validate()
    rule = resolve_aggregator(cfg.aggregator)
    kind = attack_kind(cfg.attack) if cfg.byzantine > 0 else "none"
    train, test = _load(cfg)
    clients = build_clients(cfg, train)
    model_spec = ModelSpec(cfg.model, train.input_shape, train.num_classes, cfg.seed)
    try:
        trainer = model_spec.build()
    except TrainerError as exc:
        raise SimulationError(f"model {cfg.model!r}: {exc}") from exc
    spec = param_spec(trainer)
    w = get_flat(trainer, spec)
    n, d = cfg.clients, spec.size
    f = cfg.byzantine
    own = _own_updates_needed(cfg) and f > 0
    train_byz = kind != "model" or own
    training = np.arange(0 if train_byz else f, n, dtype=np.intp)
    if cfg.weighting == "samples":
        weights = np.array([len(c) for c in clients], dtype=np.float64)
    else:
        weights = np.ones(n, dtype=np.float64)
    root = None
    if _needs_root(cfg, rule):
        rng = _rng(cfg.seed, _TAG_ROOT_DATA)
        k = min(cfg.root_size, len(train))
        idx = np.sort(rng.choice(len(train), size=k, replace=False))
        root = ClientData(train.x[idx], train.y[idx], byzantine=False)
    state = _State(
        cfg=cfg,
        rule=rule,
        kind=kind,
        clients=clients,
        test_x=test.x,
        test_y=test.y,
        trainer=trainer,
        spec=spec,
        model_spec=model_spec,
        w=w,
        updates=np.zeros((n, d), dtype=DTYPE),
        weights=weights,
        training=training,
        momentum=np.zeros((n, d), dtype=DTYPE) if cfg.mode == "fedsgd" else None,
        root=root,
        root_momentum=np.zeros(d, dtype=DTYPE) if root and cfg.mode == "fedsgd" else None,
    )
    _preflight(state)
    if cfg.private_aggregation:
        state.private = _private_aggregator(cfg, rule, d)
    if cfg.backend == "ray":
        state.backend = _RayBackend(cfg, model_spec, clients)
    return state


def _private_aggregator(cfg: SimulationConfig, rule: str, length: int) -> PrivateAggregator:
    """The round aggregator for a run with a privacy mode, clipping, DP or sampling; DP's
    noise multiplier is calibrated here for ``cfg.rounds`` rounds when a target epsilon is
    given."""
    from cifer.compute.fl.private_round import PrivacyConfig, dp_config, privacy_options

    clip = cfg.clip_norm
    if clip is None and rule == "reputation" and "clip_norm" in cfg.agg_params:
        clip = float(cfg.agg_params["clip_norm"])  # type: ignore[arg-type]
    try:
        secagg, ckks = privacy_options(cfg.privacy, cfg.privacy_params)
        dp = None
        if cfg.dp:
            assert clip is not None  # validate()
            expected = cfg.sample_rate * cfg.clients
            dp = dp_config(
                mode=cfg.dp_noise,
                clip_norm=clip,
                sampling_rate=cfg.sample_rate,
                delta=float(cfg.dp_delta),
                rounds=cfg.rounds,
                min_clients=cfg.dp_min_clients or max(1, math.floor(expected)),
                epsilon=cfg.dp_epsilon,
                noise_multiplier=cfg.dp_noise_multiplier,
            )
        config = PrivacyConfig(
            mode=cfg.privacy,
            clip_norm=None if dp is not None else clip,
            dp=dp,
            secagg=secagg,
            ckks=ckks,
        )
        return PrivateAggregator(config, length=length, population=cfg.clients, seed=cfg.seed)
    except PrivacyError as exc:
        raise SimulationError(str(exc)) from exc


def _private_weights(state: _State, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    """Public integer weights of ``rows``: 1 (uniform) or sample counts, capped by the
    reputation rule's ``max_samples`` (reputation is full in a simulation)."""
    w = state.weights[rows]
    cap = state.cfg.agg_params.get("max_samples") if state.rule == "reputation" else None
    if isinstance(cap, int | float) and not isinstance(cap, bool):
        w = np.minimum(w, max(1.0, math.floor(cap)))
    return np.rint(w).astype(np.int64)


def _sample(state: _State, r: int) -> npt.NDArray[np.intp]:
    """Round ``r``'s participants: each client independently with probability q."""
    cfg = state.cfg
    draw = _rng(cfg.seed, _TAG_SAMPLE, r).random(cfg.clients)
    return np.flatnonzero(draw < cfg.sample_rate).astype(np.intp)


def _needs_root(cfg: SimulationConfig, rule: str) -> bool:
    return rule == "fltrust" or (rule == "bucketing" and cfg.agg_params.get("inner") == "fltrust")


def _agg_context(state: _State, rng: np.random.Generator, root: F32Array | None) -> AggContext:
    cfg = state.cfg
    return AggContext(
        f=cfg.f,
        params=dict(cfg.agg_params),
        previous=state.previous,
        root_update=root,
        reputation=np.full(cfg.clients, FULL_REPUTATION, dtype=np.int64),
        rng=rng,
    )


def _attack_context(state: _State, rng: np.random.Generator, own: F32Array | None) -> AttackContext:
    cfg = state.cfg
    return AttackContext.first(
        cfg.clients,
        cfg.byzantine,
        rng=rng,
        aggregator=state.rule,
        params=dict(cfg.attack_params),
        own_updates=own,
    )


def _preflight(state: _State) -> None:
    """Run the attack and the rule once on small random updates, so that a bad parameter,
    an f the rule cannot tolerate or an unknown plug-in fails before any training."""
    cfg = state.cfg
    n, f, d = cfg.clients, cfg.byzantine, 8
    rng = _rng(cfg.seed, _TAG_PREFLIGHT)
    dummy = rng.standard_normal((n, d)).astype(DTYPE)
    if state.kind == "model":
        own = dummy[:f].copy() if _own_updates_needed(cfg) else None
        try:
            dummy = run_attack(cfg.attack, dummy[f:], _attack_context(state, rng, own))
        except (AttackError, TypeError, ValueError) as exc:
            raise SimulationError(f"attack {cfg.attack!r}: {exc}") from exc
    root = dummy.mean(axis=0) if state.root is not None else None
    try:
        ctx = _agg_context(state, rng, root)
        aggregate(state.rule, dummy, state.weights, ctx)
    except (AggregationError, TypeError, ValueError) as exc:
        raise SimulationError(
            f"aggregator {cfg.aggregator!r} with n={n} clients and f={cfg.f}: {exc}"
        ) from exc


# ------------------------------------------------------------------------------ training


def _client_update(
    trainer: Trainer,
    spec: ParamSpec,
    w: F32Array,
    data: ClientData,
    cfg: SimulationConfig,
    rng: np.random.Generator,
    out: F32Array,
) -> float:
    """Write client's FedAvg delta (or FedSGD gradient) into ``out``; return its loss."""
    if cfg.mode == "fedsgd":
        set_flat(trainer, spec, w)
        out[...] = trainer.gradient(data.x, data.y, batch_size=cfg.batch_size, rng=rng)
        return float("nan")
    _, loss = local_update(
        trainer,
        spec,
        w,
        data.x,
        data.y,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        rng=rng,
        steps=cfg.local_steps,
        out=out,
    )
    return loss


def _train_local(state: _State, r: int) -> list[float]:
    """Train every training client in turn, BLAS on one thread: local steps are small
    matrix products (a 32-sample batch), which extra BLAS threads slow down when the CPU
    is shared (measured 0.14 s/round steady on one thread vs 0.18-2.5 s on two, 100 MLP
    clients, 2 cores under load). Parallelism across clients is Ray's job."""
    cfg, trainer, spec, w = state.cfg, state.trainer, state.spec, state.w
    losses: list[float] = []
    with blas_single_thread():
        if cfg.mode == "fedsgd" and cfg.vectorize and isinstance(trainer, BatchGradientTrainer):
            _vectorised_gradients(state, r)
            return losses
        for i in state.training:
            rng = client_rng(cfg.seed, r, int(i))
            try:
                loss = _client_update(
                    trainer, spec, w, state.clients[i], cfg, rng, state.updates[i]
                )
            except (TrainerError, ParamError) as exc:
                raise SimulationError(f"round {r}: client {int(i)}: {exc}") from exc
            losses.append(loss)
    return losses


def _vectorised_gradients(state: _State, r: int) -> None:
    """FedSGD gradients of all training clients via ``client_gradients``, in chunks of
    clients with equal batch sizes; batches are drawn exactly as ``gradient`` draws them."""
    cfg, trainer = state.cfg, state.trainer
    assert isinstance(trainer, BatchGradientTrainer)
    set_flat(state.trainer, state.spec, state.w)
    groups: dict[int, list[tuple[int, npt.NDArray[np.int64]]]] = {}
    for i in state.training:
        data = state.clients[i]
        idx = sample_batch(len(data), cfg.batch_size, client_rng(cfg.seed, r, int(i)))
        groups.setdefault(len(idx), []).append((int(i), idx))
    for members in groups.values():
        for start in range(0, len(members), GRADIENT_CHUNK):
            chunk = members[start : start + GRADIENT_CHUNK]
            xs = np.stack([state.clients[i].x[idx] for i, idx in chunk])
            ys = np.stack([state.clients[i].y[idx] for i, idx in chunk])
            rows = np.array([i for i, _ in chunk], dtype=np.intp)
            try:
                state.updates[rows] = trainer.client_gradients(xs, ys)
            except (TrainerError, ParamError) as exc:
                raise SimulationError(f"round {r}: clients {rows.tolist()}: {exc}") from exc


def _root_update(state: _State, r: int) -> F32Array | None:
    if state.root is None:
        return None
    cfg = state.cfg
    out = np.empty(state.spec.size, dtype=DTYPE)
    rng = _rng(cfg.seed, _TAG_ROOT, r)
    _client_update(state.trainer, state.spec, state.w, state.root, cfg, rng, out)
    if state.root_momentum is not None:
        state.root_momentum *= np.float32(cfg.momentum)
        state.root_momentum += np.float32(1.0 - cfg.momentum) * out
        return state.root_momentum.copy()
    return out


def _apply_momentum(state: _State) -> None:
    """m_i = beta m_i + (1 - beta) g_i for training clients; rows become the momenta."""
    m, cfg = state.momentum, state.cfg
    assert m is not None
    rows = state.trained  # a slice: views, no copies
    beta = np.float32(cfg.momentum)
    m[rows] *= beta
    m[rows] += np.float32(1.0 - beta) * state.updates[rows]
    state.updates[rows] = m[rows]


def _check_finite(state: _State, r: int) -> None:
    sampled = state.cfg.sample_rate != 1.0
    u = state.updates[state.training if sampled else state.trained]
    if np.isfinite(u).all():  # one fast pass; locate the culprit only on failure
        return
    i = int(state.training[np.flatnonzero(~np.isfinite(u).all(axis=1))[0]])
    who = "Byzantine" if state.clients[i].byzantine else "honest"
    raise SimulationError(
        f"round {r}: client {i} ({who}) produced a non-finite update: local training "
        f"diverged (try a smaller --lr than {state.cfg.lr})"
    )


def _attack(state: _State, r: int) -> None:
    cfg = state.cfg
    f = cfg.byzantine
    u = state.updates
    own = u[:f] if _own_updates_needed(cfg) else None
    ctx = _attack_context(state, _rng(cfg.seed, _TAG_ATTACK, r), own)
    try:
        byz = np.asarray(get_attack(cfg.attack)(u[f:], ctx))
    except (AttackError, ValueError) as exc:
        raise SimulationError(f"round {r}: attack {cfg.attack!r}: {exc}") from exc
    if byz.shape != (f, u.shape[1]):
        raise SimulationError(
            f"round {r}: attack {cfg.attack!r} returned shape {byz.shape}, expected "
            f"({f}, {u.shape[1]})"
        )
    u[:f] = byz


def _score_summary(res: AggResult, f: int) -> dict[str, float | None]:
    s = res.scores
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        return dict.fromkeys(("min", "median", "max", "honest", "byz"))
    hon, byz = s[f:], s[:f]
    return {
        "min": float(finite.min()),
        "median": float(np.median(finite)),
        "max": float(finite.max()),
        "honest": float(np.mean(hon)) if hon.size else None,
        "byz": float(np.mean(byz)) if byz.size else None,
    }


def _round(state: _State, r: int) -> RoundMetrics:
    cfg = state.cfg
    t0 = time.perf_counter()
    if cfg.sample_rate != 1.0:
        state.training = _sample(state, r)
    backend = state.backend
    losses = backend.train(state, r) if backend is not None else _train_local(state, r)
    if cfg.mode == "fedsgd":
        _apply_momentum(state)
    root = _root_update(state, r)
    t1 = time.perf_counter()
    _check_finite(state, r)
    if state.kind == "model":
        _attack(state, r)
    t2 = time.perf_counter()
    private = None
    considered = np.ones(cfg.clients, dtype=bool)
    if state.private is not None:
        res, private, considered = _private_round(state, r)
    else:
        ctx = _agg_context(state, _rng(cfg.seed, _TAG_AGG, r), root)
        try:
            res = aggregate(state.rule, state.updates, state.weights, ctx)
        except AggregationError as exc:
            raise SimulationError(f"round {r}: {exc}") from exc
    agg = np.asarray(res.aggregate, dtype=DTYPE)
    if cfg.mode == "fedsgd":
        state.w -= np.float32(cfg.lr) * agg
    else:
        state.w += np.float32(cfg.server_lr) * agg
    state.previous = agg
    t3 = time.perf_counter()
    acc = loss = None
    if r % cfg.eval_every == 0 or r == cfg.rounds:
        ev = _evaluate(state)
        acc, loss = ev["accuracy"], ev["loss"]
    t4 = time.perf_counter()
    f = cfg.byzantine
    accepted = res.accepted
    rejected = considered & ~accepted
    scores = _score_summary(res, f)
    honest_losses = [x for x in losses if math.isfinite(x)]
    metrics = RoundMetrics(
        round=r,
        test_accuracy=acc,
        test_loss=loss,
        train_loss=float(np.mean(honest_losses)) if honest_losses else None,
        accepted=int(accepted.sum()),
        rejected=int(rejected.sum()),
        byzantine_accepted=int(accepted[:f].sum()),
        honest_rejected=int(rejected[f:].sum()),
        score_min=scores["min"],
        score_median=scores["median"],
        score_max=scores["max"],
        score_honest_mean=scores["honest"],
        score_byzantine_mean=scores["byz"],
        update_norm=float(np.linalg.norm(agg.astype(np.float64))),
        wall_s=t4 - t0,
        train_s=t1 - t0,
        attack_s=t2 - t1,
        aggregate_s=t3 - t2,
        eval_s=t4 - t3,
    )
    if private is not None:
        metrics.participants = private.participants
        metrics.skipped = private.skipped
        metrics.clipped = private.clipped
        metrics.protocol_error = private.protocol_error
        metrics.epsilon = private.epsilon
        metrics.epsilon_round = private.epsilon_round
        metrics.noise_multiplier = private.noise_multiplier
    return metrics


def _private_round(
    state: _State, r: int
) -> tuple[AggResult, PrivateRoundResult, npt.NDArray[np.bool_]]:
    """Aggregate the round's participants under the run's privacy mode. A skipped round
    (too few participants for the protocol) leaves the model where it was."""
    cfg = state.cfg
    assert state.private is not None
    n = cfg.clients
    rows = state.training if cfg.sample_rate != 1.0 else np.arange(n, dtype=np.intp)
    weights = _private_weights(state, rows)
    try:
        out = state.private.aggregate(state.updates[rows], weights, round_=r, clients=rows)
    except PrivacyError as exc:
        raise SimulationError(f"round {r}: {exc}") from exc
    considered = np.zeros(n, dtype=bool)
    considered[rows] = True
    scores = np.full(n, np.nan)
    if out.aggregate is None:
        agg = np.zeros(state.spec.size, dtype=DTYPE)
        accepted = np.zeros(n, dtype=bool)
    else:
        agg = out.aggregate
        accepted = considered.copy()
        scores[rows] = weights / weights.sum()
    return AggResult(agg, accepted, scores), out, considered


def _evaluate(state: _State) -> dict[str, float]:
    set_flat(state.trainer, state.spec, state.w)
    return state.trainer.evaluate(state.test_x, state.test_y)


class Simulation:
    """A prepared experiment: constructing it loads the data, partitions it, builds the
    model and dry-runs the attack and the rule (so bad input fails here, before any
    training); :meth:`run` then runs the rounds. One instance runs once."""

    def __init__(self, cfg: SimulationConfig) -> None:
        t0 = time.perf_counter()
        self.cfg = cfg
        self._state = _setup(cfg)
        self.setup_s = time.perf_counter() - t0
        self._ran = False

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector."""
        return self._state.spec.size

    @property
    def clients(self) -> list[ClientData]:
        """The clients' (possibly poisoned) training data."""
        return self._state.clients

    def run(self, progress: Progress | None = None) -> SimulationResult:
        """Run every round; call ``progress(metrics)`` after each."""
        if self._ran:
            raise SimulationError("this Simulation has already run; build a new one")
        self._ran = True
        state, cfg = self._state, self.cfg
        t_start = time.perf_counter()
        try:
            initial = _evaluate(state)
            rounds: list[RoundMetrics] = []
            for r in range(1, cfg.rounds + 1):
                m = _round(state, r)
                rounds.append(m)
                if progress is not None:
                    progress(m)
        finally:
            if state.backend is not None:
                state.backend.close()
        return SimulationResult(
            config=cfg,
            rounds=rounds,
            num_params=state.spec.size,
            num_train=sum(len(c) for c in state.clients),
            num_test=len(state.test_y),
            num_classes=int(state.model_spec.num_classes),
            client_sizes=[len(c) for c in state.clients],
            aggregator_rule=state.rule,
            initial_accuracy=initial["accuracy"],
            initial_loss=initial["loss"],
            wall_s=time.perf_counter() - t_start + self.setup_s,
            setup_s=self.setup_s,
            privacy=None if state.private is None else state.private.describe(),
        )


def run_simulation(cfg: SimulationConfig, progress: Progress | None = None) -> SimulationResult:
    """Run the experiment ``cfg``; call ``progress(metrics)`` after every round.

    Raises :class:`SimulationError` for bad input (unknown names, impossible f, missing
    dataset files, a diverging client) with a message naming the cause.
    """
    return Simulation(cfg).run(progress)


# ------------------------------------------------------------------------------ Ray


#: Per-worker-process trainers, keyed by model recipe (Ray reuses worker processes).
_WORKER_TRAINERS: dict[ModelSpec, tuple[Trainer, ParamSpec]] = {}


def _ray_client_task(
    model_spec: ModelSpec,
    w: F32Array,
    x: F32Array,
    y: npt.NDArray[np.int64],
    cfg: SimulationConfig,
    seed_path: tuple[int, ...],
) -> tuple[F32Array, float]:
    """Body of one Ray task: one client's update at global model ``w``."""
    cached = _WORKER_TRAINERS.get(model_spec)
    if cached is None:
        trainer = model_spec.build()
        cached = (trainer, param_spec(trainer))
        _WORKER_TRAINERS[model_spec] = cached
    trainer, spec = cached
    out = np.empty(spec.size, dtype=DTYPE)
    data = ClientData(x, y, byzantine=False)
    loss = _client_update(trainer, spec, w, data, cfg, np.random.default_rng(list(seed_path)), out)
    return out, loss


class _RayBackend:
    """Client training as Ray tasks. Client data goes to the object store once; each round
    ships the global model once and gathers the updates into the [n, d] matrix."""

    def __init__(
        self, cfg: SimulationConfig, model_spec: ModelSpec, clients: Sequence[ClientData]
    ) -> None:
        try:
            ray = importlib.import_module("ray")  # optional extra; untyped for mypy
        except ImportError as exc:
            raise SimulationError(
                "backend 'ray' needs Ray, which is not installed: pip install 'cifer[ray]' "
                "(or pip install ray), or use --backend local"
            ) from exc
        self.ray = ray
        self.owns = not ray.is_initialized()
        if self.owns:
            ray.init(address=cfg.ray_address, ignore_reinit_error=True)
        self.task = ray.remote(_ray_client_task)
        self.model_spec = model_spec
        self.data = [(ray.put(c.x), ray.put(c.y)) for c in clients]

    def train(self, state: _State, r: int) -> list[float]:
        ray, cfg = self.ray, state.cfg
        w_ref = ray.put(state.w)
        cfg_ref = ray.put(cfg)
        futures = [
            self.task.remote(
                self.model_spec, w_ref, *self.data[i], cfg_ref, (cfg.seed, _TAG_CLIENT, r, int(i))
            )
            for i in state.training
        ]
        results = ray.get(futures)
        losses = []
        for i, (row, loss) in zip(state.training, results, strict=True):
            state.updates[i] = row
            losses.append(float(loss))
        return losses

    def close(self) -> None:
        if self.owns:
            self.ray.shutdown()

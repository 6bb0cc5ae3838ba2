"""The I/O edge of the fl contract: update blobs in, aggregates out.

:class:`cifer.app.contracts.fl.FlModule` is a pure state machine; whatever needs bytes
outside state (update and model blobs) or floating point (the aggregation rule itself)
happens here, and only where a node checks before it admits, proposes or votes
(``Context.external``). The contract stores only the hashes and the integer results.

Determinism: validators compare the proposer's aggregate with their own by hash, so the
rule must give bit-identical output on every validator. The rules are deterministic for
identical inputs on one platform (see :mod:`cifer.compute.fl.aggregators.base`); a network
of mixed BLAS builds would need a tolerance comparison, which this engine does not do.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from cifer.app.contracts.fl import AggregateOutcome, Job, UpdateRef, capped_samples
from cifer.app.module import SystemUnavailable
from cifer.compute.blobs.peers import BlobFetcher
from cifer.compute.blobs.store import BlobError, BlobStore
from cifer.compute.fl.aggregators.base import AggContext, AggregationError
from cifer.compute.fl.aggregators.registry import aggregate
from cifer.compute.fl.params import ParamError, ParamSpec, from_bytes, to_bytes

log = logging.getLogger(__name__)

#: The rule a round falls back to when the job's rule cannot run on what arrived (e.g.
#: Krum with fewer updates than it needs, after stragglers): works for any n >= 1.
FALLBACK_RULE = "median"
_INT = re.compile(r"^[+-]?\d+$")


#: Rules a validator cannot run: FLTrust scores against the server's own root-dataset
#: update, and validators hold no training data.
OFF_CHAIN_RULES = frozenset({"fltrust"})


def onchain_rule(name: str) -> str:
    """The registered rule a job's ``rule`` names (aliases resolved); ValueError if none.

    Plug-in paths are refused: a ``module:function`` would run arbitrary code on every
    validator.
    """
    from cifer.compute.fl.aggregators.registry import aggregator_names
    from cifer.compute.fl.simulation import AGGREGATOR_ALIASES

    if ":" in name or "." in name:
        raise ValueError(f"rule {name!r}: only built-in rules run on chain, not plug-ins")
    rule = AGGREGATOR_ALIASES.get(name, name)
    known = [r for r in aggregator_names() if r not in OFF_CHAIN_RULES and r != "bucketing"]
    if rule in OFF_CHAIN_RULES:
        raise ValueError(f"rule {name!r} needs a server root dataset, which validators lack")
    if rule not in aggregator_names():
        raise ValueError(f"unknown rule {name!r}; built-in rules: {', '.join(known)}")
    return rule


def parse_params(params: Mapping[str, str]) -> dict[str, object]:
    """Rule parameters from their on-chain strings: ints, then floats, else the string."""
    out: dict[str, object] = {}
    for k, v in params.items():
        if _INT.match(v):
            out[k] = int(v)
        else:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


class BlobEngine:
    """Checks update blobs and computes aggregates from a node's blob store (and peers)."""

    def __init__(
        self,
        store: BlobStore,
        fetcher: BlobFetcher | None = None,
        *,
        fetch_timeout_s: float = 5.0,
        cache_models: int = 8,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.fetch_timeout_s = fetch_timeout_s
        self._lock = threading.Lock()
        self._specs: OrderedDict[bytes, ParamSpec] = OrderedDict()
        self._cache_models = cache_models
        self._valid: OrderedDict[bytes, bool] = OrderedDict()

    # ------------------------------------------------------------ blobs

    def _get(self, h: bytes) -> bytes | None:
        data = self.store.get(h)
        if data is None and self.fetcher is not None:
            self.fetcher.fetch_missing([h], self.fetch_timeout_s)
            data = self.store.get(h)
        return data

    def _ensure(self, hashes: list[bytes]) -> list[bytes]:
        """Fetch what is missing, all at once; -> the hashes still missing."""
        missing = [h for h in hashes if not self.store.has(h)]
        if missing and self.fetcher is not None:
            missing = self.fetcher.fetch_missing(missing, self.fetch_timeout_s)
        return missing

    def spec(self, model: bytes) -> ParamSpec:
        """Tensor names and shapes of a model blob (cached: every update is checked on it)."""
        with self._lock:
            hit = self._specs.get(model)
        if hit is not None:
            return hit
        data = self._get(model)
        if data is None:
            raise SystemUnavailable(f"model blob {model.hex()} is not available")
        spec = ParamSpec.of(from_bytes(data))
        with self._lock:
            self._specs[model] = spec
            while len(self._specs) > self._cache_models:
                self._specs.popitem(last=False)
        return spec

    # ------------------------------------------------------------ FlEngine

    def check_update(self, job: Job, update: bytes) -> str:
        with self._lock:
            if self._valid.get(update + job.spec.initial_model):
                return ""
        data = self._get(update)
        if data is None:
            return (
                f"no blob {update.hex()} on this node or its peers: upload the update "
                f"(PUT /blobs/{update.hex()}) before submitting it"
            )
        try:
            spec = self.spec(job.spec.initial_model)
        except (SystemUnavailable, ParamError) as exc:
            return f"job {job.id}'s initial model cannot be read: {exc}"
        try:
            params = from_bytes(data)
        except ParamError as exc:
            return f"update {update.hex()[:16]}… is not a model blob: {exc}"
        got = ParamSpec.of(params)
        if got != spec:
            return (
                f"update {update.hex()[:16]}… has tensors {_describe(got)}, job {job.id}'s "
                f"model has {_describe(spec)}"
            )
        if not all(np.isfinite(a).all() for a in params.values()):
            return f"update {update.hex()[:16]}… contains NaN or infinite values"
        with self._lock:
            self._valid[update + job.spec.initial_model] = True
            while len(self._valid) > 4096:
                self._valid.popitem(last=False)
        return ""

    def aggregate(self, job: Job, updates: list[UpdateRef]) -> AggregateOutcome:
        missing = self._ensure([job.model, *[u.update for u in updates]])
        if missing:
            raise SystemUnavailable(
                f"job {job.id} round {job.round}: blobs not available: "
                + ", ".join(h.hex()[:16] for h in missing[:5])
            )
        try:
            spec = self.spec(job.model)
            model = spec.flatten(from_bytes(self._read(job.model)))
            rows = np.stack([spec.flatten(from_bytes(self._read(u.update))) for u in updates])
        except (ParamError, BlobError, ValueError) as exc:
            raise SystemUnavailable(f"job {job.id} round {job.round}: {exc}") from exc
        weights = np.asarray(capped_samples([u.samples for u in updates]), dtype=np.float64)
        seed = hashlib.sha256(
            b"cifer/fl/round-rng/v1"
            + job.id.to_bytes(8, "big")
            + job.round.to_bytes(4, "big")
            + job.model
        ).digest()
        ctx = AggContext(
            f=job.spec.byzantine,
            params=parse_params(job.spec.rule_params),
            reputation=np.asarray([u.reputation_ppm for u in updates], dtype=np.int64),
            rng=np.random.default_rng(int.from_bytes(seed[:8], "big")),
        )
        try:
            res = aggregate(onchain_rule(job.spec.rule), rows, weights, ctx, allow_plugins=False)
        except AggregationError as exc:
            log.info(
                "job %d round %d: %s; falling back to %s", job.id, job.round, exc, FALLBACK_RULE
            )
            res = aggregate(FALLBACK_RULE, rows, weights, AggContext(), allow_plugins=False)
        agg = np.asarray(res.aggregate, dtype=np.float32)
        new = (model + agg).astype(np.float32)
        if not np.isfinite(new).all():
            raise SystemUnavailable(f"job {job.id} round {job.round}: aggregate is not finite")
        blob = to_bytes(spec.unflatten(new))
        h = self.store.put(blob)
        return AggregateOutcome(
            model=h,
            accepted=[bool(a) for a in res.accepted],
            agreement_ppm=agreement_ppm(rows, agg),
        )

    def _read(self, h: bytes) -> bytes:
        data = self.store.get(h)
        if data is None:
            raise SystemUnavailable(f"blob {h.hex()} vanished from the store")
        return data


def agreement_ppm(rows: np.ndarray, agg: np.ndarray) -> list[int]:
    """Cosine of each row with the aggregate, in parts per million (0 for a zero vector)."""
    a = agg.astype(np.float64)
    na = float(np.linalg.norm(a))
    out = []
    for r in rows:
        nr = float(np.linalg.norm(r))
        if na == 0.0 or nr == 0.0:
            out.append(0)
            continue
        c = float(np.dot(r.astype(np.float64), a)) / (nr * na)
        out.append(round(max(-1.0, min(1.0, c)) * 1_000_000))
    return out


def _describe(spec: ParamSpec) -> str:
    items = [f"{t.name}{list(t.shape)}" for t in spec.tensors]
    text = ", ".join(items[:4])
    return text + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

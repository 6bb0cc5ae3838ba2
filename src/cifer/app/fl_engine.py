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

from cifer.app.contracts.fl import (
    AggregateOutcome,
    CreateJob,
    Job,
    SecAggInputs,
    UpdateRef,
    capped_samples,
)
from cifer.app.contracts.fl_privacy import CKKS, SECAGG, KeyBundle, PublishContext, key_holder
from cifer.app.module import SystemUnavailable
from cifer.base.encoding import EncodingError, decode
from cifer.compute.blobs.peers import BlobFetcher
from cifer.compute.blobs.store import BlobError, BlobStore
from cifer.compute.fl.aggregators.base import AggContext, AggregationError
from cifer.compute.fl.aggregators.registry import aggregate
from cifer.compute.fl.params import ParamError, ParamSpec, from_bytes, to_bytes
from cifer.compute.fl.private_round import quiet_accounting
from cifer.compute.privacy.ckks import (
    CkksAccumulator,
    CkksError,
    ContextInfo,
    PublicContext,
    read_upload_header,
)
from cifer.compute.privacy.dp import DpConfig, JobAccountant
from cifer.compute.privacy.secagg import (
    MaskedInput,
    MessageError,
    SecAggRound,
    SecAggServer,
    UnmaskFailed,
    check_masked_input,
)

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
        self._contexts: OrderedDict[bytes, PublicContext] = OrderedDict()

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

    def check_update(
        self,
        job: Job,
        update: bytes,
        sender: bytes,
        secagg: tuple[SecAggRound, set[int]] | None = None,
    ) -> str:
        # validity depends on the job (privacy mode, ckks context, secagg round), not only
        # on the blob: the same blob may be valid in one job and unaggregatable in another
        cache_key = (
            job.id.to_bytes(8, "big")
            + update
            + job.spec.initial_model
            + sender
            + job.round.to_bytes(4, "big")
        )
        with self._lock:
            if self._valid.get(cache_key):
                return ""
        data = self._get(update)
        if data is None:
            return (
                f"no blob {update.hex()} on this node or its peers: upload the update "
                f"(PUT /blobs/{update.hex()}) before submitting it"
            )
        if job.spec.privacy == CKKS:
            reason = _check_ckks_upload(job, data, sender)
        elif job.spec.privacy == SECAGG:
            assert secagg is not None
            reason = _check_masked_input(job, data, sender, *secagg)
        else:
            reason = self._check_plain(job, update, data)
        if reason:
            return reason
        with self._lock:
            self._valid[cache_key] = True
            while len(self._valid) > 4096:
                self._valid.popitem(last=False)
        return ""

    def _check_plain(self, job: Job, update: bytes, data: bytes) -> str:
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
        return ""

    def check_model_size(self, spec: CreateJob) -> str:
        try:
            size = self.spec(spec.initial_model).size
        except (SystemUnavailable, ParamError) as exc:
            return f"the initial model cannot be read: {exc}"
        if size != spec.model_params:
            return (
                f"model_params is {spec.model_params} but the initial model has {size} parameters"
            )
        return ""

    def check_context(self, job: Job, msg: PublishContext, enc_keys: dict[bytes, bytes]) -> str:
        """The public context loads (no secret key, the job's parameters) and the bundle seals
        the secret context exactly once to every member but the key holder."""
        info = msg.info
        missing = self._ensure([info.public_context_sha256, msg.key_shares])
        if missing:
            return (
                "blobs not available: "
                + ", ".join(h.hex() for h in missing)
                + " (upload them first)"
            )
        try:
            self._public_context(info)
        except CkksError as exc:
            return f"public context refused: {exc}"
        try:
            bundle = decode(self._read(msg.key_shares), KeyBundle)
        except (EncodingError, SystemUnavailable) as exc:
            return f"key bundle {msg.key_shares.hex()[:16]}… is not a KeyBundle: {exc}"
        holder = key_holder(list(enc_keys))
        want = sorted(k for a, k in enc_keys.items() if a != holder)
        got = sorted(s.recipient for s in bundle.shares)
        if got != want:
            return (
                f"the key bundle seals the secret key to {len(got)} keys; the job's other "
                f"{len(want)} members' enc_keys are needed, each once"
            )
        bad = [s for s in bundle.shares if s.job_id != job.id or s.context_id != info.context_id]
        if bad:
            return "key shares are for another job or context"
        return ""

    def _public_context(self, info: ContextInfo) -> PublicContext:
        with self._lock:
            hit = self._contexts.get(info.context_id)
        if hit is not None:
            return hit
        data = self._get(info.public_context_sha256)
        if data is None:
            raise SystemUnavailable(
                f"public context blob {info.public_context_sha256.hex()} is not available"
            )
        pub = PublicContext(info, data)
        with self._lock:
            self._contexts[info.context_id] = pub
            while len(self._contexts) > 4:
                self._contexts.popitem(last=False)
        return pub

    def epsilon_micro(self, dp: DpConfig, survivors: list[int]) -> int:
        with quiet_accounting():
            acc = JobAccountant(dp)
            total = 0
            for r, k in enumerate(survivors):
                if k > 0:
                    total = acc.record_round(r, survivors=k).epsilon_total_micro
        return total

    def aggregate(self, job: Job, updates: list[UpdateRef]) -> AggregateOutcome:
        if job.spec.privacy == CKKS:
            return self._aggregate_ckks(job, updates)
        self._require(job, [job.model, *[u.update for u in updates]])
        try:
            spec = self.spec(job.model)
            model = spec.flatten(from_bytes(self._read(job.model)))
            rows = np.stack([spec.flatten(from_bytes(self._read(u.update))) for u in updates])
        except (ParamError, BlobError, ValueError) as exc:
            raise SystemUnavailable(f"job {job.id} round {job.round}: {exc}") from exc
        weights = np.asarray(_weights(job, updates), dtype=np.float64)
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

    def _aggregate_ckks(self, job: Job, updates: list[UpdateRef]) -> AggregateOutcome:
        """Add the ciphertexts, weighted by capped sample counts; an upload the accumulator
        refuses (tampered after admission checks, which only read its header) is left out
        and its sender rejected, deterministically on every validator."""
        info = job.ckks_context
        if info is None:
            raise SystemUnavailable(f"job {job.id} has no ckks context")
        self._require(job, [u.update for u in updates])
        acc = CkksAccumulator(
            self._public_context(info),
            job_id=job.id,
            round_=job.round,
            n_params=job.spec.model_params,
            key_checks=False,
        )
        weights = _weights(job, updates)
        accepted = []
        for u, w in zip(updates, weights, strict=True):
            try:
                acc.add(u.client, self._read(u.update), weight=w, expected_sha256=u.update)
                accepted.append(True)
            except CkksError as exc:
                log.warning("job %d round %d: %s", job.id, job.round, exc)
                accepted.append(False)
        if not any(accepted):
            return AggregateOutcome(
                job.model,
                accepted,
                [0] * len(updates),
                [u.client for u in updates],
                "no upload could be added",
            )
        h = self.store.put(acc.result())
        return AggregateOutcome(
            h,
            accepted,
            [0] * len(updates),
            [u.client for u, ok in zip(updates, accepted, strict=True) if not ok],
        )

    def aggregate_secagg(self, job: Job, inputs: SecAggInputs) -> AggregateOutcome:
        """Unmask the exact sum of the survivors' levels and add their mean to the model.
        Messages were admitted on chain; one that still fails here is left out (masked
        inputs) and the unmasking fails cleanly, keeping the model, if too few remain."""
        rnd = inputs.round
        self._require(job, [job.model, *[u.update for u in inputs.masked]])
        n = len(inputs.masked)
        server = SecAggServer(rnd)
        blamed: list[bytes] = []
        try:
            for a in inputs.adverts:
                server.add_advertise(a)
            for s in inputs.shares:
                server.add_share_keys(s)
        except MessageError as exc:  # admitted on chain with the same checks
            raise SystemUnavailable(f"job {job.id} round {job.round}: {exc}") from exc
        for u in inputs.masked:
            try:
                server.add_masked_input(decode(self._read(u.update), MaskedInput))
            except (MessageError, EncodingError) as exc:
                log.warning("job %d round %d: masked input left out: %s", job.id, job.round, exc)
                blamed.append(u.client)
        for r in inputs.reveals:
            try:
                server.add_unmask(r)
            except MessageError as exc:
                blamed.append(bytes(r.sender))
                log.warning("job %d round %d: reveal left out: %s", job.id, job.round, exc)
        try:
            res = server.finish()
        except UnmaskFailed as exc:
            blamed += [bytes(v.client) for v in exc.verdicts]
            return AggregateOutcome(
                job.model, [False] * n, [0] * n, sorted(set(blamed)), f"unmasking failed: {exc}"
            )
        blamed += [bytes(v.client) for v in res.verdicts]
        spec = self.spec(job.model)
        model = spec.flatten(from_bytes(self._read(job.model)))
        mean = res.mean(rnd.quantizer())
        new = (model.astype(np.float64) + mean).astype(np.float32)
        if not np.isfinite(new).all():
            raise SystemUnavailable(f"job {job.id} round {job.round}: aggregate is not finite")
        h = self.store.put(to_bytes(spec.unflatten(new)))
        survivors = set(res.survivors)
        return AggregateOutcome(
            h,
            [u.client in survivors and u.client not in blamed for u in inputs.masked],
            [0] * n,
            sorted(set(blamed)),
        )

    def _require(self, job: Job, hashes: list[bytes]) -> None:
        """Fetch a round's blobs; SystemUnavailable (vote nil) if any cannot be had."""
        missing = self._ensure(hashes)
        if missing:
            raise SystemUnavailable(
                f"job {job.id} round {job.round}: blobs not available: "
                + ", ".join(h.hex()[:16] for h in missing[:5])
            )

    def _read(self, h: bytes) -> bytes:
        data = self.store.get(h)
        if data is None:
            raise SystemUnavailable(f"blob {h.hex()} vanished from the store")
        return data


def _weights(job: Job, updates: list[UpdateRef]) -> list[int]:
    """Capped sample counts; equal weights under dp, whose accountant assumes that one
    client moves the sum by at most its clip norm."""
    if job.spec.dp is not None:
        return [1] * len(updates)
    return capped_samples([u.samples for u in updates])


def _check_ckks_upload(job: Job, data: bytes, sender: bytes) -> str:
    info = job.ckks_context
    if info is None:
        return f"job {job.id} has no ckks context yet"
    try:
        header = read_upload_header(data)
    except CkksError as exc:
        return f"job {job.id} is ckks and takes only encrypted updates: {exc}"
    want = (info.context_id, job.id, job.round, sender, job.spec.model_params)
    got = (header.context_id, header.job_id, header.round, header.sender, header.n_params)
    names = ("context", "job", "round", "sender", "parameter count")
    for name, g, w in zip(names, got, want, strict=True):
        if g != w:
            shown = (lambda v: v.hex()[:16] + "…") if isinstance(g, bytes) else str
            return f"ckks upload: {name} is {shown(g)}, job {job.id} expects {shown(w)}" + (
                " (encrypted under another key)" if name == "context" else ""
            )
    return ""


def _check_masked_input(
    job: Job, data: bytes, sender: bytes, rnd: SecAggRound, dealt: set[int]
) -> str:
    try:
        msg = decode(data, MaskedInput)
    except EncodingError:
        try:
            from_bytes(data)
        except ParamError:
            return f"job {job.id} is secagg: the update blob is not a MaskedInput"
        return (
            f"job {job.id} is secagg: the update blob is a plaintext model; only masked "
            "input is taken"
        )
    if bytes(msg.sender) != sender:
        return "masked input names another sender than the one who signed it"
    try:
        check_masked_input(rnd, dealt, msg)
    except MessageError as exc:
        return f"masked input refused: {exc}"
    return ""


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

"""One FL round's aggregate under a privacy mode: ``plain``, ``secagg`` (secure aggregation by
masking) or ``ckks`` (homomorphic encryption), each optionally with client-level differential
privacy (DP-FedAvg: per-client clipping, Gaussian noise added centrally or distributed among
the clients, an RDP accountant).

:class:`PrivateAggregator` runs the real protocols with every party in this process, so a
simulation's accuracy reflects what the protocols do to the numbers: under ``secagg`` every
participant is a :class:`~cifer.compute.privacy.secagg.SecAggClient` (X25519 keys, Shamir
shares, ChaCha20 masks) and the validators' :class:`~cifer.compute.privacy.secagg.SecAggServer`
admits the four phases' messages (each one encoded and decoded as on the wire) and unmasks the
exact integer sum of fixed-point updates; under ``ckks`` each participant encrypts its update
under the job's key, a validator's :class:`~cifer.compute.privacy.ckks.CkksAccumulator` adds
the ciphertexts with the public context only, and a key holder decrypts the aggregate.

One round, for ``k`` participants with updates ``x_i`` and public integer weights ``w_i``:

1. **Clip** (client side): with a clip norm ``C`` (the DP clip norm, or ``clip_norm`` without
   DP) every ``x_i`` is scaled to L2 norm at most ``C`` (:func:`~cifer.compute.privacy.dp.
   clip_updates`, exact in float32). This is the "norm-clipped averaging" that replaces robust
   rules under ``secagg`` and ``ckks``, where no one sees an individual update.
2. **Distributed noise** (DP, ``distributed``): each client adds ``N(0, (zC)^2 / m)`` to its
   clipped update, ``m = min_clients``, so the sum carries the full noise and nobody sees an
   un-noised sum.
3. **Sum** ``S = sum_i w_i x_i`` by the mode's protocol: float64 (``plain``), exact integers of
   the quantized updates times their weights (``secagg``: fixed point with ``value_bits`` over
   ``[-R, R]``, stochastic rounding seeded per client, so the rounding is unbiased), or
   ciphertexts times integer weights by double-and-add (``ckks``).
4. **Central noise** (DP, ``central``): ``N(0, (zC)^2)`` is added to ``S`` by whoever holds it
   in the clear: the validators after unmasking (``secagg``), the decrypting key holder
   (``ckks``), the server (``plain``). That party sees ``S`` before the noise, so under
   ``secagg`` and ``ckks`` ``distributed`` is the mode that keeps the guarantee against it.
5. **Average**: ``S / sum_i w_i`` without DP. With DP, weights must be 1 and the denominator
   is the fixed expected number of participants ``q N`` (McMahan et al., ICLR 2018, the
   fixed-denominator estimator), so one client moves the output by at most ``C / (q N)``.
6. **Account** (DP): the round is one Poisson-subsampled Gaussian event at rate ``q``
   (:class:`~cifer.compute.privacy.dp.JobAccountant`); in ``distributed`` mode with fewer than
   ``m`` participants the event uses the smaller effective multiplier. The result carries the
   round's and the job's epsilon at the job's delta.

``protocol_error`` in the result is ``max_j |S_protocol - S_float64|_j / sum_i w_i``: what
quantization (secagg) or CKKS noise changed in the mean, before any DP noise.

Decisions
---------
* **Rules.** Under ``secagg``, ``ckks`` or DP only averaging is possible (:data:`AVERAGING_RULES`:
  ``fedavg`` and ``reputation``): robust rules need every update in plaintext, and DP's
  sensitivity bound holds for a clipped sum. :func:`check_rule` refuses the rest.
* **Secagg range.** The quantizer maps ``[-R, R]`` to integer levels. ``R`` is the clip norm
  (no coordinate of a clipped update exceeds its L2 norm), plus :data:`NOISE_MARGIN_SIGMAS`
  standard deviations of a client's noise in ``distributed`` mode; without a clip norm the job
  must state ``value_range`` (values beyond it would be clipped per coordinate). Integer
  weights multiply the levels before masking, so the parameters' value bits grow by the bits of
  the largest weight; the modulus is 2^32 when the sum of all weighted levels fits, else 2^64.
* **Secagg graph.** Up to :data:`COMPLETE_GRAPH_MAX` participants the neighbour graph is
  complete (classic SecAgg); above, SecAgg+'s logarithmic degree. Threshold: a majority of
  each client's neighbours. Everyone survives in a simulation (dropouts are tested in
  ``tests/compute/privacy/test_secagg.py``).
* **CKKS keys.** One key pair per job (generated once, at construction); the accumulator runs
  on the public context as a validator's would. Key checks (attribution of wrong-key uploads)
  are off: every simulated client uses the job's key. CKKS encryption draws fresh randomness
  from SEAL, so a ``ckks`` run repeats only up to CKKS noise (~1e-9 on each coordinate).
* **Too few participants.** Secure aggregation needs at least 3 clients; with fewer (or none,
  under Poisson sampling) the round is skipped: no aggregate, and the model stays. Under DP the
  accountant still records the round (conservative), but whether a round happens depends on
  whether a client was sampled, which the subsampled-Gaussian analysis does not cover: keep
  ``q N`` large enough that a round below the minimum is improbable (with ``q N = 30`` and
  Poisson sampling, P(k < 3) ~ 4e-11).
* **Randomness.** Noise, stochastic rounding and the secagg clients' key material come from
  generators seeded from ``(seed, round, client)``, for reproducible simulations; in deployment
  they come from the OS (:func:`~cifer.compute.privacy.dp.secure_rng`, ``os.urandom``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.params import DTYPE, F32Array

if TYPE_CHECKING:
    from cifer.compute.privacy.ckks import CkksKeys, CkksParams, PublicContext
    from cifer.compute.privacy.dp import DpConfig, DpRoundReport, JobAccountant

PrivacyMode = Literal["plain", "secagg", "ckks"]
PRIVACY_MODES: tuple[PrivacyMode, ...] = ("plain", "secagg", "ckks")
#: The rules possible on masked or encrypted updates, and under DP.
AVERAGING_RULES = ("fedavg", "reputation")
#: Fewest participants each mode aggregates (secure aggregation needs three).
MIN_PARTICIPANTS: Mapping[str, int] = {"plain": 1, "secagg": 3, "ckks": 1}
#: Default fixed-point bits of a secagg value (levels in [-(2^19 - 1), 2^19 - 1]).
DEFAULT_VALUE_BITS = 20
#: Participants up to which the secagg neighbour graph is complete.
COMPLETE_GRAPH_MAX = 32
#: The secagg range covers a client's distributed noise up to this many standard deviations.
NOISE_MARGIN_SIGMAS = 8.0
#: Keys of ``privacy_params`` per mode (see :func:`privacy_options`).
SECAGG_KEYS = ("value_bits", "modulus_bits", "degree", "threshold", "value_range", "rounding")
CKKS_KEYS = ("poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits")

# Tags that separate the random streams derived from the seed.
_TAG_DP_CLIENT, _TAG_DP_CENTRAL, _TAG_ROUNDING, _TAG_SECAGG = 101, 102, 103, 104


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Raise logger ``name`` to ERROR for the duration (libraries that warn per call)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def quiet_accounting() -> contextlib.AbstractContextManager[None]:
    """Silence dp_accounting's absl warnings (orders of the RDP bound that fail to converge
    and are excluded, which it logs at every epsilon query) for the duration."""
    return quiet_logger("absl")


class PrivacyError(ValueError):
    """Bad privacy settings, a rule that cannot run under the mode, or a failed protocol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggOptions:
    """How a simulated job runs secure aggregation (see the module docstring)."""

    value_bits: int = DEFAULT_VALUE_BITS
    modulus_bits: int | None = None  # None: 32 when the weighted sum fits, else 64
    degree: int | None = None  # None: complete up to COMPLETE_GRAPH_MAX, else logarithmic
    threshold: int | None = None  # None: degree // 2 + 1
    value_range: float | None = None  # None: the clip norm (+ distributed-noise margin)
    rounding: Literal["stochastic", "nearest"] = "stochastic"

    def validate(self) -> None:
        from cifer.compute.privacy.prg import MAX_BITS, MIN_BITS
        from cifer.compute.privacy.quantize import MAX_VALUE_BITS

        if not _is_int(self.value_bits) or not 2 <= self.value_bits <= MAX_VALUE_BITS:
            raise PrivacyError(
                f"secagg value_bits must be 2..{MAX_VALUE_BITS}, got {self.value_bits!r}"
            )
        m = self.modulus_bits
        if m is not None and (not _is_int(m) or not MIN_BITS <= m <= MAX_BITS):
            raise PrivacyError(f"secagg modulus_bits must be {MIN_BITS}..{MAX_BITS}, got {m!r}")
        for name, value, low in (("degree", self.degree, 1), ("threshold", self.threshold, 2)):
            if value is not None and (not _is_int(value) or value < low):
                raise PrivacyError(f"secagg {name} must be an integer >= {low}, got {value!r}")
        r = self.value_range
        if r is not None and not _positive(r):
            raise PrivacyError(f"secagg value_range must be a positive finite number, got {r!r}")
        if self.rounding not in ("stochastic", "nearest"):
            raise PrivacyError(
                f"secagg rounding must be stochastic or nearest, got {self.rounding!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """A job's privacy: the mode, the clip norm, DP (None for none) and protocol options.

    With DP the clip norm is the DP config's; ``clip_norm`` is for clipping without DP (and
    must agree with the DP config's when both are given)."""

    mode: PrivacyMode = "plain"
    clip_norm: float | None = None
    dp: DpConfig | None = None
    secagg: SecAggOptions = field(default_factory=SecAggOptions)
    ckks: CkksParams | None = None  # None: the default CkksParams()

    @property
    def clip(self) -> float | None:
        """The L2 norm every update is clipped to (None: no clipping)."""
        return self.dp.clip_norm if self.dp is not None else self.clip_norm

    def validate(self) -> None:
        """Raise :class:`PrivacyError` naming the first bad setting."""
        if self.mode not in PRIVACY_MODES:
            raise PrivacyError(
                f"privacy mode must be one of {', '.join(PRIVACY_MODES)}, got {self.mode!r}"
            )
        if self.clip_norm is not None and not _positive(self.clip_norm):
            raise PrivacyError(
                f"clip norm must be a positive finite number, got {self.clip_norm!r}"
            )
        if self.dp is not None:
            from cifer.compute.privacy.dp import DpError

            try:
                self.dp.validate()
            except DpError as exc:
                raise PrivacyError(f"dp: {exc}") from exc
            if self.clip_norm is not None and not math.isclose(
                self.clip_norm, self.dp.clip_norm, rel_tol=1e-6
            ):
                raise PrivacyError(
                    f"clip norm {self.clip_norm} differs from the DP clip norm {self.dp.clip_norm}"
                )
        self.secagg.validate()
        if self.mode == "secagg" and self.clip is None and self.secagg.value_range is None:
            raise PrivacyError(
                "secagg needs a bound on update values: set a clip norm (norm-clipped averaging "
                "is the rule under secure aggregation) or the secagg value_range"
            )
        if self.ckks is not None:
            from cifer.compute.privacy.ckks import CkksError

            try:
                self.ckks.validate()
            except CkksError as exc:
                raise PrivacyError(f"ckks: {exc}") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_rule(mode: str, rule: str, *, dp: bool) -> None:
    """Refuse a rule that cannot run under ``mode`` (or under DP), saying why."""
    if rule in AVERAGING_RULES or (mode == "plain" and not dp):
        return
    allowed = " or ".join(AVERAGING_RULES)
    if mode != "plain":
        raise PrivacyError(
            f"aggregator {rule!r} needs plaintext updates, which {mode} hides: under secagg and "
            f"ckks the rule is norm-clipped (reputation-)weighted averaging ({allowed}, with a "
            "clip norm)"
        )
    raise PrivacyError(
        f"aggregator {rule!r} cannot run under differential privacy: DP-FedAvg's sensitivity "
        f"bound holds for a clipped average ({allowed})"
    )


def privacy_options(
    mode: str, params: Mapping[str, object]
) -> tuple[SecAggOptions, CkksParams | None]:
    """Parse ``privacy_params`` (``key=value`` from the CLI) for ``mode``. secagg keys:
    value_bits, modulus_bits, degree, threshold, value_range, rounding (stochastic|nearest);
    ckks keys: poly_modulus_degree, coeff_mod_bit_sizes (e.g. ``"60,40,60"``), scale_bits."""
    known = {"secagg": SECAGG_KEYS, "ckks": CKKS_KEYS}.get(mode, ())
    unknown = sorted(set(params) - set(known))
    if unknown:
        where = f"keys are {', '.join(known)}" if known else "it takes none"
        raise PrivacyError(
            f"privacy mode {mode!r} has no parameter(s) {', '.join(unknown)} ({where})"
        )
    secagg = SecAggOptions()
    ckks = None
    if mode == "secagg":
        kw: dict[str, Any] = dict(params)
        if (
            "value_range" in kw
            and isinstance(kw["value_range"], int)
            and not isinstance(kw["value_range"], bool)
        ):
            kw["value_range"] = float(kw["value_range"])
        try:
            secagg = SecAggOptions(**kw)
        except TypeError as exc:
            raise PrivacyError(f"secagg parameters: {exc}") from exc
    elif mode == "ckks" and params:
        from cifer.compute.privacy.ckks import CkksParams

        kw = dict(params)
        bits = kw.get("coeff_mod_bit_sizes")
        if bits is not None:
            try:
                kw["coeff_mod_bit_sizes"] = tuple(int(b) for b in str(bits).split(","))
            except ValueError:
                raise PrivacyError(
                    f"ckks coeff_mod_bit_sizes must be comma-separated integers, got {bits!r}"
                ) from None
        for key in ("poly_modulus_degree", "scale_bits"):
            if key in kw and not _is_int(kw[key]):
                raise PrivacyError(f"ckks {key} must be an integer, got {kw[key]!r}")
        ckks = CkksParams(**kw)
    return secagg, ckks


def dp_config(
    *,
    mode: str,
    clip_norm: float,
    sampling_rate: float,
    delta: float,
    rounds: int,
    min_clients: int,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
) -> DpConfig:
    """The job's :class:`~cifer.compute.privacy.dp.DpConfig`: give either the noise multiplier
    ``z`` or a target ``epsilon`` after ``rounds`` rounds at ``delta``, for which the smallest
    ``z`` is calibrated with the RDP accountant (rounded up to a millionth, so the planned
    epsilon never exceeds the target)."""
    from cifer.compute.privacy.dp import DpConfig, DpError, calibrate_noise_multiplier

    if (epsilon is None) == (noise_multiplier is None):
        raise PrivacyError("give exactly one of a DP target epsilon and a noise multiplier")
    if not _positive(clip_norm):
        raise PrivacyError(f"DP needs a positive finite clip norm, got {clip_norm!r}")
    try:
        if epsilon is not None:
            with quiet_accounting():
                z = calibrate_noise_multiplier(
                    target_epsilon=epsilon, sampling_rate=sampling_rate, steps=rounds, delta=delta
                )
        else:
            assert noise_multiplier is not None
            z = noise_multiplier
        return DpConfig.of(
            mode=mode,
            noise_multiplier=z,
            clip_norm=clip_norm,
            sampling_rate=sampling_rate,
            delta=delta,
            min_clients=min_clients,
            rounds=rounds,
        )
    except DpError as exc:
        raise PrivacyError(f"dp: {exc}") from exc
    except (ValueError, RuntimeError) as exc:  # dp_accounting's calibration
        raise PrivacyError(
            f"dp: cannot calibrate a noise multiplier for epsilon {epsilon}: {exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class PrivateRoundResult:
    """One round's outcome. ``aggregate`` is None when the round was skipped (too few
    participants for the mode); DP fields are None without DP."""

    aggregate: F32Array | None
    participants: int
    clipped: int
    protocol_error: float | None
    report: DpRoundReport | None = None
    epsilon: float | None = None
    epsilon_round: float | None = None
    noise_multiplier: float | None = None

    @property
    def skipped(self) -> bool:
        return self.aggregate is None


class PrivateAggregator:
    """A job's aggregation under one :class:`PrivacyConfig`, round after round.

    ``length`` is the flat update length, ``population`` the job's number of clients ``N``
    (DP's denominator is ``q N``), ``seed`` seeds every random draw of the simulation.
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        length: int,
        population: int,
        seed: int,
        job_id: int = 0,
    ) -> None:
        config.validate()
        if length < 1 or population < 1:
            raise PrivacyError(f"length and population must be >= 1, got {length}, {population}")
        self.config = config
        self.length = length
        self.population = population
        self.seed = seed
        self.job_id = job_id
        self.accountant: JobAccountant | None = None
        if config.dp is not None:
            from cifer.compute.privacy.dp import JobAccountant

            self.accountant = JobAccountant(config.dp)
        self.value_range = self._value_range()
        self._keys: CkksKeys | None = None
        self._public: PublicContext | None = None
        if config.mode == "ckks":
            from cifer.compute.privacy.ckks import CkksKeys

            self._keys = CkksKeys.generate(config.ckks)
            self._public = self._keys.public()
        self.last_secagg: Any = None  # SecAggParams of the latest secagg round

    def _value_range(self) -> float | None:
        cfg = self.config
        if cfg.secagg.value_range is not None:
            return cfg.secagg.value_range
        clip = cfg.clip
        if clip is None:
            return None
        if cfg.dp is not None and cfg.dp.mode == "distributed":
            from cifer.compute.privacy.dp import noise_std

            return clip + NOISE_MARGIN_SIGMAS * noise_std(cfg.dp)
        return clip

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (for a results file)."""
        cfg = self.config
        out: dict[str, Any] = {"mode": cfg.mode, "clip_norm": cfg.clip}
        if cfg.mode == "secagg":
            out["secagg"] = {
                "value_bits": cfg.secagg.value_bits,
                "modulus_bits": cfg.secagg.modulus_bits,
                "degree": cfg.secagg.degree,
                "threshold": cfg.secagg.threshold,
                "value_range": self.value_range,
                "rounding": cfg.secagg.rounding,
            }
        if self._keys is not None:
            p = self._keys.params
            out["ckks"] = {
                "poly_modulus_degree": p.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
                "scale_bits": p.scale_bits,
            }
        if cfg.dp is not None:
            dp = cfg.dp
            out["dp"] = {
                "noise": dp.mode,
                "noise_multiplier": dp.noise_multiplier,
                "clip_norm": dp.clip_norm,
                "sampling_rate": dp.sampling_rate,
                "delta": dp.delta,
                "min_clients": dp.min_clients,
                "rounds": dp.rounds,
                "planned_epsilon": _planned_epsilon(dp),
            }
        return out

    # ------------------------------------------------------------------------ the round

    def aggregate(
        self,
        updates: npt.ArrayLike,
        weights: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None,
        *,
        round_: int,
        clients: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None,
    ) -> PrivateRoundResult:
        """Aggregate round ``round_``'s updates ``[k, d]`` of clients ``clients`` (job-wide
        indices, default ``0..k-1``) with public integer ``weights`` (default 1)."""
        cfg, dp = self.config, self.config.dp
        u = np.asarray(updates)
        if u.ndim != 2 or u.shape[1] != self.length or u.dtype.kind != "f":
            raise PrivacyError(
                f"updates must be a float [k, {self.length}] array, got {u.dtype} {u.shape}"
            )
        k = u.shape[0]
        ids = np.arange(k, dtype=np.int64) if clients is None else np.asarray(clients, np.int64)
        if ids.shape != (k,) or len(set(ids.tolist())) != k or (k and int(ids.min()) < 0):
            raise PrivacyError(f"clients must be {k} distinct indices >= 0")
        w = np.ones(k, dtype=np.int64) if weights is None else _int_weights(weights, k)
        if dp is not None and bool((w != 1).any()):
            raise PrivacyError(
                "DP-FedAvg weights clients uniformly (the sum's sensitivity is the clip norm): "
                "use uniform weights"
            )
        if k < MIN_PARTICIPANTS[cfg.mode]:
            return self._account(round_, k, None, 0, None)
        x = np.array(u, dtype=DTYPE)  # a private copy
        if not np.isfinite(x).all():
            raise PrivacyError(f"round {round_}: updates contain NaN or inf")
        clipped = 0
        clip = cfg.clip
        if clip is not None:
            from cifer.compute.privacy.dp import clip_updates

            x, norms = clip_updates(x, clip)
            clipped = int((norms > clip).sum())
        if dp is not None and dp.mode == "distributed":
            from cifer.compute.privacy.dp import gaussian_noise, noise_std

            std = noise_std(dp)
            for row, cid in enumerate(ids.tolist()):
                x[row] += gaussian_noise(self.length, std, self._rng(_TAG_DP_CLIENT, round_, cid))
        reference = w.astype(np.float64) @ x.astype(np.float64)
        total_weight = int(w.sum())
        if cfg.mode == "plain":
            total = reference
        elif cfg.mode == "secagg":
            total = self._secagg_sum(x, w, ids, round_)
        else:
            total = self._ckks_sum(x, w, ids, round_)
        error = float(np.max(np.abs(total - reference))) / total_weight
        if dp is None:
            return PrivateRoundResult((total / total_weight).astype(DTYPE), k, clipped, error)
        if dp.mode == "central":
            from cifer.compute.privacy.dp import gaussian_noise, noise_std

            total = total + gaussian_noise(
                self.length, noise_std(dp), self._rng(_TAG_DP_CENTRAL, round_)
            )
        agg = (total / (dp.sampling_rate * self.population)).astype(DTYPE)
        return self._account(round_, k, agg, clipped, error)

    def _account(
        self, round_: int, k: int, agg: F32Array | None, clipped: int, error: float | None
    ) -> PrivateRoundResult:
        acc, dp = self.accountant, self.config.dp
        if acc is None or dp is None:
            return PrivateRoundResult(agg, k, clipped, error)
        survivors = max(k, 1) if dp.mode == "distributed" else None
        with quiet_accounting():
            report = acc.record_round(round_, survivors=survivors)
        return PrivateRoundResult(
            agg,
            k,
            clipped,
            error,
            report,
            report.epsilon_total_micro / 1e6,
            report.epsilon_round_micro / 1e6,
            report.noise_multiplier_ppm / 1e6,
        )

    def _rng(self, *path: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *path])

    # ------------------------------------------------------------------------ secagg

    def _secagg_sum(
        self, x: F32Array, w: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], round_: int
    ) -> npt.NDArray[np.float64]:
        """Run all four phases with every participant in process; return the float sum of
        the weighted fixed-point updates."""
        from cifer.base.encoding import decode, encode
        from cifer.compute.privacy.quantize import QuantizationError, Quantizer
        from cifer.compute.privacy.secagg import (
            AdvertiseKeys,
            MaskedInput,
            SecAggClient,
            SecAggError,
            SecAggParams,
            SecAggRound,
            SecAggServer,
            ShareKeys,
            UnmaskShares,
            harary_degree,
        )

        opts = self.config.secagg
        k, d = x.shape
        assert self.value_range is not None  # validate()
        quant = Quantizer(self.value_range, opts.value_bits)
        wmax = int(w.max())
        bits = opts.value_bits
        while (1 << (bits - 1)) - 1 < wmax * quant.max_level:
            bits += 1
        level = (1 << (bits - 1)) - 1
        modulus = opts.modulus_bits or (32 if k * level < 1 << 31 else 64)
        degree = opts.degree or (k - 1 if k <= COMPLETE_GRAPH_MAX else harary_degree(k))
        degree = min(degree, k - 1)
        threshold = min(opts.threshold or degree // 2 + 1, degree)
        params = SecAggParams(
            threshold=max(threshold, 2),
            degree=degree,
            modulus_bits=modulus,
            value_bits=bits,
            clip_micros=max(1, round(self.value_range * 1_000_000)),
        )
        order = np.argsort(ids, kind="stable")
        roster = [_client_id(int(ids[i])) for i in order]
        round_seed = hashlib.sha256(
            b"cifer/sim/secagg-round" + self.seed.to_bytes(8, "big") + round_.to_bytes(8, "big")
        ).digest()
        try:
            rnd = SecAggRound(
                params, job_id=self.job_id, round=round_, seed=round_seed, roster=roster, length=d
            )
            self.last_secagg = params
            gen = random.Random(int.from_bytes(round_seed, "big") ^ _TAG_SECAGG)
            clients = [SecAggClient(rnd, c, randbytes=gen.randbytes) for c in roster]
            server = SecAggServer(rnd)
            adverts = [_wire(c.advertise(), AdvertiseKeys, encode, decode) for c in clients]
            for a in adverts:
                server.add_advertise(a)
            shares = [_wire(c.share_keys(adverts), ShareKeys, encode, decode) for c in clients]
            for s in shares:
                server.add_share_keys(s)
            for c in clients:
                if c.receive_shares(shares):
                    raise PrivacyError(
                        f"round {round_}: secagg share complaints from honest clients"
                    )
            stochastic = opts.rounding == "stochastic"
            for c, row in zip(clients, order.tolist(), strict=True):
                rng = self._rng(_TAG_ROUNDING, round_, int(ids[row])) if stochastic else None
                levels = quant.quantize(x[row], rng=rng) * w[row]
                server.add_masked_input(_wire(c.masked_input(levels), MaskedInput, encode, decode))
            for c in clients:
                server.add_unmask(_wire(c.unmask(roster), UnmaskShares, encode, decode))
            result = server.finish()
        except (SecAggError, QuantizationError) as exc:
            raise PrivacyError(f"round {round_}: secure aggregation failed: {exc}") from exc
        if result.verdicts or len(result.survivors) != k:
            raise PrivacyError(f"round {round_}: secure aggregation lost clients or blamed some")
        return quant.dequantize(result.levels)

    # ------------------------------------------------------------------------ ckks

    def _ckks_sum(
        self, x: F32Array, w: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], round_: int
    ) -> npt.NDArray[np.float64]:
        """Encrypt each update, add the ciphertexts as a validator does, decrypt; return the
        weighted sum."""
        from cifer.compute.privacy.ckks import (
            CkksAccumulator,
            CkksError,
            decrypt_aggregate,
            encrypt_update,
        )

        keys, public = self._keys, self._public
        assert keys is not None and public is not None
        d = x.shape[1]
        try:
            acc = CkksAccumulator(
                public, job_id=self.job_id, round_=round_, n_params=d, key_checks=False
            )
            for row, cid in enumerate(ids.tolist()):
                sender = _client_id(cid)
                blob = encrypt_update(
                    keys, x[row], job_id=self.job_id, round_=round_, sender=sender
                )
                acc.add(sender, blob, weight=int(w[row]))
            res = decrypt_aggregate(
                keys, acc.result(), job_id=self.job_id, round_=round_, n_params=d
            )
        except CkksError as exc:
            raise PrivacyError(f"round {round_}: ckks aggregation failed: {exc}") from exc
        return res.mean.astype(np.float64) * res.total_weight


def _planned_epsilon(dp: DpConfig) -> float:
    with quiet_accounting():
        return dp.planned_epsilon()


def _client_id(index: int) -> bytes:
    """Fixed-width ids, so byte order is index order (the roster is sorted)."""
    return b"client-%08d" % index


def _wire(msg: Any, typ: type[Any], encode: Any, decode: Any) -> Any:
    """A message as the receiving party gets it: canonical bytes, decoded and checked."""
    return decode(encode(msg), typ)


def _int_weights(weights: Any, k: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(weights)
    if arr.shape != (k,):
        raise PrivacyError(f"weights must have shape ({k},), got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or bool((arr != np.round(arr)).any()):
            raise PrivacyError("weights must be whole numbers (public integers, as on chain)")
    elif arr.dtype.kind not in "iu":
        raise PrivacyError(f"weights must be integers, got {arr.dtype}")
    out = arr.astype(np.int64)
    if bool((out < 1).any()):
        raise PrivacyError("weights must be >= 1")
    return out

"""Client-level differential privacy for FedAvg (DP-FedAvg, McMahan et al., ICLR 2018).

A neighbouring dataset adds or removes one *client*. Each client's update is clipped to L2
norm ``C``, so one client moves the sum of updates by at most ``C``; Gaussian noise of std
``z * C`` on that sum (``z`` the noise multiplier) makes each round a Gaussian mechanism,
subsampled when only a fraction ``q`` of clients takes part. Privacy loss is tracked with
Google's dp-accounting RDP accountant and reported as (epsilon, delta).

Decisions
---------
* **Where the noise goes.** ``central``: whoever holds the plaintext sum (validators in a
  plaintext job) adds ``N(0, (zC)^2)`` to it. ``distributed``: each client adds
  ``N(0, (zC)^2 / m)`` to its clipped update, ``m = min_clients``, so the sum of any ``m``
  updates carries the full noise and nobody ever sees an un-noised sum; this is the mode that
  composes with secure aggregation and CKKS, where no one can add noise to the plaintext
  sum. Its weakness: with fewer than ``m`` survivors the sum carries less noise (effective
  multiplier ``z * sqrt(survivors / m)``), which :meth:`JobAccountant.record_round` accounts
  honestly; with more, the sum is noisier than needed (utility, not privacy, suffers). A
  colluding coalition that knows its own noise also subtracts it, so ``m`` should count only
  clients assumed honest.
* **Clipping is exact.** Rows above ``C`` are scaled by ``(C / norm) * (1 - 4 * eps_f32)``,
  which provably keeps the float32 result's norm at most ``C`` despite rounding (the
  sensitivity bound is what the accountant relies on); rows within ``C`` are untouched.
* **Randomness.** Every function takes a ``numpy.random.Generator``: seeded ones make tests
  and simulations reproducible; in deployment use :func:`secure_rng`, seeded from the OS.
  Noise from a known seed can be subtracted, and floating-point Gaussian sampling is not a
  formally private discrete Gaussian (Canonne, Kamath, Steinke 2020): both are noted
  limitations, as is rounding of noisy updates by secure aggregation's fixed-point encoding.
* **On chain.** State is integers only. The job records :class:`DpConfig` (``z`` and ``C``
  in millionths, ``q`` in parts per million, ``delta`` in parts per 10^12, the mode,
  ``min_clients`` and the planned rounds); every node derives the accountant's floats from
  those integers, so they agree on the inputs. Each round appends a :class:`DpRoundReport`
  with epsilon rounded *up* to whole micro-epsilon (never under-reported). The RDP
  computation uses floating-point special functions, so two platforms may disagree in the
  last micro-epsilon at a rounding boundary: a validator that recomputes a report should
  accept it within 1 micro-epsilon.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.base.encoding import Canonical

DP_MODES = ("central", "distributed")
PPM = 1_000_000
DELTA_UNITS = 10**12
F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
#: Shrink factor that keeps a clipped float32 row's norm at most C despite rounding.
_CLIP_SAFETY = 1.0 - 4.0 * float(np.finfo(np.float32).eps)


def _lib() -> Any:
    """dp-accounting, imported on first use: it takes about a second, and the chain's
    contracts import this module for :class:`DpConfig` alone."""
    import dp_accounting
    from dp_accounting import rdp  # noqa: F401  (loads the submodule)

    return dp_accounting


class DpError(ValueError):
    """Invalid DP parameters or inputs."""


def to_ppm(x: float) -> int:
    """``x`` in millionths, rounded to nearest (the on-chain form of z, C and q)."""
    if not math.isfinite(x) or x < 0:
        raise DpError(f"expected a finite value >= 0, got {x}")
    return round(x * PPM)


def to_micro_epsilon(epsilon: float) -> int:
    """Epsilon in whole millionths, rounded up so the chain never under-reports."""
    if math.isnan(epsilon) or epsilon < 0:
        raise DpError(f"epsilon must be >= 0, got {epsilon}")
    if math.isinf(epsilon):
        raise DpError("epsilon is infinite: these parameters give no privacy")
    return math.ceil(epsilon * PPM)


class DpConfig(Canonical, frozen=True):
    """A job's DP parameters as the chain records them (integers only)."""

    mode: str
    noise_multiplier_ppm: int
    clip_norm_ppm: int
    sampling_rate_ppm: int
    delta_e12: int
    min_clients: int
    rounds: int

    @classmethod
    def of(
        cls,
        *,
        mode: str,
        noise_multiplier: float,
        clip_norm: float,
        sampling_rate: float,
        delta: float,
        min_clients: int,
        rounds: int,
    ) -> DpConfig:
        """Build and validate from floats (z is rounded up so rounding never removes noise)."""
        if not math.isfinite(delta) or delta < 0:
            raise DpError(f"delta must be finite and >= 0, got {delta}")
        if not math.isfinite(noise_multiplier):
            raise DpError(f"noise multiplier must be finite, got {noise_multiplier}")
        cfg = cls(
            mode,
            # ceil, after dropping float noise below a millionth of a ppm (1.1 * 1e6 is
            # 1100000.0000000002 in binary floating point)
            math.ceil(round(noise_multiplier * PPM, 6)),
            to_ppm(clip_norm),
            to_ppm(sampling_rate),
            round(delta * DELTA_UNITS),
            min_clients,
            rounds,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`DpError` naming the first bad field."""
        if self.mode not in DP_MODES:
            raise DpError(f"mode must be one of {DP_MODES}, got {self.mode!r}")
        if self.noise_multiplier_ppm < 1:
            raise DpError("noise multiplier must be > 0")
        if self.clip_norm_ppm < 1:
            raise DpError("clip norm must be > 0")
        if not 1 <= self.sampling_rate_ppm <= PPM:
            raise DpError(f"sampling rate must lie in (0, 1], got {self.sampling_rate_ppm} ppm")
        if not 1 <= self.delta_e12 < DELTA_UNITS:
            raise DpError(f"delta must lie in (0, 1), got {self.delta_e12} / 10^12")
        if self.min_clients < 1:
            raise DpError(f"min_clients must be >= 1, got {self.min_clients}")
        if self.rounds < 1:
            raise DpError(f"rounds must be >= 1, got {self.rounds}")

    @property
    def noise_multiplier(self) -> float:
        """z."""
        return self.noise_multiplier_ppm / PPM

    @property
    def clip_norm(self) -> float:
        """C."""
        return self.clip_norm_ppm / PPM

    @property
    def sampling_rate(self) -> float:
        """q."""
        return self.sampling_rate_ppm / PPM

    @property
    def delta(self) -> float:
        """delta."""
        return self.delta_e12 / DELTA_UNITS

    def planned_epsilon(self) -> float:
        """Epsilon after all planned rounds at the job's rate (what a client joining sees)."""
        return epsilon(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            steps=self.rounds,
            delta=self.delta,
        )


class DpRoundReport(Canonical, frozen=True):
    """One round's privacy, as recorded on chain (epsilons in micro-epsilon, rounded up)."""

    round: int
    noise_multiplier_ppm: int
    sampling_rate_ppm: int
    delta_e12: int
    epsilon_round_micro: int
    epsilon_total_micro: int


def secure_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS, for noise in deployment."""
    return np.random.default_rng(secrets.randbits(128))


def _check_clip_norm(clip_norm: float) -> None:
    if not math.isfinite(clip_norm) or clip_norm <= 0:
        raise DpError(f"clip norm must be finite and > 0, got {clip_norm}")


def clip_updates(updates: npt.ArrayLike, clip_norm: float) -> tuple[F32Array, F64Array]:
    """Clip each row of ``updates[n, d]`` to L2 norm at most ``clip_norm``.

    Returns the clipped float32 rows (a new array) and the original norms (float64).
    """
    _check_clip_norm(clip_norm)
    u = np.asarray(updates)
    if u.ndim != 2 or u.dtype.kind != "f":
        raise DpError(f"expected a 2-D float array of updates, got {u.dtype} {u.shape}")
    u32 = u.astype(np.float32)
    if not np.isfinite(u32).all():
        raise DpError("updates contain NaN or inf (or overflow float32)")
    norms = np.sqrt(np.einsum("ij,ij->i", u32, u32, dtype=np.float64))
    factor = np.ones(u32.shape[0], dtype=np.float64)
    over = norms > clip_norm
    factor[over] = clip_norm / norms[over] * _CLIP_SAFETY
    if over.any():
        u32[over] *= factor[over, None].astype(np.float32)
    return u32, norms


def clip_update(update: npt.ArrayLike, clip_norm: float) -> tuple[F32Array, float]:
    """Clip one flat update to L2 norm at most ``clip_norm``; returns it and its old norm."""
    u = np.asarray(update)
    if u.ndim != 1:
        raise DpError(f"expected a flat update, got shape {u.shape}")
    out, norms = clip_updates(u[None, :], clip_norm)
    return out[0], float(norms[0])


def noise_std(config: DpConfig) -> float:
    """Std of the noise one party adds: ``zC`` (central, on the sum) or ``zC/sqrt(m)``
    (distributed, on each client's update)."""
    full = config.noise_multiplier * config.clip_norm
    return full if config.mode == "central" else full / math.sqrt(config.min_clients)


def gaussian_noise(size: int, std: float, rng: np.random.Generator) -> F32Array:
    """``size`` draws of ``N(0, std^2)`` as float32 (sampled in float64)."""
    if not math.isfinite(std) or std < 0:
        raise DpError(f"noise std must be finite and >= 0, got {std}")
    return (rng.standard_normal(size) * std).astype(np.float32)


def privatize_update(update: npt.ArrayLike, config: DpConfig, rng: np.random.Generator) -> F32Array:
    """The client's step: clip, and in distributed mode add its share of the noise."""
    clipped, _ = clip_update(update, config.clip_norm)
    if config.mode == "distributed":
        clipped += gaussian_noise(clipped.size, noise_std(config), rng)
    return clipped


def privatize_sum(
    clipped_sum: npt.ArrayLike, config: DpConfig, rng: np.random.Generator
) -> F32Array:
    """The central step: add ``N(0, (zC)^2)`` to the sum of clipped updates (central mode
    only; in distributed mode the clients already did, and this refuses to add more)."""
    if config.mode != "central":
        raise DpError("privatize_sum is for central mode; distributed noise is added by clients")
    s = np.asarray(clipped_sum, dtype=np.float32)
    if s.ndim != 1:
        raise DpError(f"expected a flat sum, got shape {s.shape}")
    return s + gaussian_noise(s.size, noise_std(config), rng)


def effective_noise_multiplier(config: DpConfig, survivors: int) -> float:
    """The multiplier the sum really carries: in distributed mode, ``survivors`` clients
    contribute ``survivors / m`` of the planned variance."""
    if survivors < 1:
        raise DpError(f"survivors must be >= 1, got {survivors}")
    z = config.noise_multiplier
    if config.mode == "central":
        return z
    return z * math.sqrt(survivors / config.min_clients)


def _event(noise_multiplier: float, sampling_rate: float) -> Any:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise DpError(f"noise multiplier must be finite and > 0, got {noise_multiplier}")
    if not 0 < sampling_rate <= 1:
        raise DpError(f"sampling rate must lie in (0, 1], got {sampling_rate}")
    gaussian = _lib().GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return gaussian
    return _lib().PoissonSampledDpEvent(sampling_rate, gaussian)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise DpError(f"delta must lie in (0, 1), got {delta}")


def epsilon(*, noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` rounds of the (Poisson-subsampled) Gaussian mechanism."""
    _check_delta(delta)
    if steps < 0:
        raise DpError(f"steps must be >= 0, got {steps}")
    event = _event(noise_multiplier, sampling_rate)
    if steps == 0:
        return 0.0
    acc = _lib().rdp.RdpAccountant()
    acc.compose(_lib().SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    tol: float = 1e-4,
) -> float:
    """The smallest noise multiplier (within ``tol``) whose epsilon is at most the target."""
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise DpError(f"target epsilon must be finite and > 0, got {target_epsilon}")
    if steps < 1:
        raise DpError(f"steps must be >= 1, got {steps}")
    _event(1.0, sampling_rate)  # validates the rate with our error type

    def make(z: float) -> Any:
        return _lib().SelfComposedDpEvent(_event(z, sampling_rate), steps)

    z = _lib().calibrate_dp_mechanism(
        _lib().rdp.RdpAccountant,
        make,
        target_epsilon,
        delta,
        bracket_interval=_lib().LowerEndpointAndGuess(1e-3, 1.0),
        tol=tol,
    )
    return float(z)


class JobAccountant:
    """Per-job RDP accounting: one composed Gaussian event per round.

    Built from the on-chain :class:`DpConfig`, so every node feeds the accountant the same
    numbers. Rounds may differ (fewer survivors, a different participation rate).
    """

    def __init__(self, config: DpConfig) -> None:
        config.validate()
        self.config = config
        self._acc = _lib().rdp.RdpAccountant()
        self._rounds = 0

    @property
    def rounds(self) -> int:
        """Rounds recorded so far."""
        return self._rounds

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon at the job's delta (0 before any round)."""
        return float(self._acc.get_epsilon(self.config.delta)) if self._rounds else 0.0

    def record_round(
        self, round_: int, *, sampling_rate_ppm: int | None = None, survivors: int | None = None
    ) -> DpRoundReport:
        """Account round ``round_`` and return its report. ``sampling_rate_ppm`` overrides the
        job's rate for this round; ``survivors`` (distributed mode) lowers the multiplier
        when fewer than ``min_clients`` updates made it into the sum."""
        cfg = self.config
        rate_ppm = cfg.sampling_rate_ppm if sampling_rate_ppm is None else sampling_rate_ppm
        if not 1 <= rate_ppm <= PPM:
            raise DpError(f"sampling rate must lie in (0, 1], got {rate_ppm} ppm")
        z = cfg.noise_multiplier
        if survivors is not None:
            z = min(z, effective_noise_multiplier(cfg, survivors))
        q = rate_ppm / PPM
        event = _event(z, q)
        self._acc.compose(event)
        self._rounds += 1
        single = _lib().rdp.RdpAccountant()
        single.compose(event)
        return DpRoundReport(
            round=round_,
            noise_multiplier_ppm=math.floor(z * PPM),
            sampling_rate_ppm=rate_ppm,
            delta_e12=cfg.delta_e12,
            epsilon_round_micro=to_micro_epsilon(float(single.get_epsilon(cfg.delta))),
            epsilon_total_micro=to_micro_epsilon(self.epsilon),
        )

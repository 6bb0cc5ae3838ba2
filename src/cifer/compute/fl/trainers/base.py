"""The trainer protocol: what the simulator (and later a compute node) needs from a model.

A trainer owns one model. Its parameters are an ordered mapping ``name -> float32 array``
(the layout of :mod:`cifer.compute.fl.params`), so its flat vector view is what clients
send and aggregators combine. Two training styles use it:

* FedAvg: ``set_params(global)``, ``fit`` for some local epochs (or steps), and the update
  is ``get_params() - global``;
* FedSGD: ``set_params(global)`` and ``gradient`` on one minibatch; worker momentum is
  kept by the caller (see :mod:`cifer.compute.fl.simulation`).

Trainers whose parameters live in one flat buffer (the NumPy models) also implement
:class:`FlatTrainer`, which lets the simulator move whole vectors instead of dicts;
:func:`get_flat` and :func:`set_flat` use that fast path when it exists. Trainers that can
compute many clients' minibatch gradients in one vectorised call implement
:class:`BatchGradientTrainer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.params import DTYPE, F32Array, Params, ParamSpec

IntArray = npt.NDArray[np.int64]


class TrainerError(ValueError):
    """A trainer was misused (wrong shapes, labels out of range) or is unavailable."""


@runtime_checkable
class Trainer(Protocol):
    """One model, its local optimiser and its evaluation."""

    def get_params(self) -> Params:
        """The current parameters: an ordered dict of fresh float32 copies."""
        ...

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the parameters (same names, order and shapes as :meth:`get_params`)."""
        ...

    def fit(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
        steps: int | None = None,
    ) -> dict[str, float]:
        """Minibatch SGD on (x, y) for ``epochs`` passes, or exactly ``steps`` minibatch
        steps when ``steps`` is given (reshuffling after every pass). Returns at least
        ``loss`` (mean training loss over the steps) and ``steps``."""
        ...

    def gradient(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        batch_size: int,
        rng: np.random.Generator,
    ) -> F32Array:
        """The flat float32 gradient of the mean loss on one minibatch of ``batch_size``
        samples drawn without replacement by :func:`sample_batch` (all samples if fewer)."""
        ...

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Mean loss and accuracy on (x, y): ``{"loss", "accuracy", "n"}``."""
        ...


@runtime_checkable
class FlatTrainer(Protocol):
    """Optional fast path: parameters as one flat float32 vector in model order."""

    def get_flat(self, *, copy: bool = True) -> F32Array:
        """The flat parameter vector (a read-only view of the live buffer if not ``copy``)."""
        ...

    def set_flat(self, vector: npt.NDArray[Any]) -> None:
        """Overwrite the parameters from a flat float32 vector."""
        ...


@runtime_checkable
class BatchGradientTrainer(Protocol):
    """Optional: per-client minibatch gradients for many clients in one call."""

    def client_gradients(self, xs: npt.NDArray[Any], ys: npt.NDArray[Any]) -> F32Array:
        """``xs[c, b, ...]``, ``ys[c, b]`` -> ``[c, d]`` float32: row k is the gradient of
        the mean loss of client k's batch at the current parameters."""
        ...


def param_spec(trainer: Trainer) -> ParamSpec:
    """The layout of the trainer's parameters."""
    spec = getattr(trainer, "spec", None)
    if isinstance(spec, ParamSpec):
        return spec
    return ParamSpec.of(trainer.get_params())


def get_flat(trainer: Trainer, spec: ParamSpec) -> F32Array:
    """The trainer's parameters as a fresh flat float32 vector."""
    if isinstance(trainer, FlatTrainer):
        return trainer.get_flat()
    return spec.flatten(trainer.get_params())


def set_flat(trainer: Trainer, spec: ParamSpec, vector: F32Array) -> None:
    """Load a flat float32 vector into the trainer."""
    if isinstance(trainer, FlatTrainer):
        trainer.set_flat(vector)
    else:
        trainer.set_params(spec.unflatten(vector, copy=False))


def local_update(
    trainer: Trainer,
    spec: ParamSpec,
    w: F32Array,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    steps: int | None = None,
    out: F32Array | None = None,
) -> tuple[F32Array, float]:
    """One FedAvg client step: load the global model ``w``, train locally, and return the
    delta ``w_local - w`` (written into ``out`` if given) with the mean training loss.

    The simulator and the on-chain client (:mod:`cifer.app.sdk`) both use this, so an
    update computed in a real deployment is exactly the one the simulator would compute.
    """
    set_flat(trainer, spec, w)
    info = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, lr=lr, rng=rng, steps=steps)
    delta = np.empty(spec.size, dtype=DTYPE) if out is None else out
    np.subtract(get_flat(trainer, spec), w, out=delta)
    return delta, float(info.get("loss", float("nan")))


def check_xy(
    x: npt.NDArray[Any], y: npt.NDArray[Any], num_classes: int, name: str
) -> tuple[F32Array, IntArray]:
    """Validate a dataset for a classifier and return (x as float32, y as int64)."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TrainerError(f"{name}: x and y must be numpy arrays")
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise TrainerError(
            f"{name}: need x[n, ...] and y[n] with the same n, got {x.shape} and {y.shape}"
        )
    if y.dtype.kind not in "iu":
        raise TrainerError(f"{name}: labels must be integers, got {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise TrainerError(
            f"{name}: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
        )
    xf = x if x.dtype == DTYPE else x.astype(DTYPE)
    if xf.size and not np.isfinite(xf).all():
        raise TrainerError(f"{name}: inputs contain NaN or inf")
    return xf, y.astype(np.int64, copy=False)


def check_hyper(epochs: int, batch_size: int, lr: float, steps: int | None, name: str) -> None:
    """Validate local-training hyper-parameters."""
    if steps is None and (isinstance(epochs, bool) or epochs < 0):
        raise TrainerError(f"{name}: epochs must be >= 0, got {epochs}")
    if steps is not None and steps < 0:
        raise TrainerError(f"{name}: steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise TrainerError(f"{name}: batch_size must be >= 1, got {batch_size}")
    if not np.isfinite(lr) or lr < 0:
        raise TrainerError(f"{name}: lr must be finite and >= 0, got {lr}")


def gradient_batch(n: int, batch_size: int, rng: np.random.Generator) -> IntArray:
    """Indices of the one minibatch a FedSGD gradient uses; errors name the problem."""
    if batch_size < 1:
        raise TrainerError(f"gradient: batch_size must be >= 1, got {batch_size}")
    if n == 0:
        raise TrainerError("gradient: no samples")
    return sample_batch(n, batch_size, rng)


def sample_batch(n: int, batch_size: int, rng: np.random.Generator) -> IntArray:
    """Indices of one minibatch: ``batch_size`` distinct samples of ``n`` (all if fewer).

    Every trainer's :meth:`Trainer.gradient` draws its batch with this function, so the
    vectorised per-client path of the simulator sees exactly the same batches.
    """
    if n <= batch_size:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=batch_size, replace=False)).astype(np.int64)


def minibatches(
    n: int, batch_size: int, rng: np.random.Generator, *, epochs: int, steps: int | None
) -> list[IntArray]:
    """Index arrays of the minibatches of ``epochs`` shuffled passes over n samples, or of
    exactly ``steps`` batches (passes repeat, reshuffled) when ``steps`` is given. The last
    batch of a pass may be smaller (no samples are dropped)."""
    if n == 0:
        return []
    out: list[IntArray] = []
    target = steps
    passes = 0
    while (target is None and passes < epochs) or (target is not None and len(out) < target):
        perm = rng.permutation(n).astype(np.int64)
        for start in range(0, n, batch_size):
            out.append(perm[start : start + batch_size])
            if target is not None and len(out) >= target:
                break
        passes += 1
    return out

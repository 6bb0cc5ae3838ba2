"""Adapter for scikit-learn linear classifiers (``SGDClassifier``, ``LogisticRegression``).

The model's parameters are ``coef`` [k, in] and ``intercept`` [k] as float32 tensors, with
k = num_classes, or k = 1 for a binary problem (scikit-learn's own layout). They are set
on the estimator before every fit, so the estimator is only a local optimiser.

Training:

* estimators with ``partial_fit`` (``SGDClassifier(loss="log_loss")``, the default): one
  ``partial_fit`` per shuffled minibatch of ours. scikit-learn's SGD steps once per
  *sample* inside each call, so ``lr`` (set as a constant ``eta0``) is a per-sample step
  size, not the minibatch step of the NumPy models. The estimator's own shuffling is off
  (we shuffle with the caller's Generator) so a seed fixes the result.
* estimators without it (``LogisticRegression``): ``fit`` warm-started from the current
  parameters with ``max_iter = epochs`` solver iterations (``steps`` overrides it;
  ``batch_size`` and ``lr`` do not apply). Every client must then hold every class,
  since the solver's parameter layout follows the classes present in the data.

:meth:`SklearnTrainer.gradient` is the gradient of the mean *data* log-loss (no
regulariser): per class sigmoid for one-vs-rest ``SGDClassifier``, softmax for
multinomial ``LogisticRegression``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.params import DTYPE, F32Array, ParamError, Params, ParamSpec, TensorSpec
from cifer.compute.fl.trainers.base import (
    TrainerError,
    check_hyper,
    check_xy,
    gradient_batch,
    minibatches,
)

_EPS = 1e-12


class SklearnTrainer:
    """Wrap a scikit-learn linear classifier (default ``SGDClassifier(loss="log_loss")``).

    ``estimator`` may be any classifier with ``coef_``/``intercept_`` and either
    ``partial_fit`` or ``fit`` with ``warm_start``; it is cloned, so the caller's object is
    never modified. Parameters start at zero (a linear model needs no symmetry breaking).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | int,
        num_classes: int,
        estimator: Any | None = None,
        *,
        seed: int = 0,
    ) -> None:
        from sklearn.base import clone
        from sklearn.linear_model import SGDClassifier

        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        if num_classes < 2:
            raise TrainerError(f"num_classes must be >= 2, got {num_classes}")
        self.input_shape = tuple(int(s) for s in shape)
        self.input_dim = int(np.prod(self.input_shape))
        self.num_classes = int(num_classes)
        if estimator is None:
            estimator = SGDClassifier(
                loss="log_loss", alpha=0.0, learning_rate="constant", eta0=0.01
            )
        est = clone(estimator)
        params = est.get_params()
        if "shuffle" in params:
            est.set_params(shuffle=False)
        if "random_state" in params:
            est.set_params(random_state=seed)
        self.incremental = hasattr(est, "partial_fit")
        if not self.incremental:
            if "warm_start" not in params:
                raise TrainerError(f"{type(est).__name__} has neither partial_fit nor warm_start")
            est.set_params(warm_start=True)
        self.estimator = est
        self._multinomial = not self.incremental and self.num_classes > 2
        k = 1 if self.num_classes == 2 else self.num_classes
        self._k = k
        self.spec = ParamSpec(
            (TensorSpec("coef", (k, self.input_dim)), TensorSpec("intercept", (k,)))
        )
        self._classes = np.arange(self.num_classes)
        self._initialised = False
        self._coef = np.zeros((k, self.input_dim), dtype=np.float64)
        self._intercept = np.zeros(k, dtype=np.float64)

    # ------------------------------------------------------------------ parameters

    def get_params(self) -> Params:
        """``coef`` and ``intercept`` as fresh float32 arrays."""
        return {"coef": self._coef.astype(DTYPE), "intercept": self._intercept.astype(DTYPE)}

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set ``coef`` and ``intercept`` (exact names, order and shapes)."""
        try:
            self.spec.check(params)
        except ParamError as exc:
            raise TrainerError(f"set_params: {exc}") from exc
        self._coef = np.array(params["coef"], dtype=np.float64)
        self._intercept = np.array(params["intercept"], dtype=np.float64)

    def _push(self) -> None:
        """Put our parameters into the estimator (creating its fitted state if needed)."""
        est = self.estimator
        if self.incremental and not self._initialised:
            # partial_fit builds its internal state from the first call; the parameters it
            # computes are overwritten at once.
            est.partial_fit(
                np.zeros((1, self.input_dim)), np.zeros(1, dtype=np.int64), classes=self._classes
            )
        self._initialised = True
        est.coef_ = self._coef.copy()
        est.intercept_ = self._intercept.copy()
        est.classes_ = self._classes

    def _pull(self) -> None:
        coef = np.asarray(self.estimator.coef_, dtype=np.float64)
        intercept = np.asarray(self.estimator.intercept_, dtype=np.float64).reshape(-1)
        if coef.shape != self._coef.shape or intercept.shape != self._intercept.shape:
            raise TrainerError(
                f"{type(self.estimator).__name__} produced coef {coef.shape}, expected "
                f"{self._coef.shape}: every client needs all {self.num_classes} classes for "
                "this estimator (use SGDClassifier for label-skewed data)"
            )
        self._coef = coef.copy()
        self._intercept = intercept.copy()

    # ------------------------------------------------------------------ Trainer

    def _x(self, x: npt.NDArray[Any], y: npt.NDArray[Any], name: str) -> tuple[Any, Any]:
        xf, yi = check_xy(x, y, self.num_classes, name)
        if int(np.prod(xf.shape[1:])) != self.input_dim:
            raise TrainerError(
                f"{name}: inputs have sample shape {tuple(xf.shape[1:])}, model expects "
                f"{self.input_shape}"
            )
        # float64 throughout: SGDClassifier keeps the dtype of its first partial_fit.
        return xf.reshape(len(yi), self.input_dim).astype(np.float64), yi

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
        """Local training; see the module docstring for what ``lr``/``epochs`` mean."""
        check_hyper(epochs, batch_size, lr, steps, "fit")
        xf, yi = self._x(x, y, "fit")
        self._push()
        est = self.estimator
        n_steps = 0
        if self.incremental:
            if "eta0" in est.get_params():
                est.set_params(eta0=max(float(lr), 1e-12))
            batches = minibatches(len(yi), batch_size, rng, epochs=epochs, steps=steps)
            for idx in batches:
                est.partial_fit(xf[idx], yi[idx])
            n_steps = len(batches)
        else:
            iters = steps if steps is not None else epochs
            if iters > 0 and len(yi):
                present = np.unique(yi)
                if present.size != self.num_classes:
                    raise TrainerError(
                        f"fit: {type(est).__name__} needs all {self.num_classes} classes in "
                        f"each client's data, got {present.size}"
                    )
                est.set_params(max_iter=int(iters))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ConvergenceWarning at small max_iter
                    est.fit(xf, yi)
                n_steps = int(iters)
        self._pull()
        loss = self._loss(xf, yi) if len(yi) else float("nan")
        return {"loss": loss, "steps": float(n_steps)}

    def _logits(self, xf: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = xf @ self._coef.T + self._intercept
        return out

    def _proba(self, xf: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Class probabilities as the estimator defines them (softmax or normalised OvR)."""
        z = self._logits(xf)
        if self._k == 1:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        if self._multinomial:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
            return out
        s = 1.0 / (1.0 + np.exp(-z))
        total = s.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        norm: npt.NDArray[np.float64] = s / total
        return norm

    def _loss(self, xf: npt.NDArray[Any], yi: npt.NDArray[np.int64]) -> float:
        p = self._proba(xf)
        return float(-np.log(np.maximum(p[np.arange(len(yi)), yi], _EPS)).mean())

    def gradient(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        batch_size: int,
        rng: np.random.Generator,
    ) -> F32Array:
        """Flat gradient of the mean data log-loss on one minibatch."""
        xf, yi = self._x(x, y, "gradient")
        idx = gradient_batch(len(yi), batch_size, rng)
        xb, yb = xf[idx], yi[idx]
        z = self._logits(xb)
        if self._k == 1:
            dz = 1.0 / (1.0 + np.exp(-z)) - (yb == 1)[:, None]
        elif self._multinomial:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            dz = e / e.sum(axis=1, keepdims=True)
            dz[np.arange(len(yb)), yb] -= 1.0
        else:
            onehot = np.zeros_like(z)
            onehot[np.arange(len(yb)), yb] = 1.0
            dz = 1.0 / (1.0 + np.exp(-z)) - onehot
        dz /= len(yb)
        grad = {"coef": (dz.T @ xb).astype(DTYPE), "intercept": dz.sum(axis=0).astype(DTYPE)}
        return self.spec.flatten(grad)

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Mean log-loss (of the estimator's probabilities) and accuracy."""
        xf, yi = self._x(x, y, "evaluate")
        n = len(yi)
        if n == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "n": 0.0}
        p = self._proba(xf)
        acc = float((p.argmax(axis=1) == yi).mean())
        return {"loss": self._loss(xf, yi), "accuracy": acc, "n": float(n)}

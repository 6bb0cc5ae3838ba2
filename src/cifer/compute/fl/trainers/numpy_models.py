"""Dependency-free NumPy classifiers: multinomial logistic regression and a ReLU MLP.

Both are the same network, ``x -> [Linear -> ReLU]* -> Linear -> softmax``, trained with
softmax cross-entropy by plain minibatch SGD; logistic regression has no hidden layer.
Everything is float32 and vectorised over the batch (one matmul per layer and pass).

Parameters live in one flat float32 buffer; the named tensors (``fc1.weight`` [in, out],
``fc1.bias`` [out], ``fc2.weight``, ...) are views into it, so the flat vector the
simulator aggregates costs no copying. Weights are stored [in, out] (``x @ W``), the
transpose of PyTorch's ``nn.Linear`` layout.

Initialisation is seeded: He normal (std sqrt(2 / fan_in)) for layers followed by a ReLU,
Glorot uniform for the output layer, zero biases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

#: Rows per forward pass in :meth:`NumpyMLP.evaluate` (bounds activation memory).
EVAL_CHUNK = 8192


class NumpyMLP:
    """Softmax classifier with ``hidden`` ReLU layers (none: logistic regression).

    ``input_shape`` is the shape of one sample (flattened internally); ``l2`` adds
    ``l2 / 2 * ||w||^2`` over the weight matrices (not biases) to the loss.
    Implements :class:`~cifer.compute.fl.trainers.base.Trainer`,
    :class:`~cifer.compute.fl.trainers.base.FlatTrainer` and
    :class:`~cifer.compute.fl.trainers.base.BatchGradientTrainer`.
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        num_classes: int,
        hidden: Sequence[int] = (),
        *,
        seed: int = 0,
        l2: float = 0.0,
    ) -> None:
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        if not shape or any(int(s) < 1 for s in shape):
            raise TrainerError(f"input_shape must be positive, got {shape}")
        if num_classes < 2:
            raise TrainerError(f"num_classes must be >= 2, got {num_classes}")
        if any(int(h) < 1 for h in hidden):
            raise TrainerError(f"hidden sizes must be >= 1, got {tuple(hidden)}")
        if not np.isfinite(l2) or l2 < 0:
            raise TrainerError(f"l2 must be finite and >= 0, got {l2}")
        self.input_shape = tuple(int(s) for s in shape)
        self.input_dim = int(np.prod(self.input_shape))
        self.num_classes = int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.l2 = float(l2)
        dims = (self.input_dim, *self.hidden, self.num_classes)
        self._dims = dims
        tensors: list[TensorSpec] = []
        for i in range(len(dims) - 1):
            tensors.append(TensorSpec(f"fc{i + 1}.weight", (dims[i], dims[i + 1])))
            tensors.append(TensorSpec(f"fc{i + 1}.bias", (dims[i + 1],)))
        self.spec = ParamSpec(tuple(tensors))
        self._flat = np.zeros(self.spec.size, dtype=DTYPE)
        self._grad = np.zeros(self.spec.size, dtype=DTYPE)
        self._p = self.spec.unflatten(self._flat, copy=False)
        self._g = self.spec.unflatten(self._grad, copy=False)
        self._offsets: list[tuple[int, int, int, int]] = []  # (w_start, w_end, b_start, b_end)
        offset = 0
        for i in range(len(dims) - 1):
            w_size = dims[i] * dims[i + 1]
            self._offsets.append(
                (offset, offset + w_size, offset + w_size, offset + w_size + dims[i + 1])
            )
            offset += w_size + dims[i + 1]
        self._weight_mask = np.zeros(self.spec.size, dtype=np.bool_)
        for w0, w1, _, _ in self._offsets:
            self._weight_mask[w0:w1] = True
        self.reset(seed)

    # ------------------------------------------------------------------ parameters

    @property
    def num_layers(self) -> int:
        """Number of linear layers."""
        return len(self._dims) - 1

    def reset(self, seed: int) -> None:
        """Re-initialise the parameters from ``seed`` (He for hidden, Glorot for output)."""
        rng = np.random.default_rng(seed)
        for i in range(self.num_layers):
            fan_in, fan_out = self._dims[i], self._dims[i + 1]
            w = self._p[f"fc{i + 1}.weight"]
            if i < self.num_layers - 1:
                w[...] = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w[...] = rng.uniform(-limit, limit, size=(fan_in, fan_out))
            self._p[f"fc{i + 1}.bias"][...] = 0.0

    def get_params(self) -> Params:
        """Ordered fresh copies of the named tensors."""
        return {name: arr.copy() for name, arr in self._p.items()}

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Copy ``params`` (exact names, order and shapes) into the model."""
        try:
            self.spec.check(params)
        except ParamError as exc:
            raise TrainerError(f"set_params: {exc}") from exc
        for name, arr in self._p.items():
            arr[...] = params[name]

    def get_flat(self, *, copy: bool = True) -> F32Array:
        """The flat parameter vector (a read-only view of the live buffer if not ``copy``)."""
        if copy:
            return self._flat.copy()
        view = self._flat.view()
        view.flags.writeable = False
        return view

    def set_flat(self, vector: npt.NDArray[Any]) -> None:
        """Overwrite the parameters from a flat float32 vector."""
        if not isinstance(vector, np.ndarray) or vector.shape != self._flat.shape:
            shape = getattr(vector, "shape", None)
            raise TrainerError(f"set_flat: expected shape {self._flat.shape}, got {shape}")
        if vector.dtype != DTYPE:
            raise TrainerError(f"set_flat: expected float32, got {vector.dtype}")
        self._flat[...] = vector

    # ------------------------------------------------------------------ maths

    def _weights(self, i: int) -> tuple[F32Array, F32Array]:
        return self._p[f"fc{i + 1}.weight"], self._p[f"fc{i + 1}.bias"]

    def _forward(self, x: F32Array) -> tuple[list[F32Array], F32Array]:
        """Activations entering each layer and the logits; x is [..., b, in]."""
        acts = [x]
        h = x
        for i in range(self.num_layers):
            w, b = self._weights(i)
            z = h @ w
            z += b
            if i < self.num_layers - 1:
                np.maximum(z, 0.0, out=z)
                acts.append(z)
            h = z
        return acts, h

    @staticmethod
    def _softmax_xent(logits: F32Array, y: npt.NDArray[np.int64]) -> tuple[F32Array, F32Array]:
        """Per-sample loss and d(mean loss)/d(logits) for logits [..., b, C], y [..., b]."""
        z = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=-1, keepdims=True)
        zy = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
        loss = np.log(s[..., 0]) - zy
        p = e / s
        np.put_along_axis(p, y[..., None], np.take_along_axis(p, y[..., None], axis=-1) - 1, -1)
        p /= np.float32(logits.shape[-2])
        return loss.astype(DTYPE, copy=False), p.astype(DTYPE, copy=False)

    def _backward(self, acts: list[F32Array], dz: F32Array, out: F32Array, batched: bool) -> None:
        """Write d(loss)/d(params) into ``out`` ([d] or [c, d] if batched)."""
        c = dz.shape[0] if batched else 0
        for i in reversed(range(self.num_layers)):
            w0, w1, b0, b1 = self._offsets[i]
            a = acts[i]
            dw = np.swapaxes(a, -1, -2) @ dz
            db = dz.sum(axis=-2)
            if batched:
                out[:, w0:w1] = dw.reshape(c, -1)
                out[:, b0:b1] = db
            else:
                out[w0:w1] = dw.reshape(-1)
                out[b0:b1] = db
            if i > 0:
                w, _ = self._weights(i)
                dz = dz @ w.T
                dz *= a > 0  # a = ReLU output of the previous layer
        if self.l2:
            if batched:
                out[:, self._weight_mask] += self.l2 * self._flat[self._weight_mask]
            else:
                out[self._weight_mask] += self.l2 * self._flat[self._weight_mask]

    def _flatten_x(self, x: F32Array, lead: int) -> F32Array:
        """Reshape x[*lead_dims, *input_shape] to x[*lead_dims, input_dim], checking shape."""
        if tuple(x.shape[lead:]) != self.input_shape and (
            int(np.prod(x.shape[lead:])) != self.input_dim
        ):
            raise TrainerError(
                f"inputs have sample shape {tuple(x.shape[lead:])}, model expects "
                f"{self.input_shape}"
            )
        return x.reshape(*x.shape[:lead], self.input_dim)

    def loss_and_grad(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, F32Array]:
        """Mean loss on (x, y) and a fresh copy of its flat gradient."""
        xf, yi = check_xy(x, y, self.num_classes, "loss_and_grad")
        loss = self._loss_grad(self._flatten_x(xf, 1), yi)
        return loss, self._grad.copy()

    def _loss_grad(self, x: F32Array, y: npt.NDArray[np.int64]) -> float:
        """Mean loss; leaves the gradient in ``self._grad``. x is [b, in] float32."""
        acts, logits = self._forward(x)
        losses, dz = self._softmax_xent(logits, y)
        self._backward(acts, dz, self._grad, batched=False)
        loss = float(losses.mean(dtype=np.float64))
        if self.l2:
            w = self._flat[self._weight_mask]
            loss += 0.5 * self.l2 * float(np.dot(w, w))
        return loss

    # ------------------------------------------------------------------ Trainer

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
        """Plain minibatch SGD; see :meth:`Trainer.fit`."""
        check_hyper(epochs, batch_size, lr, steps, "fit")
        xf, yi = check_xy(x, y, self.num_classes, "fit")
        xf = self._flatten_x(xf, 1)
        batches = minibatches(len(yi), batch_size, rng, epochs=epochs, steps=steps)
        total = 0.0
        step_lr = np.float32(lr)
        for idx in batches:
            total += self._loss_grad(xf[idx], yi[idx])
            self._grad *= step_lr
            self._flat -= self._grad
        n = len(batches)
        return {"loss": total / n if n else float("nan"), "steps": float(n)}

    def gradient(
        self,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        batch_size: int,
        rng: np.random.Generator,
    ) -> F32Array:
        """Flat gradient of the mean loss on one minibatch (see :func:`sample_batch`)."""
        xf, yi = check_xy(x, y, self.num_classes, "gradient")
        idx = gradient_batch(len(yi), batch_size, rng)
        self._loss_grad(self._flatten_x(xf[idx], 1), yi[idx])
        return self._grad.copy()

    def client_gradients(self, xs: npt.NDArray[Any], ys: npt.NDArray[Any]) -> F32Array:
        """Per-client gradients ``[c, d]`` of batches ``xs[c, b, ...]``, ``ys[c, b]`` in one
        batched pass (matmuls broadcast over clients)."""
        if not isinstance(xs, np.ndarray) or not isinstance(ys, np.ndarray) or ys.ndim != 2:
            raise TrainerError("client_gradients: need xs[c, b, ...] and ys[c, b] arrays")
        if xs.shape[:2] != ys.shape or ys.shape[1] == 0:
            raise TrainerError(
                f"client_gradients: xs {xs.shape} and ys {ys.shape} disagree on [c, b]"
            )
        xf, yi = check_xy(xs.reshape(-1, *xs.shape[2:]), ys.reshape(-1), self.num_classes, "x")
        c, b = ys.shape
        x3 = self._flatten_x(xf.reshape(c, b, *xs.shape[2:]), 2)
        acts, logits = self._forward(x3)
        _, dz = self._softmax_xent(logits, yi.reshape(c, b))
        out = np.empty((c, self.spec.size), dtype=DTYPE)
        self._backward(acts, dz, out, batched=True)
        return out

    def predict_logits(self, x: npt.NDArray[Any]) -> F32Array:
        """Logits [n, C], computed in chunks."""
        xf = x if x.dtype == DTYPE else x.astype(DTYPE)
        xf = self._flatten_x(xf, 1)
        out = np.empty((xf.shape[0], self.num_classes), dtype=DTYPE)
        for start in range(0, xf.shape[0], EVAL_CHUNK):
            out[start : start + EVAL_CHUNK] = self._forward(xf[start : start + EVAL_CHUNK])[1]
        return out

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Mean cross-entropy and accuracy on (x, y)."""
        xf, yi = check_xy(x, y, self.num_classes, "evaluate")
        n = len(yi)
        if n == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "n": 0.0}
        logits = self.predict_logits(xf)
        losses, _ = self._softmax_xent(logits, yi)
        correct = int((logits.argmax(axis=1) == yi).sum())
        return {
            "loss": float(losses.mean(dtype=np.float64)),
            "accuracy": correct / n,
            "n": float(n),
        }


class NumpyLogReg(NumpyMLP):
    """Multinomial logistic regression (a :class:`NumpyMLP` with no hidden layer)."""

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        num_classes: int,
        *,
        seed: int = 0,
        l2: float = 0.0,
    ) -> None:
        super().__init__(input_shape, num_classes, (), seed=seed, l2=l2)

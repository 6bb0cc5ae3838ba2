"""PyTorch adapter (optional: ``pip install torch==2.13.0`` or the ``torch`` extra).

Nothing here imports torch at module import time; every entry point calls
:func:`require_torch`, which raises a :class:`TrainerError` naming the install command.

* :class:`TorchTrainer` wraps any ``nn.Module`` classifier (logits out, integer labels).
  Its parameters are the module's ``state_dict`` entries with a floating dtype, in
  ``state_dict`` order, as float32 arrays: trainable parameters and float buffers (e.g.
  BatchNorm running statistics, which FedAvg averages like weights). Gradients are zero
  in buffer coordinates.
* :func:`make_cnn` builds the small MNIST CNN of the PyTorch MNIST example, the model of
  Karimireddy, He and Jaggi's experiments (conv 32 3x3, conv 64 3x3, max-pool 2, dropout
  0.25, fc 128, dropout 0.5, fc classes; 1.2 M parameters on 28 x 28 inputs).
* :func:`batched_client_gradients` computes the minibatch gradients of many clients in
  one call (``torch.func.functional_call`` + ``vmap`` over clients).

Randomness: :meth:`TorchTrainer.fit` and :meth:`TorchTrainer.gradient` seed torch's
global generator (used by dropout) from the caller's numpy Generator, so a seed fixes the
result on one machine (CPU kernels; GPU kernels may be non-deterministic).
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.params import DTYPE, F32Array, ParamError, Params, ParamSpec
from cifer.compute.fl.trainers.base import (
    TrainerError,
    check_hyper,
    check_xy,
    gradient_batch,
    minibatches,
)

INSTALL_HINT = "pip install torch==2.13.0 (or the 'torch' extra: pip install 'cifer[torch]')"
#: Rows per forward pass in evaluation.
EVAL_CHUNK = 2048


def require_torch() -> ModuleType:
    """Import torch or raise a TrainerError saying how to install it."""
    try:
        # importlib keeps type checkers from requiring torch (an optional extra)
        return importlib.import_module("torch")
    except ImportError as exc:
        raise TrainerError(f"PyTorch is not installed; {INSTALL_HINT}") from exc


def torch_available() -> bool:
    """Whether torch can be imported."""
    try:
        require_torch()
    except TrainerError:
        return False
    return True


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


#: MNIST's pixel mean and standard deviation (on [0, 1] pixels), the transform of the
#: PyTorch MNIST example that Karimireddy et al. train with.
MNIST_MEAN_STD = (0.1307, 0.3081)


def standardise_layer(mean: float, std: float) -> Any:
    """A parameter-free module computing ``(x - mean) / std``: loaders return [0, 1]
    pixels, and centred inputs make SGD at the paper's learning rate converge in its 600
    rounds (measured: 97.7% vs 96.0% final accuracy of ``cnn_small``, FedSGD, no attack)."""
    torch = require_torch()
    if not (std > 0 and math.isfinite(mean) and math.isfinite(std)):
        raise TrainerError(f"standardise: need a finite mean and std > 0, got {mean}, {std}")

    class Standardise(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, x: Any) -> Any:
            return (x - mean) / std

        def extra_repr(self) -> str:
            return f"mean={mean}, std={std}"

    return Standardise()


def make_cnn(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    *,
    dropout: bool = True,
    seed: int = 0,
    standardise: tuple[float, float] | None = MNIST_MEAN_STD,
) -> Any:
    """The 2-conv + 2-fc CNN of the PyTorch MNIST example (Karimireddy et al.'s model).

    ``standardise`` = (mean, std) puts :func:`standardise_layer` first (``None`` drops it).

    ``input_shape`` is (H, W) or (C, H, W); H and W must be at least 6. Returns an
    ``nn.Sequential`` with named layers (parameters ``conv1.weight``, ..., ``fc2.bias``)
    mapping [n, C, H, W] to [n, num_classes] logits, initialised with torch's default
    initialisers under ``torch.manual_seed(seed)`` (the global generator is restored).
    """
    torch = require_torch()
    nn = torch.nn
    c, h, w = _image_shape(input_shape, 6, "cnn")
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    p1, p2 = (0.25, 0.5) if dropout else (0.0, 0.0)
    with torch.random.fork_rng(devices=[]):  # layers draw their init when built
        torch.manual_seed(seed)
        layers = [
            *_norm(standardise),
            ("conv1", nn.Conv2d(c, 32, 3)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 64, 3)),
            ("relu2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)),
            ("drop1", nn.Dropout(p1)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(flat, 128)),
            ("relu3", nn.ReLU()),
            ("drop2", nn.Dropout(p2)),
            ("fc2", nn.Linear(128, num_classes)),
        ]
        model = nn.Sequential(OrderedDict(layers))
    return model


def make_small_cnn(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    *,
    seed: int = 0,
    standardise: tuple[float, float] | None = MNIST_MEAN_STD,
) -> Any:
    """A 114k-parameter CNN (on MNIST) for robustness sweeps on a CPU.

    Two 5x5 convolutions with stride 2 (16 and 32 channels, padding 2) and two linear
    layers (64 hidden). It costs about 1/30 of :func:`make_cnn`'s 1.2M-parameter model
    per sample (conv2 of that model alone is 10.6M multiply-adds), which is what lets
    ``cifer bench robustness`` run a full table of 600-round runs in an hour on 2 cores.
    Parameters ``conv1.weight``, ..., ``fc2.bias``; seeded and standardised like
    :func:`make_cnn`.
    """
    torch = require_torch()
    nn = torch.nn
    c, h, w = _image_shape(input_shape, 4, "cnn_small")

    def out(size: int) -> int:  # a 5x5 convolution, stride 2, padding 2
        return (size - 1) // 2 + 1

    flat = 32 * out(out(h)) * out(out(w))
    with torch.random.fork_rng(devices=[]):  # layers draw their init when built
        torch.manual_seed(seed)
        layers = [
            *_norm(standardise),
            ("conv1", nn.Conv2d(c, 16, 5, stride=2, padding=2)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(16, 32, 5, stride=2, padding=2)),
            ("relu2", nn.ReLU()),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(flat, 64)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(64, num_classes)),
        ]
        model = nn.Sequential(OrderedDict(layers))
    return model


def _image_shape(input_shape: Sequence[int], min_side: int, model: str) -> tuple[int, int, int]:
    """(C, H, W) from (H, W) or (C, H, W), refusing images smaller than the model needs."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape[1:]) < min_side or shape[0] < 1:
        raise TrainerError(
            f"{model}: input_shape must be (H, W) or (C, H, W) >= {min_side}, got {shape}"
        )
    return shape[0], shape[1], shape[2]


def _norm(standardise: tuple[float, float] | None) -> list[tuple[str, Any]]:
    return [] if standardise is None else [("standardise", standardise_layer(*standardise))]


class TorchTrainer:
    """:class:`~cifer.compute.fl.trainers.base.Trainer` around an ``nn.Module`` classifier.

    ``input_shape`` (optional) is the per-sample shape the module expects; inputs are
    reshaped to it (e.g. [n, 28, 28] -> [n, 1, 28, 28]). Local training is plain SGD
    (``torch.optim.SGD`` without momentum; worker momentum is the simulator's job) on the
    cross-entropy of the logits.
    """

    def __init__(
        self,
        module: Any,
        num_classes: int,
        *,
        input_shape: Sequence[int] | None = None,
        device: str = "cpu",
    ) -> None:
        torch = require_torch()
        if not isinstance(module, torch.nn.Module):
            raise TrainerError(f"expected an nn.Module, got {type(module).__name__}")
        self.torch = torch
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.num_classes = int(num_classes)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        state = self.module.state_dict(keep_vars=True)
        self._tensors = {k: v for k, v in state.items() if v.dtype.is_floating_point}
        if not self._tensors:
            raise TrainerError("module has no floating-point parameters")
        trainable = {k for k, p in self.module.named_parameters() if p.requires_grad}
        self._trainable = [k for k in self._tensors if k in trainable]
        self.spec = ParamSpec.of(self.get_params())
        self._sizes = [t.size for t in self.spec.tensors]

    # ------------------------------------------------------------------ parameters

    def get_params(self) -> Params:
        """Float state_dict entries as fresh float32 numpy arrays, in state_dict order."""
        return {
            k: v.detach().to("cpu", self.torch.float32).numpy().astype(DTYPE, copy=True)
            for k, v in self._tensors.items()
        }

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Copy named float32 arrays into the module's parameters and buffers."""
        try:
            self.spec.check(params)
        except ParamError as exc:
            raise TrainerError(f"set_params: {exc}") from exc
        with self.torch.no_grad():
            for k, t in self._tensors.items():
                t.copy_(self.torch.from_numpy(np.ascontiguousarray(params[k])))

    def get_flat(self, *, copy: bool = True) -> F32Array:
        """The flat float32 parameter vector (always a fresh array)."""
        del copy  # the vector is always gathered from the module's tensors
        with self.torch.no_grad():
            flat = self.torch.cat([t.detach().reshape(-1) for t in self._tensors.values()])
        out: F32Array = flat.to("cpu", self.torch.float32).numpy().astype(DTYPE, copy=True)
        return out

    def set_flat(self, vector: npt.NDArray[Any]) -> None:
        """Overwrite the parameters from a flat float32 vector."""
        if not isinstance(vector, np.ndarray) or vector.shape != (self.spec.size,):
            shape = getattr(vector, "shape", None)
            raise TrainerError(f"set_flat: expected shape ({self.spec.size},), got {shape}")
        if vector.dtype != DTYPE:
            raise TrainerError(f"set_flat: expected float32, got {vector.dtype}")
        src = self.torch.from_numpy(np.ascontiguousarray(vector)).to(self.device)
        with self.torch.no_grad():
            for t, piece in zip(self._tensors.values(), src.split(self._sizes), strict=True):
                t.copy_(piece.view_as(t))

    # ------------------------------------------------------------------ helpers

    def _inputs(self, x: F32Array) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(x))
        if self.input_shape is not None:
            t = t.reshape(t.shape[0], *self.input_shape)
        return t.to(self.device)

    def _labels(self, y: npt.NDArray[np.int64]) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(y)).to(self.device)

    def _loss(self, xb: F32Array, yb: npt.NDArray[np.int64]) -> Any:
        out = self.module(self._inputs(xb))
        return self.torch.nn.functional.cross_entropy(out, self._labels(yb))

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
        torch = self.torch
        torch.manual_seed(_seed_from(rng))
        batches = minibatches(len(yi), batch_size, rng, epochs=epochs, steps=steps)
        params = [self._tensors[k] for k in self._trainable]
        opt = torch.optim.SGD(params, lr=float(lr))
        self.module.train()
        total = 0.0
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            loss = self._loss(xf[idx], yi[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
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
        """Flat gradient of the mean loss on one minibatch (zeros in buffer coordinates)."""
        xf, yi = check_xy(x, y, self.num_classes, "gradient")
        idx = gradient_batch(len(yi), batch_size, rng)
        self.torch.manual_seed(_seed_from(rng))
        self.module.train()
        self.module.zero_grad(set_to_none=True)
        self._loss(xf[idx], yi[idx]).backward()
        pieces = []
        for k, t in self._tensors.items():
            g = t.grad if k in self._trainable else None
            pieces.append(g.detach().reshape(-1) if g is not None else self.torch.zeros(t.numel()))
        self.module.zero_grad(set_to_none=True)
        flat = self.torch.cat([p.to("cpu", self.torch.float32) for p in pieces])
        out: F32Array = flat.numpy().astype(DTYPE, copy=True)
        return out

    def client_gradients(self, xs: npt.NDArray[Any], ys: npt.NDArray[Any]) -> F32Array:
        """Per-client minibatch gradients ``[c, d]`` via :func:`batched_client_gradients`."""
        if self.input_shape is not None and isinstance(xs, np.ndarray) and xs.ndim >= 2:
            xs = xs.reshape(*xs.shape[:2], *self.input_shape)
        self.module.train()
        return batched_client_gradients(self.module, self._tensors, xs, ys, device=self.device)

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Mean cross-entropy and accuracy (module in eval mode, no gradients)."""
        xf, yi = check_xy(x, y, self.num_classes, "evaluate")
        n = len(yi)
        if n == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "n": 0.0}
        torch = self.torch
        self.module.eval()
        total = 0.0
        correct = 0
        with torch.no_grad():
            for start in range(0, n, EVAL_CHUNK):
                xb, yb = xf[start : start + EVAL_CHUNK], yi[start : start + EVAL_CHUNK]
                out = self.module(self._inputs(xb))
                labels = self._labels(yb)
                total += float(torch.nn.functional.cross_entropy(out, labels, reduction="sum"))
                correct += int((out.argmax(dim=1) == labels).sum())
        return {"loss": total / n, "accuracy": correct / n, "n": float(n)}


def batched_client_gradients(
    model: Any,
    params: Mapping[str, Any],
    xs: npt.NDArray[Any],
    ys: npt.NDArray[Any],
    *,
    device: Any = None,
) -> F32Array:
    """Gradients of the mean cross-entropy of c clients' batches in one vectorised call.

    ``params`` maps names to numpy arrays or tensors (a model's float parameters and
    buffers, in the order of the output columns); ``xs[c, b, ...]`` and ``ys[c, b]`` are
    the clients' batches. Returns ``[c, d]`` float32 with d the total size of ``params``;
    columns of entries that are not trainable parameters of ``model`` are zero. Uses
    ``torch.func.functional_call`` and ``vmap`` over clients (dropout draws independent
    masks per client when the model is in training mode).
    """
    torch = require_torch()
    tfunc = importlib.import_module("torch.func")
    functional_call, grad, vmap = tfunc.functional_call, tfunc.grad, tfunc.vmap

    if not isinstance(xs, np.ndarray) or not isinstance(ys, np.ndarray) or ys.ndim != 2:
        raise TrainerError("batched_client_gradients: need xs[c, b, ...] and ys[c, b] arrays")
    if xs.shape[:2] != ys.shape or ys.shape[1] == 0:
        raise TrainerError(
            f"batched_client_gradients: xs {xs.shape} and ys {ys.shape} disagree on [c, b]"
        )
    if ys.dtype.kind not in "iu":
        raise TrainerError(f"batched_client_gradients: labels must be integers, got {ys.dtype}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    tensors = {
        k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v, dtype=DTYPE)))
        .detach()
        .to(dev)
        for k, v in params.items()
    }
    trainable_names = {k for k, p in model.named_parameters() if p.requires_grad}
    train = {k: v for k, v in tensors.items() if k in trainable_names}
    fixed = {k: v for k, v in tensors.items() if k not in trainable_names}
    if not train:
        raise TrainerError("batched_client_gradients: params hold no trainable parameter")

    def loss_fn(p: dict[str, Any], x: Any, y: Any) -> Any:
        out = functional_call(model, {**p, **fixed}, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    x_t = torch.from_numpy(np.ascontiguousarray(xs, dtype=DTYPE)).to(dev)
    y_t = torch.from_numpy(np.ascontiguousarray(ys, dtype=np.int64)).to(dev)
    grads = vmap(grad(loss_fn), in_dims=(None, 0, 0), randomness="different")(train, x_t, y_t)
    c = ys.shape[0]
    cols = []
    for k, v in tensors.items():
        g = grads.get(k)
        cols.append(g.reshape(c, -1) if g is not None else torch.zeros(c, v.numel(), device=dev))
    out: F32Array = torch.cat(cols, dim=1).to("cpu", torch.float32).numpy().astype(DTYPE)
    return out

"""Trainers: one small protocol (get/set parameters, fit, gradient, evaluate) and adapters.

* :mod:`.numpy_models`: logistic regression and an MLP in NumPy (the dependency-free
  default);
* :mod:`.sklearn_models`: scikit-learn linear classifiers;
* :mod:`.torch_models`: any PyTorch ``nn.Module`` and a small MNIST CNN (optional extra;
  torch is imported only when used).

:func:`make_trainer` builds a trainer by model name, which is what the simulator and the
CLI use. Names: ``logreg``; ``mlp`` (one hidden layer of 128) or ``mlp:H`` / ``mlp:H1,H2``;
``sklearn`` (``SGDClassifier``, log-loss); ``sklearn_logreg`` (``LogisticRegression``);
``cnn`` (torch; the 1.2M-parameter CNN of Karimireddy et al.); ``cnn_small`` (torch; a
114k-parameter CNN for CPU sweeps). A ``package.module:function`` path names a plug-in called as
``function(input_shape, num_classes, seed=seed)`` that returns a Trainer or an
``nn.Module`` (wrapped in :class:`~.torch_models.TorchTrainer`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from cifer.compute.fl.trainers.base import (
    BatchGradientTrainer,
    FlatTrainer,
    Trainer,
    TrainerError,
    get_flat,
    local_update,
    minibatches,
    param_spec,
    sample_batch,
    set_flat,
)
from cifer.compute.fl.trainers.numpy_models import NumpyLogReg, NumpyMLP
from cifer.compute.fl.trainers.sklearn_models import SklearnTrainer

#: Built-in model names (``mlp:H[,H...]`` also accepted).
MODEL_NAMES = ("logreg", "mlp", "sklearn", "sklearn_logreg", "cnn", "cnn_small")
#: Hidden width of ``mlp`` (784 x 128 + 128 x 10 = 101,770 parameters on MNIST).
DEFAULT_HIDDEN = 128


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A picklable recipe for a trainer (sent to Ray workers instead of the model)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int = 0

    def build(self) -> Trainer:
        """A fresh trainer with the seeded initial parameters."""
        return make_trainer(self.name, self.input_shape, self.num_classes, seed=self.seed)


def _hidden(name: str) -> tuple[int, ...]:
    _, _, rest = name.partition(":")
    if not rest:
        return (DEFAULT_HIDDEN,)
    try:
        sizes = tuple(int(s) for s in rest.split(","))
    except ValueError as exc:
        raise TrainerError(f"model {name!r}: hidden sizes must be integers, e.g. mlp:256") from exc
    if not sizes or min(sizes) < 1:
        raise TrainerError(f"model {name!r}: hidden sizes must be >= 1")
    return sizes


def make_trainer(
    name: str, input_shape: Sequence[int], num_classes: int, *, seed: int = 0
) -> Trainer:
    """Build the trainer called ``name`` for samples of ``input_shape`` and
    ``num_classes`` classes, initialised from ``seed``. See the module docstring."""
    shape = tuple(int(s) for s in input_shape)
    if name == "logreg":
        return NumpyLogReg(shape, num_classes, seed=seed)
    if name == "mlp" or name.startswith("mlp:"):
        return NumpyMLP(shape, num_classes, _hidden(name), seed=seed)
    if name == "sklearn":
        return SklearnTrainer(shape, num_classes, seed=seed)
    if name == "sklearn_logreg":
        from sklearn.linear_model import LogisticRegression

        return SklearnTrainer(shape, num_classes, LogisticRegression(), seed=seed)
    if name in ("cnn", "cnn_small"):
        from cifer.compute.fl.trainers.torch_models import TorchTrainer, make_cnn, make_small_cnn

        build = make_cnn if name == "cnn" else make_small_cnn
        module = build(shape, num_classes, seed=seed)
        cnn_shape = (1, *shape) if len(shape) == 2 else shape
        return TorchTrainer(module, num_classes, input_shape=cnn_shape)
    if ":" in name:
        return _plugin(name, shape, num_classes, seed)
    raise TrainerError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}, mlp:H")


def _plugin(path: str, shape: tuple[int, ...], num_classes: int, seed: int) -> Trainer:
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TrainerError(f"cannot load model plug-in {path!r}: {exc}") from exc
    obj = fn(shape, num_classes, seed=seed)
    if isinstance(obj, Trainer):
        return obj
    from cifer.compute.fl.trainers.torch_models import TorchTrainer, require_torch

    torch = require_torch()
    if isinstance(obj, torch.nn.Module):
        return TorchTrainer(obj, num_classes)
    raise TrainerError(f"model plug-in {path!r} returned {type(obj).__name__}, not a Trainer")


__all__ = [
    "DEFAULT_HIDDEN",
    "MODEL_NAMES",
    "BatchGradientTrainer",
    "FlatTrainer",
    "ModelSpec",
    "NumpyLogReg",
    "NumpyMLP",
    "SklearnTrainer",
    "Trainer",
    "TrainerError",
    "get_flat",
    "local_update",
    "make_trainer",
    "minibatches",
    "param_spec",
    "sample_batch",
    "set_flat",
]

"""Trainers: NumPy models (learning, gradients, parameters), the scikit-learn adapter, the
model factory, and the optional torch adapter (skipped without torch)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np
import pytest

from cifer.compute.fl.data import ArrayDataset, load_dataset
from cifer.compute.fl.params import ParamSpec, content_hash, from_bytes, to_bytes
from cifer.compute.fl.trainers import (
    BatchGradientTrainer,
    FlatTrainer,
    ModelSpec,
    NumpyLogReg,
    NumpyMLP,
    SklearnTrainer,
    Trainer,
    TrainerError,
    get_flat,
    make_trainer,
    minibatches,
    param_spec,
    sample_batch,
    set_flat,
)


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("digits")


def train_epochs(trainer: Trainer, train: ArrayDataset, epochs: int, lr: float) -> None:
    rng = np.random.default_rng(0)
    trainer.fit(train.x, train.y, epochs=epochs, batch_size=32, lr=lr, rng=rng)


# ------------------------------------------------------------------------ NumPy models


@pytest.mark.parametrize(
    ("model", "epochs", "lr"),
    [(NumpyLogReg((1, 8, 8), 10, seed=0), 10, 0.5), (NumpyMLP((1, 8, 8), 10, (64,)), 5, 0.1)],
    ids=["logreg", "mlp"],
)
def test_numpy_models_learn_digits(
    digits: tuple[ArrayDataset, ArrayDataset], model: NumpyMLP, epochs: int, lr: float
) -> None:
    train, test = digits
    before = model.evaluate(test.x, test.y)
    train_epochs(model, train, epochs, lr)
    after = model.evaluate(test.x, test.y)
    assert before["accuracy"] < 0.3
    assert after["accuracy"] > 0.9, after
    assert after["loss"] < before["loss"]
    assert after["n"] == len(test)


def finite_difference(
    model: NumpyMLP, x: np.ndarray, y: np.ndarray, coords: np.ndarray
) -> np.ndarray:
    """Central differences of the (float32) mean loss at the given coordinates."""
    base = model.get_flat()
    out = []
    eps = 1e-3
    for i in coords:
        vals = []
        for sign in (1.0, -1.0):
            v = base.copy()
            v[i] += sign * eps
            model.set_flat(v)
            vals.append(model.loss_and_grad(x, y)[0])
        out.append((vals[0] - vals[1]) / (2 * eps))
    model.set_flat(base)
    return np.array(out)


@pytest.mark.parametrize(
    "model",
    [
        NumpyLogReg(64, 10, seed=1),
        NumpyMLP(64, 10, (16,), seed=1),
        NumpyMLP((1, 8, 8), 10, (12, 8), seed=2, l2=0.01),
    ],
    ids=["logreg", "mlp", "mlp2-l2"],
)
def test_numpy_gradient_matches_finite_differences(
    digits: tuple[ArrayDataset, ArrayDataset], model: NumpyMLP
) -> None:
    train, _ = digits
    x, y = train.x[:40].reshape(40, *model.input_shape), train.y[:40]
    # Move away from the initial point so every layer has a non-trivial gradient.
    model.fit(x, y, epochs=2, batch_size=8, lr=0.05, rng=np.random.default_rng(0))
    _, grad = model.loss_and_grad(x, y)
    rng = np.random.default_rng(3)
    coords = rng.choice(grad.size, size=40, replace=False)
    # Also check the largest-gradient coordinates (where a wrong factor would show most).
    coords = np.unique(np.concatenate([coords, np.argsort(-np.abs(grad))[:10]]))
    fd = finite_difference(model, x, y, coords)
    np.testing.assert_allclose(grad[coords], fd, rtol=2e-2, atol=2e-4)
    assert np.abs(grad[coords]).max() > 1e-2


def test_numpy_params_round_trip_and_layout() -> None:
    a = NumpyMLP((1, 8, 8), 10, (32,), seed=5)
    params = a.get_params()
    assert list(params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert params["fc1.weight"].shape == (64, 32) and params["fc2.bias"].shape == (10,)
    assert all(v.dtype == np.float32 for v in params.values())
    assert a.spec.size == 64 * 32 + 32 + 32 * 10 + 10
    # fresh copies: mutating them does not touch the model
    params["fc1.bias"][:] = 7.0
    assert not np.any(a.get_params()["fc1.bias"] == 7.0)
    b = NumpyMLP((1, 8, 8), 10, (32,), seed=6)
    assert content_hash(b.get_params()) != content_hash(a.get_params())
    b.set_params(from_bytes(to_bytes(a.get_params())))
    assert content_hash(b.get_params()) == content_hash(a.get_params())
    np.testing.assert_array_equal(b.get_flat(), a.get_flat())
    # flat path
    v = np.arange(a.spec.size, dtype=np.float32)
    a.set_flat(v)
    np.testing.assert_array_equal(a.get_flat(), v)
    np.testing.assert_array_equal(ParamSpec.of(a.get_params()).flatten(a.get_params()), v)
    view = a.get_flat(copy=False)
    assert not view.flags.writeable


def test_numpy_seeded_init_and_errors() -> None:
    a, b = NumpyMLP(10, 3, (4,), seed=1), NumpyMLP(10, 3, (4,), seed=1)
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    assert not np.array_equal(a.get_flat(), NumpyMLP(10, 3, (4,), seed=2).get_flat())
    assert np.all(a.get_params()["fc1.bias"] == 0)
    with pytest.raises(TrainerError, match="tensor names differ"):
        a.set_params({"w": np.zeros(3, np.float32)})
    bad = a.get_params()
    bad["fc1.weight"] = np.zeros((10, 5), np.float32)
    with pytest.raises(TrainerError, match="expected shape"):
        a.set_params(bad)
    with pytest.raises(TrainerError, match="expected shape"):
        a.set_flat(np.zeros(3, np.float32))
    with pytest.raises(TrainerError, match="float32"):
        a.set_flat(np.zeros(a.spec.size, np.float64))
    x = np.zeros((4, 10), np.float32)
    with pytest.raises(TrainerError, match=r"labels must lie in \[0, 3\)"):
        a.evaluate(x, np.array([0, 1, 2, 3]))
    with pytest.raises(TrainerError, match="sample shape"):
        a.evaluate(np.zeros((4, 9), np.float32), np.zeros(4, np.int64))
    with pytest.raises(TrainerError, match="NaN"):
        a.fit(
            np.full((4, 10), np.nan, np.float32),
            np.zeros(4, np.int64),
            epochs=1,
            batch_size=2,
            lr=0.1,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(TrainerError, match="batch_size"):
        a.fit(x, np.zeros(4, np.int64), epochs=1, batch_size=0, lr=0.1, rng=np.random.default_rng())


def test_client_gradients_equal_per_client_gradients(
    digits: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, _ = digits
    model = NumpyMLP((1, 8, 8), 10, (16,), seed=0, l2=1e-3)
    assert isinstance(model, BatchGradientTrainer) and isinstance(model, FlatTrainer)
    c, b = 5, 12
    xs = train.x[: c * b].reshape(c, b, 1, 8, 8)
    ys = train.y[: c * b].reshape(c, b)
    batched = model.client_gradients(xs, ys)
    assert batched.shape == (c, model.spec.size) and batched.dtype == np.float32
    for k in range(c):
        _, g = model.loss_and_grad(xs[k], ys[k])
        np.testing.assert_allclose(batched[k], g, rtol=1e-5, atol=1e-7)
    # gradient() draws its batch with sample_batch, so a copy of the Generator reproduces it
    rng = np.random.default_rng(9)
    idx = sample_batch(len(train), 32, np.random.default_rng(9))
    g = model.gradient(train.x, train.y, batch_size=32, rng=rng)
    _, expected = model.loss_and_grad(train.x[idx], train.y[idx])
    np.testing.assert_array_equal(g, expected)


def test_fit_steps_and_minibatches() -> None:
    rng = np.random.default_rng(0)
    batches = minibatches(10, 4, rng, epochs=2, steps=None)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(np.concatenate(batches[:3]).tolist()) == list(range(10))
    assert len(minibatches(10, 4, rng, epochs=1, steps=7)) == 7
    assert minibatches(0, 4, rng, epochs=3, steps=None) == []
    assert sample_batch(5, 8, rng).tolist() == [0, 1, 2, 3, 4]
    idx = sample_batch(100, 8, rng)
    assert len(set(idx.tolist())) == 8 and np.all(np.diff(idx) > 0)
    m = NumpyLogReg(3, 2)
    x = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    info = m.fit(x, y, epochs=1, batch_size=4, lr=0.1, rng=rng, steps=3)
    assert info["steps"] == 3.0 and np.isfinite(info["loss"])


# ------------------------------------------------------------------------ scikit-learn


def test_sklearn_sgd_adapter_learns_and_round_trips(
    digits: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, test = digits
    t = SklearnTrainer(train.input_shape, 10, seed=0)
    params = t.get_params()
    assert list(params) == ["coef", "intercept"]
    assert params["coef"].shape == (10, 64) and params["coef"].dtype == np.float32
    assert np.all(params["coef"] == 0)
    info = t.fit(train.x, train.y, epochs=2, batch_size=64, lr=0.01, rng=np.random.default_rng(0))
    assert info["steps"] > 0
    acc = t.evaluate(test.x, test.y)["accuracy"]
    assert acc > 0.9
    # round trip through a fresh adapter and the safe wire format
    u = SklearnTrainer(train.input_shape, 10, seed=1)
    u.set_params(from_bytes(to_bytes(t.get_params())))
    assert u.evaluate(test.x, test.y)["accuracy"] == pytest.approx(acc)
    # the gradient is flat, float32 and points uphill: a small step against it lowers the loss
    spec = param_spec(t)
    g = t.gradient(train.x, train.y, batch_size=len(train), rng=np.random.default_rng(0))
    assert g.shape == (spec.size,) and g.dtype == np.float32
    before = t.evaluate(train.x, train.y)["loss"]
    set_flat(t, spec, get_flat(t, spec) - 0.5 * g)
    assert t.evaluate(train.x, train.y)["loss"] < before


def test_sklearn_logistic_regression_adapter(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    from sklearn.linear_model import LogisticRegression

    train, test = digits
    t = SklearnTrainer(train.input_shape, 10, LogisticRegression(), seed=0)
    t.fit(train.x, train.y, epochs=10, batch_size=1, lr=1.0, rng=np.random.default_rng(0))
    assert t.evaluate(test.x, test.y)["accuracy"] > 0.9
    one_class = train.y == 0
    with pytest.raises(TrainerError, match="needs all 10 classes"):
        t.fit(
            train.x[one_class],
            train.y[one_class],
            epochs=1,
            batch_size=1,
            lr=1.0,
            rng=np.random.default_rng(0),
        )


def test_sklearn_binary_layout() -> None:
    train, test = load_dataset("breast_cancer")
    t = make_trainer("sklearn", train.input_shape, 2)
    assert t.get_params()["coef"].shape == (1, 30)
    t.fit(train.x, train.y, epochs=3, batch_size=32, lr=0.01, rng=np.random.default_rng(0))
    assert t.evaluate(test.x, test.y)["accuracy"] > 0.9


# ------------------------------------------------------------------------ factory


def test_make_trainer_names() -> None:
    assert isinstance(make_trainer("logreg", (1, 8, 8), 10), NumpyLogReg)
    mlp = make_trainer("mlp", (1, 28, 28), 10)
    assert isinstance(mlp, NumpyMLP) and param_spec(mlp).size == 101_770
    deep = make_trainer("mlp:32,16", (64,), 10)
    assert isinstance(deep, NumpyMLP) and deep.hidden == (32, 16)
    assert isinstance(make_trainer("sklearn", (64,), 10), SklearnTrainer)
    spec = ModelSpec("mlp:8", (64,), 10, seed=3)
    np.testing.assert_array_equal(
        get_flat(spec.build(), param_spec(spec.build())),
        get_flat(spec.build(), param_spec(spec.build())),
    )
    with pytest.raises(TrainerError, match="unknown model 'resnet'"):
        make_trainer("resnet", (64,), 10)
    with pytest.raises(TrainerError, match="hidden sizes must be integers"):
        make_trainer("mlp:wide", (64,), 10)
    with pytest.raises(TrainerError, match="cannot load model plug-in"):
        make_trainer("no_such_module_xyz:build", (64,), 10)


def test_missing_torch_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    from cifer.compute.fl.trainers import torch_models

    assert not torch_models.torch_available()
    with pytest.raises(TrainerError, match=r"pip install torch==2\.13\.0"):
        make_trainer("cnn", (1, 28, 28), 10)
    with pytest.raises(TrainerError, match="'torch' extra"):
        torch_models.batched_client_gradients(None, {}, np.zeros((1, 1)), np.zeros((1, 1)))


# ------------------------------------------------------------------------ torch (optional)


def _torch() -> Any:
    """The torch module, or skip the test (torch is the optional 'torch' extra)."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        pytest.skip("torch not installed (optional 'torch' extra)")


def test_torch_cnn_params_round_trip_and_learning(
    digits: tuple[ArrayDataset, ArrayDataset],
) -> None:
    _torch()
    from cifer.compute.fl.trainers.torch_models import TorchTrainer, make_cnn

    train, test = digits
    t = make_trainer("cnn", train.input_shape, 10, seed=0)
    assert isinstance(t, TorchTrainer)
    names = list(t.get_params())
    assert names == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip
    spec = param_spec(t)
    u = make_trainer("cnn", train.input_shape, 10, seed=1)
    assert not np.array_equal(get_flat(u, spec), get_flat(t, spec))
    u.set_params(from_bytes(to_bytes(t.get_params())))
    np.testing.assert_array_equal(get_flat(u, spec), get_flat(t, spec))
    v = get_flat(t, spec) * np.float32(0.5)
    set_flat(u, spec, v)
    np.testing.assert_array_equal(spec.flatten(u.get_params()), v)
    # the MNIST-sized model has the paper's 1.2 M parameters
    assert sum(p.numel() for p in make_cnn((1, 28, 28), 10).parameters()) == 1_199_882
    x, y = train.x[:256], train.y[:256]
    before = t.evaluate(x, y)
    t.fit(x, y, epochs=1, batch_size=32, lr=0.1, rng=np.random.default_rng(0), steps=6)
    assert t.evaluate(x, y)["loss"] < before["loss"]
    assert t.evaluate(test.x, test.y)["n"] == len(test)


def test_cnn_small_and_input_standardisation(digits: tuple[ArrayDataset, ArrayDataset]) -> None:
    torch = _torch()
    from cifer.compute.fl.trainers.torch_models import (
        MNIST_MEAN_STD,
        make_cnn,
        make_small_cnn,
        standardise_layer,
    )

    small = make_small_cnn((1, 28, 28), 10)
    # the seed alone fixes the initial weights, whatever the global torch RNG did before
    torch.rand(3)
    again = make_small_cnn((1, 28, 28), 10)
    assert all(
        torch.equal(a, b) for a, b in zip(small.parameters(), again.parameters(), strict=True)
    )
    other = make_small_cnn((1, 28, 28), 10, seed=1)
    assert not torch.equal(small.conv1.weight, other.conv1.weight)
    assert sum(p.numel() for p in small.parameters()) == 114_314
    assert [n for n, _ in small.named_parameters()][:2] == ["conv1.weight", "conv1.bias"]
    # the standardising layer has no parameters and computes (x - mean) / std
    layer = standardise_layer(*MNIST_MEAN_STD)
    assert not list(layer.parameters())
    x = torch.full((1, 1, 28, 28), 0.5)
    expect = (0.5 - MNIST_MEAN_STD[0]) / MNIST_MEAN_STD[1]
    assert torch.allclose(layer(x), torch.full_like(x, expect))
    with pytest.raises(TrainerError, match="std > 0"):
        standardise_layer(0.0, 0.0)
    # with it the CNN sees standardised pixels: its output differs from the raw model's
    raw = make_cnn((1, 28, 28), 10, standardise=None, dropout=False).eval()
    std = make_cnn((1, 28, 28), 10, dropout=False).eval()
    assert not torch.allclose(raw(x), std(x))
    assert torch.allclose(std(x), raw(torch.full_like(x, expect)), atol=1e-6)
    train, _ = digits
    t = make_trainer("cnn_small", train.input_shape, 10, seed=0)
    xb, yb = train.x[:128], train.y[:128]
    before = t.evaluate(xb, yb)["loss"]
    t.fit(xb, yb, epochs=1, batch_size=32, lr=0.05, rng=np.random.default_rng(0), steps=8)
    assert t.evaluate(xb, yb)["loss"] < before


def test_torch_batched_client_gradients_match_autograd(
    digits: tuple[ArrayDataset, ArrayDataset],
) -> None:
    torch = _torch()
    from cifer.compute.fl.trainers.torch_models import (
        TorchTrainer,
        batched_client_gradients,
        make_cnn,
    )

    train, _ = digits
    model = make_cnn((1, 8, 8), 10, dropout=False, seed=0)
    t = TorchTrainer(model, 10, input_shape=(1, 8, 8))
    c, b = 4, 16
    xs = train.x[: c * b].reshape(c, b, 1, 8, 8)
    ys = train.y[: c * b].reshape(c, b)
    out = batched_client_gradients(model, t.get_params(), xs, ys)
    assert out.shape == (c, param_spec(t).size) and out.dtype == np.float32
    for k in range(c):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(xs[k])), torch.from_numpy(ys[k])
        )
        loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
        np.testing.assert_allclose(out[k], ref, rtol=1e-4, atol=1e-6)
    # the trainer's method agrees, and gradient() is one of its rows for the same batch
    np.testing.assert_allclose(t.client_gradients(xs, ys), out, rtol=1e-5, atol=1e-7)
    rng = np.random.default_rng(0)
    g = t.gradient(xs[0].reshape(b, 64), ys[0], batch_size=b, rng=rng)
    np.testing.assert_allclose(g, out[0], rtol=1e-4, atol=1e-6)

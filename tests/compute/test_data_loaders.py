"""Dataset loaders: bundled datasets, the official IDX files when available, checksum and
download handling, and the safe CIFAR-10 unpickler (on synthetic files written here)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cifer.compute.fl.data import (
    ArrayDataset,
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    load_dataset,
    read_cifar_batch,
    read_idx,
)
from cifer.compute.fl.data import datasets as ds

# --------------------------------------------------------------------------------------
# scikit-learn bundled datasets


def test_digits() -> None:
    train, test = load_dataset("digits")
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 0.2) < 0.01
    for d in (train, test):
        assert d.x.dtype == np.float32 and d.y.dtype == np.int64
        assert d.x.shape[1:] == d.input_shape == (1, 8, 8)
        assert d.num_features == 64 and d.flat.shape == (len(d), 64)
        assert d.num_classes == 10 and d.name == "digits"
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert set(np.unique(d.y).tolist()) == set(range(10))
    # Stratified: every class is ~20% test.
    share = test.class_counts() / (train.class_counts() + test.class_counts())
    assert np.all(np.abs(share - 0.2) < 0.02)


def test_breast_cancer_standardised_on_train() -> None:
    train, test = load_dataset("breast_cancer")
    assert len(train) + len(test) == 569
    assert train.input_shape == (30,) and train.num_classes == 2
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)
    # The test split is transformed with the train statistics, so it is not exactly 0/1.
    assert np.abs(test.x.mean(axis=0)).max() > 1e-3


def test_bundled_deterministic_and_disjoint() -> None:
    a_train, a_test = load_dataset("digits")
    b_train, b_test = load_dataset("digits")
    np.testing.assert_array_equal(a_train.x, b_train.x)
    np.testing.assert_array_equal(a_test.y, b_test.y)
    rows = {r.tobytes() for r in a_train.flat}
    # digits has a few duplicate images; nearly no test row may appear in train.
    assert sum(r.tobytes() in rows for r in a_test.flat) <= 3


def test_subset_and_names() -> None:
    train, test = load_dataset("digits", subset=100)
    assert (len(train), len(test)) == (100, 100)
    again, _ = load_dataset("digits", subset=100)
    np.testing.assert_array_equal(train.x, again.x)
    train, test = load_dataset("Breast-Cancer", subset=(50, 1000))
    assert (len(train), len(test)) == (50, 113)
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'; valid: digits"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="subset"):
        load_dataset("digits", subset=0)


def test_array_dataset_validation() -> None:
    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 2, 1], np.int64)
    d = ArrayDataset(x, y, 3, "t")
    sub = d.subset(np.array([3, 0]))
    assert len(sub) == 2 and sub.y.tolist() == [1, 0]
    assert d.class_counts().tolist() == [1, 2, 1]
    with pytest.raises(DatasetError, match="float32"):
        ArrayDataset(x.astype(np.float64), y, 3, "t")
    with pytest.raises(DatasetError, match="int64"):
        ArrayDataset(x, y.astype(np.int32), 3, "t")
    with pytest.raises(DatasetError, match="4 inputs but 3 labels"):
        ArrayDataset(x, y[:3], 3, "t")
    with pytest.raises(DatasetError, match=r"labels must lie in \[0, 2\)"):
        ArrayDataset(x, y, 2, "t")


# --------------------------------------------------------------------------------------
# Official MNIST / Fashion-MNIST files (CI points CIFER_DATA_DIR at shared/data)

_ENV_DIR = os.environ.get("CIFER_DATA_DIR")
needs_data = pytest.mark.skipif(
    not _ENV_DIR or not (Path(_ENV_DIR) / "mnist").is_dir(),
    reason="CIFER_DATA_DIR is not set or has no mnist/ (point it at shared/data)",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_official_idx(name: str) -> None:
    if name == "fashion_mnist" and not (Path(str(_ENV_DIR)) / "fashion-mnist").is_dir():
        pytest.skip("CIFER_DATA_DIR has no fashion-mnist/")
    start = time.perf_counter()
    train, test = load_dataset(name)
    elapsed = time.perf_counter() - start
    assert elapsed < 10  # ~0.6 s on a laptop core; generous for slow CI
    assert (len(train), len(test)) == (60000, 10000)
    for d in (train, test):
        assert d.input_shape == (1, 28, 28) and d.num_classes == 10
        assert d.x.dtype == np.float32 and d.y.dtype == np.int64
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert int(d.y.min()) == 0 and int(d.y.max()) == 9
    if name == "mnist":
        assert train.class_counts().tolist() == MNIST_TRAIN_COUNTS
        assert test.class_counts().tolist() == MNIST_TEST_COUNTS
    else:
        assert train.class_counts().tolist() == [6000] * 10
        assert test.class_counts().tolist() == [1000] * 10
    sub_train, sub_test = load_dataset(name.replace("_", "-"), subset=(1000, 200))
    assert (len(sub_train), len(sub_test)) == (1000, 200)


def test_missing_files_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFER_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert str(tmp_path / "mnist") in msg and "train-images-idx3-ubyte.gz" in msg
    assert "CIFER_DATA_DIR" in msg and "download=True" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# IDX parsing and checksums on synthetic files


def _idx_bytes(arr: npt.NDArray[np.uint8]) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.tobytes()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _fake_mnist(n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.RandomState(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        out[f"{prefix}-images-idx3-ubyte.gz"] = _gz(_idx_bytes(images))
        out[f"{prefix}-labels-idx1-ubyte.gz"] = _gz(_idx_bytes(labels))
    return out


def _patch_mnist_md5(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    remotes = tuple(
        ds.RemoteFile(name, _md5(data), (f"https://a.invalid/{name}", f"https://b.invalid/{name}"))
        for name, data in files.items()
    )
    monkeypatch.setattr(ds, "IDX_FILES", {**ds.IDX_FILES, "mnist": ("mnist", remotes)})


def test_read_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "a.gz", _gz(_idx_bytes(arr)))), arr)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "a", _idx_bytes(arr))), arr)


def test_corrupted_idx(tmp_path: Path) -> None:
    arr = np.zeros((5, 28, 28), np.uint8)
    good = _idx_bytes(arr)
    bad_magic = b"\x00\x00\x09\x03" + good[4:]  # type 0x09 (signed bytes), not 0x08
    with pytest.raises(DatasetError, match=r"bad IDX magic number 0x00000903"):
        read_idx(_write(tmp_path / "m.gz", _gz(bad_magic)))
    with pytest.raises(DatasetError, match=r"bad IDX magic number 0x12345678"):
        read_idx(_write(tmp_path / "m2.gz", _gz(b"\x12\x34\x56\x78" + good[4:])))
    with pytest.raises(DatasetError, match=r"payload truncated: 3900 bytes for shape \(5, 28"):
        read_idx(_write(tmp_path / "t.gz", _gz(good[:-20])))
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_idx(_write(tmp_path / "x.gz", _gz(good + b"\x00")))
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(_write(tmp_path / "h.gz", _gz(good[:10])))
    with pytest.raises(DatasetError, match=r"has 3 dimensions.*expected 1"):
        read_idx(_write(tmp_path / "d.gz", _gz(good)), ndim=1)
    with pytest.raises(DatasetError, match="not a valid gzip file"):
        read_idx(_write(tmp_path / "g.gz", b"not gzip at all"))
    with pytest.raises(DatasetError, match="not a valid gzip file"):
        read_idx(_write(tmp_path / "cut.gz", _gz(good)[:-30]))  # truncated stream


def test_wrong_md5_refused(tmp_path: Path) -> None:
    for name, data in _fake_mnist().items():  # right names, not the official bytes
        _write(tmp_path / "mnist" / name, data)
    with pytest.raises(
        ChecksumError,
        match=r"train-images-idx3-ubyte.gz: MD5 [0-9a-f]{32} "
        r"differs from the published f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(ChecksumError):  # download=True does not overwrite a wrong file
        load_dataset("mnist", data_dir=tmp_path, download=True)


def test_md5_verification_is_memoised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "f", b"hello")
    calls = []
    real = ds.file_md5

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(ds, "file_md5", counting)
    ds.verify_md5(path, _md5(b"hello"))
    ds.verify_md5(path, _md5(b"hello"))
    assert len(calls) == 1
    path.write_bytes(b"hello, changed")  # new size: hashed again, and refused
    with pytest.raises(ChecksumError):
        ds.verify_md5(path, _md5(b"hello"))
    assert len(calls) == 2


def test_full_idx_pipeline_on_synthetic_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _fake_mnist()
    for name, data in files.items():
        _write(tmp_path / "mnist" / name, data)
    _patch_mnist_md5(monkeypatch, files)
    train, test = load_dataset("mnist", data_dir=tmp_path)
    assert (len(train), len(test)) == (30, 10) and train.input_shape == (1, 28, 28)
    assert float(train.x[0, 0, 0, 0]) == 0.0 and float(train.x[0, 0, 0, 1]) == 1.0
    raw = read_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(train.x[:, 0] * 255, raw, atol=1e-4)
    # Labels out of range are caught after the checksum.
    bad = dict(files)
    bad["t10k-labels-idx1-ubyte.gz"] = _gz(_idx_bytes(np.full(10, 10, np.uint8)))
    _write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", bad["t10k-labels-idx1-ubyte.gz"])
    _patch_mnist_md5(monkeypatch, bad)
    with pytest.raises(DatasetError, match=r"label 10 outside \[0, 9\]"):
        load_dataset("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# Downloads, with the network replaced by a local function


def test_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _fake_mnist()
    _patch_mnist_md5(monkeypatch, files)
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        if url.startswith("https://a.invalid"):
            raise OSError("first mirror down")
        dest.write_bytes(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(ds, "_fetch", fake_fetch)
    train, test = load_dataset("mnist", data_dir=tmp_path, download=True)
    assert (len(train), len(test)) == (30, 10)
    assert len(fetched) == 8  # each file: first mirror failed, second served it
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(files)
    load_dataset("mnist", data_dir=tmp_path, download=True)
    assert len(fetched) == 8  # present and verified: nothing fetched again


def test_download_wrong_md5_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_mnist_md5(monkeypatch, _fake_mnist())

    def evil_fetch(url: str, dest: Path) -> None:
        dest.write_bytes(b"tampered")

    monkeypatch.setattr(ds, "_fetch", evil_fetch)
    with pytest.raises(ChecksumError, match=r"downloaded https://a.invalid/.*deleted"):
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_all_mirrors_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_mnist_md5(monkeypatch, _fake_mnist())

    def down(url: str, dest: Path) -> None:
        raise OSError("no network")

    monkeypatch.setattr(ds, "_fetch", down)
    with pytest.raises(DatasetError, match=r"could not download .*a.invalid.*b.invalid"):
        load_dataset("mnist", data_dir=tmp_path, download=True)


def test_real_download_constants() -> None:
    for _subdir, remotes in ds.IDX_FILES.values():
        for r in remotes:
            assert len(r.md5) == 32 and all(u.endswith(r.name) for u in r.urls)
    assert ds.IDX_FILES["mnist"][1][0].urls[0].startswith("https://ossci-datasets.s3")
    assert "zalandoresearch/fashion-mnist" in ds.IDX_FILES["fashion_mnist"][1][0].urls[0]
    assert ds.CIFAR10_ARCHIVE.urls == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)


# --------------------------------------------------------------------------------------
# CIFAR-10: synthetic batches in the official format, and the restricted unpickler


_PurePickler: Any = getattr(pickle, "_Pickler")  # noqa: B009 (the pure-Python pickler)


class _Py2Pickler(_PurePickler):  # type: ignore[misc]
    """Writes bytes as Python 2 ``str`` opcodes, as the official (Python 2) batches do."""

    dispatch = _PurePickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _batch(n: int, seed: int) -> tuple[npt.NDArray[np.uint8], list[int]]:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(n, 3072)).astype(np.uint8), [
        int(v) for v in rng.randint(0, 10, n)
    ]


def _py2_batch_bytes(data: npt.NDArray[np.uint8], labels: list[int]) -> bytes:
    buf = io.BytesIO()
    obj = {
        b"batch_label": b"synthetic",
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_cifar_batch_round_trip(tmp_path: Path) -> None:
    data, labels = _batch(7, 0)
    p2 = _write(tmp_path / "py2", _py2_batch_bytes(data, labels))
    assert b"numpy" in p2.read_bytes() and b"_codecs" not in p2.read_bytes()
    p3 = _write(tmp_path / "py3", pickle.dumps({"data": data, "labels": labels}, protocol=3))
    for path in (p2, p3):
        x, y = read_cifar_batch(path)
        assert x.shape == (7, 3, 32, 32) and x.dtype == np.uint8
        np.testing.assert_array_equal(x.reshape(7, -1), data)
        assert y.dtype == np.int64 and y.tolist() == labels
    # numpy 1.x spells the reconstructor numpy.core.multiarray: accepted too.
    legacy = p3.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    x, _ = read_cifar_batch(_write(tmp_path / "legacy", legacy))
    np.testing.assert_array_equal(x.reshape(7, -1), data)


def test_cifar_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    md5s, batches = {}, {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[name] = _batch(4, i)
        md5s[name] = _md5(_write(directory / name, _py2_batch_bytes(*batches[name])).read_bytes())
    monkeypatch.setattr(ds, "CIFAR10_MD5", md5s)
    train, test = load_dataset("cifar10", data_dir=tmp_path)
    assert (len(train), len(test)) == (20, 4) and train.input_shape == (3, 32, 32)
    assert (
        train.x.dtype == np.float32 and 0.0 <= float(train.x.min()) <= float(train.x.max()) <= 1.0
    )
    # Channel planes: x[i, c, h, w] is byte c*1024 + h*32 + w of row i.
    data = batches["data_batch_2"][0]
    assert train.x[4, 2, 5, 7] == np.float32(data[0, 2 * 1024 + 5 * 32 + 7]) / np.float32(255)
    assert train.y[4:8].tolist() == batches["data_batch_2"][1]
    np.testing.assert_array_equal(test.y, batches["test_batch"][1])
    # Through the download path: an archive in the official layout, fetched locally.
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:gz") as tar:
        for name in md5s:
            payload = (directory / name).read_bytes()
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = tar_buf.getvalue()
    monkeypatch.setattr(ds, "CIFAR10_ARCHIVE", ds.RemoteFile("c.tar.gz", _md5(archive), ("u",)))
    monkeypatch.setattr(ds, "_fetch", lambda url, dest: dest.write_bytes(archive))
    fresh = tmp_path / "fresh"
    train2, _ = load_dataset("cifar10", data_dir=fresh, download=True)
    np.testing.assert_array_equal(train2.x, train.x)
    assert sorted(p.name for p in fresh.iterdir()) == ["cifar-10-batches-py"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "system": pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2),
        "eval": b"cbuiltins\neval\n(Vopen(%r,'w')\ntR." % str(marker).encode(),
        "np_other": b"cnumpy\nload\n(Vx\ntR.",
    }
    for what, payload in payloads.items():
        path = _write(tmp_path / what, payload)
        with pytest.raises(DatasetError, match=r"refus"):
            read_cifar_batch(path)
    assert not marker.exists()
    # The same through load_dataset, even with a matching checksum.
    directory = tmp_path / "root" / "cifar-10-batches-py"
    md5s = {}
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        md5s[name] = _md5(_write(directory / name, payloads["system"]).read_bytes())
    monkeypatch.setattr(ds, "CIFAR10_MD5", md5s)
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|nt)\.system"):
        load_dataset("cifar10", data_dir=tmp_path / "root")
    assert not marker.exists()


def test_cifar_malformed_batches(tmp_path: Path) -> None:
    data, labels = _batch(3, 0)
    cases = {
        "list": ([1, 2], "is a list, expected a dict"),
        "nodata": ({"labels": labels}, "'data' must be a uint8 array"),
        "f32": ({"data": data.astype(np.float32), "labels": labels}, "uint8"),
        "width": ({"data": data[:, :100], "labels": labels}, "100 values, expected 3072"),
        "count": ({"data": data, "labels": labels[:2]}, "list of 3 integers"),
        "range": ({"data": data, "labels": [0, 1, 10]}, r"\[0, 9\]"),
    }
    for what, (obj, match) in cases.items():
        path = _write(tmp_path / what, pickle.dumps(obj, protocol=3))
        with pytest.raises(DatasetError, match=match):
            read_cifar_batch(path)
    with pytest.raises(DatasetError, match="malformed"):
        read_cifar_batch(_write(tmp_path / "cut", pickle.dumps({"data": data}, protocol=3)[:-50]))

"""Dataset loaders: in-memory numpy arrays for training and evaluation.

Every loader returns ``(train, test)`` as :class:`ArrayDataset` with float32 inputs and
int64 labels. Decisions, fixed here so every node sees the same data:

* Images are channels-first, ``(C, H, W)``, scaled to ``[0, 1]`` with no per-channel
  normalisation (a model that wants it can add it): ``digits`` is ``(1, 8, 8)`` (values
  0..16 divided by 16), ``mnist`` and ``fashion_mnist`` are ``(1, 28, 28)``, ``cifar10`` is
  ``(3, 32, 32)``. Models that need vectors use :attr:`ArrayDataset.flat`.
* ``breast_cancer`` is tabular, ``(30,)``, standardised with the *train* split's mean and
  standard deviation only (the test split must not leak into preprocessing).
* The scikit-learn datasets have no official split: a stratified 80/20 split with the fixed
  seed :data:`SPLIT_SEED`. MNIST, Fashion-MNIST and CIFAR-10 use their official splits.
* Randomness uses ``np.random.RandomState``, whose stream numpy has frozen (NEP 19), so two
  nodes with different numpy versions still agree on the split.

Files live under a data root: the ``data_dir`` argument, else ``$CIFER_DATA_DIR``, else
:func:`default_data_dir`, with the layout ``mnist/``, ``fashion-mnist/`` (the official
``*-idx?-ubyte.gz`` files) and ``cifar-10-batches-py/`` (the official "python version"
batches). Every file is checked against the published MD5 before use (memoised per path,
size and mtime); ``download=True`` fetches missing files from the official sources and
checks them the same way.

CIFAR-10 batches are pickles. They are read by :class:`RestrictedUnpickler`, which resolves
only the three numpy names an array needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]
U8Array = npt.NDArray[np.uint8]

#: Seed of the stratified train/test split of the scikit-learn datasets.
SPLIT_SEED = 0
#: Fraction of a scikit-learn dataset held out for testing.
TEST_FRACTION = 0.2
#: Environment variable naming the data root.
DATA_DIR_ENV = "CIFER_DATA_DIR"

_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
# A CIFAR batch is ~31 MB; anything far larger is not one and is refused before unpickling.
_MAX_PICKLE_BYTES = 256 << 20


class DatasetError(ValueError):
    """A dataset name is unknown, or a data file is malformed."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a dataset are not in the data directory."""


class ChecksumError(DatasetError):
    """A data file does not have its published MD5, so it is not the official file."""


@dataclass(frozen=True, slots=True, eq=False)
class ArrayDataset:
    """Inputs ``x`` (float32, ``[n, *input_shape]``) and labels ``y`` (int64 in
    ``[0, num_classes)``), held in memory."""

    x: F32Array
    y: I64Array
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim < 2:
            raise DatasetError(f"{self.name}: x must be a float32 array [n, ...]")
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DatasetError(f"{self.name}: y must be a 1-D int64 array")
        if self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels"
            )
        if self.num_classes < 1:
            raise DatasetError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if self.y.size and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise DatasetError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got "
                f"[{int(self.y.min())}, {int(self.y.max())}]"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)`` or ``(30,)``."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def num_features(self) -> int:
        """Length of one flattened input."""
        return int(np.prod(self.input_shape))

    @property
    def flat(self) -> F32Array:
        """``x`` as ``[n, num_features]`` (a view, no copy)."""
        return self.x.reshape(len(self), -1)

    def subset(self, indices: npt.ArrayLike) -> ArrayDataset:
        """The samples at ``indices`` (copies), e.g. one client's partition."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise DatasetError(f"{self.name}: indices must be a 1-D integer array")
        return ArrayDataset(self.x[idx], self.y[idx], self.num_classes, self.name)

    def class_counts(self) -> I64Array:
        """Number of samples of each class, length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes).astype(np.int64)


# --------------------------------------------------------------------------------------
# Files, checksums and downloads


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One official file: its name, its published MD5 and where to download it."""

    name: str
    md5: str
    urls: tuple[str, ...]


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "https://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Published checksums (identical to each distribution's MD5SUMS and torchvision's tables).
_MNIST_MD5 = (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c",
)
_FASHION_MD5 = (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
)

#: Official files per dataset, in the sub-directory of the data root named by the key.
IDX_FILES: dict[str, tuple[str, tuple[RemoteFile, ...]]] = {
    "mnist": (
        "mnist",
        tuple(
            RemoteFile(n, m, tuple(u + n for u in _MNIST_MIRRORS))
            for n, m in zip(_IDX_NAMES, _MNIST_MD5, strict=True)
        ),
    ),
    "fashion_mnist": (
        "fashion-mnist",
        tuple(
            RemoteFile(n, m, tuple(u + n for u in _FASHION_MIRRORS))
            for n, m in zip(_IDX_NAMES, _FASHION_MD5, strict=True)
        ),
    ),
}

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)
#: MD5 of each CIFAR-10 batch inside the official archive.
CIFAR10_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = ("test_batch",)


def default_data_dir() -> Path:
    """Where downloads go when neither ``data_dir`` nor ``$CIFER_DATA_DIR`` is set."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cifer" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$CIFER_DATA_DIR``, else :func:`default_data_dir`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else default_data_dir()


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# (resolved path, size, mtime_ns) -> MD5 already verified; a rewritten file changes the key.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_md5(path: Path, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has MD5 ``expected``.

    The result is memoised in memory per path, size and mtime, so loading a dataset twice
    in one process hashes its files once.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == expected:
        return
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: MD5 {actual} differs from the published {expected}; the file is "
            "corrupt or not the official one. Delete it and download it again "
            "(download=True)."
        )
    _VERIFIED[key] = expected


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (overwritten). Tests replace this function."""
    request = urllib.request.Request(url, headers={"User-Agent": "cifer-data/1"})
    with (
        urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        dest.open("wb") as out,
    ):
        shutil.copyfileobj(response, out, _CHUNK)


def download_file(remote: RemoteFile, directory: Path) -> Path:
    """Fetch ``remote`` into ``directory`` and return its path, checked against its MD5.

    Mirrors are tried in order on network errors. The bytes go to a ``.part`` file that is
    renamed only after the MD5 matches; on a mismatch it is deleted and
    :class:`ChecksumError` raised (a wrong file from an official source is not retried).
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / remote.name
    part = directory / (remote.name + ".part")
    errors: list[str] = []
    for url in remote.urls:
        try:
            _fetch(url, part)
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
            continue
        actual = file_md5(part)
        if actual != remote.md5:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"downloaded {url}: MD5 {actual} differs from the published {remote.md5}; "
                "the file was deleted"
            )
        part.replace(final)
        st = final.stat()
        _VERIFIED[(str(final.resolve()), st.st_size, st.st_mtime_ns)] = remote.md5
        return final
    raise DatasetError(f"could not download {remote.name}: " + "; ".join(errors))


def _missing_error(dataset: str, directory: Path, names: Sequence[str]) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{dataset}: files not found in {directory}: expected {', '.join(names)}. Set "
        f"{DATA_DIR_ENV} to a directory holding them (layout: mnist/, fashion-mnist/, "
        f"{CIFAR10_DIR}/), pass data_dir=..., or pass download=True to fetch the official "
        "files."
    )


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> U8Array:
    """Parse an IDX file (gzip-compressed if its name ends in ``.gz``) of unsigned bytes.

    Validates the magic number (two zero bytes, type 0x08, dimension count), the header
    length and that the payload holds exactly the product of the dimensions. The result is a
    read-only view of the decompressed bytes.
    """
    p = Path(path)
    data = p.read_bytes()
    if p.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DatasetError(f"{p}: not a valid gzip file ({exc})") from exc
    if len(data) < 4:
        raise DatasetError(f"{p}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    dims_n = data[3]
    if data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or not 1 <= dims_n <= 4:
        raise DatasetError(
            f"{p}: bad IDX magic number 0x{magic:08x} (expected 0x000008NN for unsigned bytes "
            "with NN dimensions, e.g. 0x00000803 = 2051 for images, 0x00000801 = 2049 for "
            "labels)"
        )
    if ndim is not None and dims_n != ndim:
        raise DatasetError(
            f"{p}: IDX file has {dims_n} dimensions (magic {magic}), expected {ndim} "
            f"(magic {(_IDX_UBYTE << 8) | ndim})"
        )
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DatasetError(f"{p}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_n))
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DatasetError(
            f"{p}: IDX payload {what}: {payload} bytes for shape {shape} ({expected} needed)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx_dataset(
    key: str, root: Path, download: bool
) -> tuple[tuple[U8Array, U8Array], tuple[U8Array, U8Array]]:
    subdir, files = IDX_FILES[key]
    directory = root / subdir
    paths = _ensure_files(key, directory, files, download)
    arrays = [read_idx(p, ndim=3 if "images" in p.name else 1) for p in paths]
    out: list[tuple[U8Array, U8Array]] = []
    for (images, labels), (img_path, lab_path) in zip(
        (arrays[0:2], arrays[2:4]), (paths[0:2], paths[2:4]), strict=True
    ):
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{img_path}: images are {images.shape[1:]}, expected (28, 28)")
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images")
        if labels.size and int(labels.max()) > 9:
            raise DatasetError(f"{lab_path}: label {int(labels.max())} outside [0, 9]")
        out.append((images, labels))
    return out[0], out[1]


def _ensure_files(
    dataset: str, directory: Path, files: Sequence[RemoteFile], download: bool
) -> list[Path]:
    paths = []
    missing = [f for f in files if not (directory / f.name).is_file()]
    if missing and not download:
        raise _missing_error(dataset, directory, [f.name for f in files])
    for f in missing:
        download_file(f, directory)
    for f in files:
        path = directory / f.name
        verify_md5(path, f.md5)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------
# CIFAR-10 (pickled batches)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves exactly the globals a pickled numpy array needs.

    A pickle runs code by naming a callable (``os.system``, ``builtins.eval``...) that the
    unpickler imports and calls; here every name other than ``numpy.ndarray``,
    ``numpy.dtype`` and ``numpy.core.multiarray._reconstruct`` (also spelled
    ``numpy._core...`` by numpy 2) is refused, so loading a tampered file can only build
    dicts, lists, strings, numbers and plain arrays.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Callable[[], Any]]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            )
        return resolve()


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 strings as latin-1,
    which is how numpy arrays pickled by Python 2 round-trip)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[U8Array, I64Array]:
    """Images ``uint8 [n, 3, 32, 32]`` and labels ``int64 [n]`` of one CIFAR-10 batch file,
    unpickled safely and validated (keys, dtype, shape, label range)."""
    p = Path(path)
    size = p.stat().st_size
    if size > _MAX_PICKLE_BYTES:
        raise DatasetError(f"{p}: {size} bytes, too large for a CIFAR-10 batch")
    try:
        obj = restricted_loads(p.read_bytes())
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{p}: refused or malformed CIFAR-10 batch: {exc}") from exc
    except (EOFError, ValueError, TypeError, KeyError, IndexError, MemoryError) as exc:
        raise DatasetError(f"{p}: malformed CIFAR-10 batch: {exc!r}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{p}: CIFAR-10 batch is a {type(obj).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{p}: 'data' must be a uint8 array [n, 3072]")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{p}: 'data' rows have {data.shape[1]} values, expected 3072")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        raise DatasetError(f"{p}: 'labels' must be a list of {data.shape[0]} integers")
    if not all(isinstance(v, int | np.integer) for v in labels):
        raise DatasetError(f"{p}: 'labels' must be integers")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DatasetError(f"{p}: labels must lie in [0, 9]")
    # Rows are the red, green and blue 32x32 planes in row-major order: already C, H, W.
    return data.reshape(-1, 3, 32, 32), y


def _download_cifar10(root: Path) -> None:
    archive = download_file(CIFAR10_ARCHIVE, root)
    directory = root / CIFAR10_DIR
    directory.mkdir(parents=True, exist_ok=True)
    # Extract only the known members, by name, to paths we choose (no traversal risk).
    with tarfile.open(archive, "r:gz") as tar:
        for name, md5 in CIFAR10_MD5.items():
            try:
                member = tar.extractfile(f"{CIFAR10_DIR}/{name}")
            except KeyError:
                member = None
            if member is None:
                raise DatasetError(
                    f"{archive}: member {CIFAR10_DIR}/{name} is missing or not a file"
                )
            part = directory / (name + ".part")
            with member, part.open("wb") as out:
                shutil.copyfileobj(member, out, _CHUNK)
            if file_md5(part) != md5:
                part.unlink(missing_ok=True)
                raise ChecksumError(f"{archive}: member {name} does not have MD5 {md5}")
            part.replace(directory / name)
    archive.unlink()


def _load_cifar10(
    root: Path, download: bool
) -> tuple[tuple[U8Array, I64Array], tuple[U8Array, I64Array]]:
    directory = root / CIFAR10_DIR
    names = [*_CIFAR10_TRAIN, *_CIFAR10_TEST]
    if not all((directory / n).is_file() for n in names):
        if not download:
            raise _missing_error("cifar10", directory, names)
        _download_cifar10(root)
    for n in names:
        verify_md5(directory / n, CIFAR10_MD5[n])
    train = [read_cifar_batch(directory / n) for n in _CIFAR10_TRAIN]
    test = read_cifar_batch(directory / _CIFAR10_TEST[0])
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    return (x, y), test


# --------------------------------------------------------------------------------------
# scikit-learn bundled datasets


def stratified_split(
    y: npt.NDArray[Any], test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Sorted train and test indices with ``round(test_fraction * n_k)`` of each class k in
    the test split (at least one sample of each class stays in train)."""
    rng = np.random.RandomState(seed)
    train: list[npt.NDArray[np.intp]] = []
    test: list[npt.NDArray[np.intp]] = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        rng.shuffle(idx)
        n_test = min(round(test_fraction * idx.size), idx.size - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_sklearn(key: str) -> tuple[ArrayDataset, ArrayDataset]:
    from sklearn.datasets import load_breast_cancer, load_digits

    if key == "digits":
        bunch = load_digits()
        x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
        num_classes = 10
    else:
        bunch = load_breast_cancer()
        x = np.asarray(bunch.data, dtype=np.float64)
        num_classes = 2
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = x[tr], x[te]
    if key == "breast_cancer":
        mean = x_tr.mean(axis=0)
        std = x_tr.std(axis=0)
        std[std == 0] = 1.0
        x_tr = ((x_tr - mean) / std).astype(np.float32)
        x_te = ((x_te - mean) / std).astype(np.float32)
    return (
        ArrayDataset(x_tr, y[tr], num_classes, key),
        ArrayDataset(x_te, y[te], num_classes, key),
    )


# --------------------------------------------------------------------------------------
# Public entry point

DATASETS: tuple[str, ...] = ("digits", "breast_cancer", "mnist", "fashion_mnist", "cifar10")
#: Datasets bundled with scikit-learn: no files, no network.
OFFLINE_DATASETS: tuple[str, ...] = ("digits", "breast_cancer")


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def _normalise_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return key


def _cap(n: int, limit: int | None, what: str) -> npt.NDArray[np.intp] | None:
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise DatasetError(f"subset: {what} size must be >= 1, got {limit}")
    idx = np.random.RandomState(SPLIT_SEED).choice(n, size=limit, replace=False)
    return np.sort(idx)


def _subset_sizes(subset: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if subset is None:
        return None, None
    if isinstance(subset, tuple):
        if len(subset) != 2 or not all(isinstance(s, int) for s in subset):
            raise DatasetError(f"subset must be an int or (train, test) ints, got {subset!r}")
        return subset[0], subset[1]
    if isinstance(subset, bool) or not isinstance(subset, int):
        raise DatasetError(f"subset must be an int or (train, test) ints, got {subset!r}")
    return subset, subset


def _images(
    x: U8Array, y: npt.NDArray[Any], keep: npt.NDArray[np.intp] | None, shape: tuple[int, ...]
) -> tuple[F32Array, I64Array]:
    if keep is not None:
        x, y = x[keep], y[keep]
    xf = x.reshape(-1, *shape).astype(np.float32)
    xf /= np.float32(255.0)
    return xf, y.astype(np.int64)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    subset: int | tuple[int, int] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load ``(train, test)`` of dataset ``name`` (see :data:`DATASETS`).

    ``data_dir`` is the data root (default ``$CIFER_DATA_DIR``, then
    :func:`default_data_dir`); it is not used by the scikit-learn datasets. ``download``
    fetches missing files from the official sources. ``subset`` keeps a deterministic random
    sample of at most that many examples per split (an int for both splits, or
    ``(train, test)``) for quick runs.
    """
    key = _normalise_name(name)
    n_train, n_test = _subset_sizes(subset)
    if key in OFFLINE_DATASETS:
        train, test = _load_sklearn(key)
        keep_tr, keep_te = _cap(len(train), n_train, "train"), _cap(len(test), n_test, "test")
        return (
            train if keep_tr is None else train.subset(keep_tr),
            test if keep_te is None else test.subset(keep_te),
        )
    root = resolve_data_dir(data_dir)
    raw_train: tuple[U8Array, npt.NDArray[Any]]
    raw_test: tuple[U8Array, npt.NDArray[Any]]
    if key == "cifar10":
        raw_train, raw_test = _load_cifar10(root, download)
        shape: tuple[int, ...] = (3, 32, 32)
    else:
        raw_train, raw_test = _load_idx_dataset(key, root, download)
        shape = (1, 28, 28)
    out = []
    for (x, y), limit, what in ((raw_train, n_train, "train"), (raw_test, n_test, "test")):
        xf, yi = _images(x, y, _cap(len(y), limit, what), shape)
        out.append(ArrayDataset(xf, yi, 10, key))
    return out[0], out[1]

"""Model parameters: named float32 tensors, their flat vector view and their safe wire format.

A model is an ordered mapping ``name -> float32 array``; the order is part of the model's
identity because the flat vector used by aggregators concatenates tensors in that order.
On the wire and on disk a model is a safetensors blob (never pickle: loading a pickle runs
code). The order travels in the safetensors metadata, since safetensors itself stores tensors
sorted by name. The content hash is SHA-256 of the serialized bytes, so two nodes agree on
a model's identity iff they hold byte-identical blobs.

The metadata is exactly one key: safetensors keeps metadata in a Rust HashMap, so with two
or more keys their order in the header (and so the hash) changes from process to process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

#: The only tensor dtype a model may hold (the design fixes float32 models).
DTYPE = np.dtype("<f4")
_DTYPE_NAME = "float32"
_META_KEY = "cifer"
_FORMAT = "params/1"

F32Array = npt.NDArray[np.float32]
Params = dict[str, F32Array]


class ParamError(ValueError):
    """Parameters do not match the expected names, shapes or dtype, or a blob is malformed."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of a model."""

    name: str
    shape: tuple[int, ...]
    dtype: str = _DTYPE_NAME

    @property
    def size(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """The layout of a model: which tensors, in which order, with which shapes.

    The spec is what two parties must agree on to exchange flat vectors; it is small and
    JSON-friendly (see :meth:`to_json`) so a job can publish it next to the weights' hash.
    """

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for t in self.tensors:
            if not isinstance(t.name, str) or not t.name:
                raise ParamError(f"tensor names must be non-empty strings, got {t.name!r}")
            if t.name in seen:
                raise ParamError(f"duplicate tensor name {t.name!r}")
            seen.add(t.name)
            if t.dtype != _DTYPE_NAME:
                raise ParamError(f"tensor {t.name!r}: dtype {t.dtype}, expected float32")
            if any((not isinstance(s, int)) or s < 0 for s in t.shape):
                raise ParamError(f"tensor {t.name!r}: invalid shape {t.shape}")

    @classmethod
    def of(cls, params: Mapping[str, npt.NDArray[Any]]) -> ParamSpec:
        """The spec of ``params`` (validating that every tensor is float32)."""
        specs = []
        for name, arr in params.items():
            _check_tensor(name, arr)
            specs.append(TensorSpec(name, tuple(int(s) for s in arr.shape)))
        return cls(tuple(specs))

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in model order."""
        return tuple(t.name for t in self.tensors)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(t.size for t in self.tensors)

    def check(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Raise :class:`ParamError` unless ``params`` has exactly this layout, in order."""
        names = list(params)
        if names != list(self.names):
            missing = [n for n in self.names if n not in params]
            extra = [n for n in names if n not in set(self.names)]
            if missing or extra:
                raise ParamError(f"tensor names differ: missing {missing}, unexpected {extra}")
            raise ParamError(f"tensor order differs: expected {list(self.names)}, got {names}")
        for t in self.tensors:
            arr = params[t.name]
            _check_tensor(t.name, arr)
            if tuple(arr.shape) != t.shape:
                raise ParamError(
                    f"tensor {t.name!r}: expected shape {t.shape}, got {tuple(arr.shape)}"
                )

    def flatten(self, params: Mapping[str, npt.NDArray[Any]]) -> F32Array:
        """Concatenate the tensors (C order) into one new contiguous float32 vector."""
        self.check(params)
        out = np.empty(self.size, dtype=DTYPE)
        offset = 0
        for t in self.tensors:
            out[offset : offset + t.size] = params[t.name].reshape(-1)
            offset += t.size
        return out

    def unflatten(self, vector: npt.NDArray[Any], *, copy: bool = True) -> Params:
        """Split a flat float32 vector back into named tensors (views if ``copy=False``)."""
        if not isinstance(vector, np.ndarray):
            raise ParamError(f"expected a numpy vector, got {type(vector).__name__}")
        if vector.dtype != np.float32:
            raise ParamError(f"flat vector has dtype {vector.dtype}, expected float32")
        if vector.ndim != 1:
            raise ParamError(f"flat vector must be 1-D, got shape {vector.shape}")
        if vector.shape[0] != self.size:
            raise ParamError(f"flat vector has {vector.shape[0]} values, spec needs {self.size}")
        out: Params = {}
        offset = 0
        for t in self.tensors:
            piece = vector[offset : offset + t.size].reshape(t.shape)
            out[t.name] = piece.copy() if copy else piece
            offset += t.size
        return out

    def to_json(self) -> str:
        """Canonical JSON (no floats) describing the layout."""
        return json.dumps(
            [[t.name, list(t.shape), t.dtype] for t in self.tensors], separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> ParamSpec:
        """Inverse of :meth:`to_json`."""
        try:
            raw = json.loads(text)
            tensors = tuple(
                TensorSpec(str(name), tuple(int(s) for s in shape), str(dtype))
                for name, shape, dtype in raw
            )
        except (ValueError, TypeError) as exc:
            raise ParamError(f"malformed parameter spec: {exc}") from exc
        return cls(tensors)


def _check_tensor(name: object, arr: object) -> None:
    if not isinstance(name, str) or not name:
        raise ParamError(f"tensor names must be non-empty strings, got {name!r}")
    if not isinstance(arr, np.ndarray):
        raise ParamError(f"tensor {name!r}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:  # either byte order
        raise ParamError(f"tensor {name!r}: dtype {arr.dtype}, expected float32")


def flatten(params: Mapping[str, npt.NDArray[Any]]) -> tuple[F32Array, ParamSpec]:
    """Flat float32 vector of ``params`` and the spec needed to undo it."""
    spec = ParamSpec.of(params)
    return spec.flatten(params), spec


def unflatten(vector: npt.NDArray[Any], spec: ParamSpec) -> Params:
    """Named tensors (fresh copies) from a flat vector laid out by ``spec``."""
    return spec.unflatten(vector)


def to_bytes(params: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """Serialize to safetensors bytes; deterministic for equal names, order and values."""
    spec = ParamSpec.of(params)
    # safetensors copies raw memory: a non-contiguous or big-endian view would be written
    # wrongly, so normalise every tensor to little-endian C order first.
    tensors = {name: np.ascontiguousarray(arr, dtype=DTYPE) for name, arr in params.items()}
    meta = json.dumps({"format": _FORMAT, "order": list(spec.names)}, separators=(",", ":"))
    return bytes(_st_save(tensors, metadata={_META_KEY: meta}))


def from_bytes(data: bytes) -> Params:
    """Parse safetensors bytes into ordered float32 tensors (writable copies).

    Blobs without our order metadata (written by other tools) are accepted in sorted-name
    order, which is the order safetensors itself uses.
    """
    try:
        raw = _st_load(bytes(data))
    except Exception as exc:  # SafetensorError does not derive from a public base
        raise ParamError(f"not a valid safetensors blob: {exc}") from exc
    order = _read_order(data)
    if order is None:
        order = sorted(raw)
    elif sorted(order) != sorted(raw):
        raise ParamError(f"blob order metadata {order} does not match its tensors {sorted(raw)}")
    out: Params = {}
    for name in order:
        arr = raw[name]
        _check_tensor(name, arr)
        out[name] = np.array(arr, dtype=DTYPE, copy=True)
    return out


def _read_order(data: bytes) -> list[str] | None:
    # The safetensors header is an 8-byte little-endian length then JSON; load() already
    # validated it, so this only extracts our metadata.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header.get("__metadata__") or {}
    if _META_KEY not in meta:
        return None
    try:
        ours = json.loads(meta[_META_KEY])
    except ValueError as exc:
        raise ParamError(f"malformed {_META_KEY} metadata: {exc}") from exc
    if not isinstance(ours, dict) or ours.get("format") != _FORMAT:
        raise ParamError(f"unsupported {_META_KEY} metadata: {ours!r}")
    order = ours.get("order")
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise ParamError(f"malformed {_META_KEY} metadata order: {order!r}")
    if len(set(order)) != len(order):
        raise ParamError(f"duplicate names in {_META_KEY} metadata order")
    return order


def hash_bytes(data: bytes) -> str:
    """Hex SHA-256 of a blob: the content address used by the blob store and on chain."""
    return hashlib.sha256(data).hexdigest()


def content_hash(params: Mapping[str, npt.NDArray[Any]]) -> str:
    """Hex SHA-256 of :func:`to_bytes` of ``params``."""
    return hash_bytes(to_bytes(params))


def save_file(params: Mapping[str, npt.NDArray[Any]], path: str | Path) -> str:
    """Write ``params`` to ``path`` and return the content hash of what was written."""
    data = to_bytes(params)
    Path(path).write_bytes(data)
    return hash_bytes(data)


def load_file(path: str | Path, *, expected_hash: str | None = None) -> Params:
    """Read a safetensors file; if ``expected_hash`` is given the bytes must match it."""
    data = Path(path).read_bytes()
    if expected_hash is not None and hash_bytes(data) != expected_hash.lower():
        raise ParamError(f"{path}: content hash {hash_bytes(data)} != expected {expected_hash}")
    return from_bytes(data)

"""Model parameters: flat view, safetensors wire format, content hash."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from cifer.compute.fl.params import (
    ParamError,
    ParamSpec,
    TensorSpec,
    content_hash,
    flatten,
    from_bytes,
    load_file,
    save_file,
    to_bytes,
    unflatten,
)


def model() -> dict[str, np.ndarray]:
    # deliberately not in sorted-name order
    return {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fc.bias": np.array([0.5, -0.5], dtype=np.float32),
        "a.scale": np.array(2.0, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_flatten_roundtrip_and_layout() -> None:
    vec, spec = flatten(model())
    assert vec.dtype == np.float32 and vec.flags.c_contiguous
    np.testing.assert_array_equal(vec, [0, 1, 2, 3, 4, 5, 0.5, -0.5, 2.0])
    assert spec.names == ("fc.weight", "fc.bias", "a.scale", "empty")
    assert spec.size == 9
    back = unflatten(vec, spec)
    assert list(back) == list(model())
    for name, arr in model().items():
        np.testing.assert_array_equal(back[name], arr)
        assert back[name].shape == arr.shape
    back["fc.bias"][0] = 99.0  # copies, not views
    assert vec[6] == 0.5


def test_flatten_of_non_contiguous_tensor() -> None:
    m = {"t": np.arange(6, dtype=np.float32).reshape(2, 3).T}
    vec, _ = flatten(m)
    np.testing.assert_array_equal(vec, m["t"].reshape(-1))


def test_spec_mismatch_errors() -> None:
    spec = ParamSpec.of(model())
    bad = model()
    bad["fc.weight"] = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ParamError, match=r"'fc.weight': expected shape \(2, 3\), got \(3, 2\)"):
        spec.flatten(bad)
    bad = model()
    bad["fc.bias"] = bad["fc.bias"].astype(np.float64)
    with pytest.raises(ParamError, match=r"'fc.bias': dtype float64, expected float32"):
        spec.flatten(bad)
    bad = model()
    del bad["empty"]
    with pytest.raises(ParamError, match=r"missing \['empty'\]"):
        spec.flatten(bad)
    reordered = dict(reversed(list(model().items())))
    with pytest.raises(ParamError, match=r"tensor order differs"):
        spec.flatten(reordered)
    with pytest.raises(ParamError, match=r"flat vector has 8 values, spec needs 9"):
        spec.unflatten(np.zeros(8, dtype=np.float32))
    with pytest.raises(ParamError, match=r"dtype float64, expected float32"):
        spec.unflatten(np.zeros(9))
    with pytest.raises(ParamError, match=r"duplicate tensor name"):
        ParamSpec((TensorSpec("a", (1,)), TensorSpec("a", (2,))))
    with pytest.raises(ParamError, match=r"expected float32"):
        ParamSpec((TensorSpec("a", (1,), "float16"),))


def test_spec_json_roundtrip() -> None:
    spec = ParamSpec.of(model())
    assert ParamSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ParamError, match=r"malformed"):
        ParamSpec.from_json("[1, 2")


def test_bytes_roundtrip_keeps_order_and_values() -> None:
    m = model()
    m["t"] = np.arange(6, dtype=np.float32).reshape(2, 3).T  # non-contiguous view
    m["be"] = np.array([1.5, 2.5], dtype=">f4")  # big-endian float32 is still float32
    back = from_bytes(to_bytes(m))
    assert list(back) == list(m)
    for name, arr in m.items():
        np.testing.assert_array_equal(back[name], arr)
        assert back[name].dtype == np.dtype("<f4")
        assert back[name].flags.writeable


def test_content_hash_is_sha256_of_bytes_and_deterministic() -> None:
    data = to_bytes(model())
    assert content_hash(model()) == hashlib.sha256(data).hexdigest()
    assert to_bytes(model()) == data
    changed = model()
    changed["fc.bias"][1] = np.nextafter(np.float32(-0.5), np.float32(0))
    assert content_hash(changed) != content_hash(model())
    # order is part of the identity: the flat vector depends on it
    assert content_hash(dict(reversed(list(model().items())))) != content_hash(model())


def test_content_hash_pinned() -> None:
    # Pins the wire format: if safetensors or our metadata ever change the bytes, nodes
    # running different versions would disagree on model hashes, so this must fail loudly.
    m = {"w": np.array([[1.0, 2.0]], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    header = (
        b'{"__metadata__":{"cifer":"{\\"format\\":\\"params/1\\",\\"order\\":[\\"w\\",\\"b\\"]}"},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"w":{"dtype":"F32","shape":[1,2],"data_offsets":[4,12]}}'
    )
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes
    expected = len(header).to_bytes(8, "little") + header
    expected += np.array([0.0, 1.0, 2.0], dtype="<f4").tobytes()
    assert to_bytes(m) == expected
    assert content_hash(m) == hashlib.sha256(expected).hexdigest()


def test_bytes_are_identical_across_processes() -> None:
    # Guards against hash-map ordering (randomised per process) leaking into the bytes.
    code = (
        "import numpy as np; from cifer.compute.fl.params import content_hash;"
        "print(content_hash({n: np.full(3, i, np.float32) for i, n in enumerate('zamqb')}))"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout.strip()
        for seed in (1, 2, 3)
    }
    assert len(hashes) == 1


def test_foreign_blob_without_order_metadata_loads_sorted() -> None:
    blob = st_save({"z": np.ones(2, np.float32), "a": np.zeros(1, np.float32)})
    assert list(from_bytes(blob)) == ["a", "z"]


def test_malformed_blobs() -> None:
    with pytest.raises(ParamError, match=r"not a valid safetensors blob"):
        from_bytes(b"garbage")
    blob = st_save({"a": np.zeros(1, np.float64)})
    with pytest.raises(ParamError, match=r"'a': dtype float64, expected float32"):
        from_bytes(blob)
    meta = '{"format":"params/1","order":["b"]}'
    blob = st_save({"a": np.zeros(1, np.float32)}, metadata={"cifer": meta})
    with pytest.raises(ParamError, match=r"does not match its tensors"):
        from_bytes(blob)
    blob = st_save({"a": np.zeros(1, np.float32)}, metadata={"cifer": "{bad"})
    with pytest.raises(ParamError, match=r"malformed cifer metadata"):
        from_bytes(blob)
    blob = st_save({"a": np.zeros(1, np.float32)}, metadata={"cifer": '{"format":"params/9"}'})
    with pytest.raises(ParamError, match=r"unsupported cifer metadata"):
        from_bytes(blob)


def test_files_with_expected_hash(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    h = save_file(model(), path)
    assert list(load_file(path, expected_hash=h)) == list(model())
    with pytest.raises(ParamError, match=r"content hash"):
        load_file(path, expected_hash="00" * 32)

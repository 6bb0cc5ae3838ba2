"""Canonical msgpack encoding: one value, one byte string; everything else is rejected."""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
import struct

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cifer
from cifer.base import encoding
from cifer.base.encoding import MAX_OBJECT_BYTES, Canonical, EncodingError, decode, digest, encode


class Inner(Canonical):
    n: int
    tag: str


class Sample(Canonical):
    a: int
    b: bytes
    c: str
    items: list[int]
    inner: Inner | None


class WithDefault(Canonical):
    x: int
    y: int = 0


class WithDict(Canonical):
    m: dict[str, int]


def sample(a: int = 5, items: list[int] | None = None) -> Sample:
    return Sample(a, b"ab", "hi", [1, 2] if items is None else items, Inner(7, "t"))


# ---------------------------------------------------------------- msgpack by hand


def mp_int_forms(v: int) -> list[bytes]:
    """Every MessagePack encoding of the integer ``v`` (fixints and all sized forms)."""
    out: list[bytes] = []
    if 0 <= v <= 0x7F:
        out.append(bytes([v]))
    if -32 <= v < 0:
        out.append(struct.pack(">b", v))
    for tag, fmt, lo, hi in [
        (0xCC, ">B", 0, 2**8 - 1),
        (0xCD, ">H", 0, 2**16 - 1),
        (0xCE, ">I", 0, 2**32 - 1),
        (0xCF, ">Q", 0, 2**64 - 1),
        (0xD0, ">b", -(2**7), 2**7 - 1),
        (0xD1, ">h", -(2**15), 2**15 - 1),
        (0xD2, ">i", -(2**31), 2**31 - 1),
        (0xD3, ">q", -(2**63), 2**63 - 1),
    ]:
        if lo <= v <= hi:
            out.append(bytes([tag]) + struct.pack(fmt, v))
    return out


def mp_str(s: str, form: str = "fix") -> bytes:
    raw = s.encode()
    if form == "fix":
        assert len(raw) < 32
        return bytes([0xA0 | len(raw)]) + raw
    if form == "str8":
        return b"\xd9" + bytes([len(raw)]) + raw
    if form == "str16":
        return b"\xda" + struct.pack(">H", len(raw)) + raw
    return b"\xdb" + struct.pack(">I", len(raw)) + raw


def mp_bin(b: bytes, form: str = "bin8") -> bytes:
    if form == "bin8":
        return b"\xc4" + bytes([len(b)]) + b
    if form == "bin16":
        return b"\xc5" + struct.pack(">H", len(b)) + b
    return b"\xc6" + struct.pack(">I", len(b)) + b


def mp_array(parts: list[bytes], form: str = "fix") -> bytes:
    n = len(parts)
    if form == "fix":
        head = bytes([0x90 | n])
    elif form == "array16":
        head = b"\xdc" + struct.pack(">H", n)
    else:
        head = b"\xdd" + struct.pack(">I", n)
    return head + b"".join(parts)


def inner_bytes(n: bytes = b"\x07", tag: bytes | None = None) -> bytes:
    return mp_array([n, mp_str("t") if tag is None else tag])


def sample_bytes(
    a: bytes = b"\x05",
    b: bytes | None = None,
    c: bytes | None = None,
    items: bytes | None = None,
    inner: bytes | None = None,
    form: str = "fix",
) -> bytes:
    return mp_array(
        [
            a,
            mp_bin(b"ab") if b is None else b,
            mp_str("hi") if c is None else c,
            mp_array([b"\x01", b"\x02"]) if items is None else items,
            inner_bytes() if inner is None else inner,
        ],
        form,
    )


def expect_error(data: object, typ: type, *fragments: str) -> EncodingError:
    with pytest.raises(EncodingError) as info:
        decode(data, typ)  # type: ignore[arg-type]
    msg = str(info.value)
    assert typ.__name__ in msg, msg
    for f in fragments:
        assert f in msg, msg
    return info.value


# ---------------------------------------------------------------- round trips


def test_hand_built_bytes_match_encoder() -> None:
    # Guards the helpers above: the canonical form is what msgspec writes.
    assert sample_bytes() == encode(sample())
    assert decode(sample_bytes(), Sample) == sample()


def test_canonical_layout_is_an_array_in_declaration_order() -> None:
    data = encode(Inner(1, "x"))
    assert data == b"\x92\x01\xa1x"
    assert msgspec.msgpack.decode(data) == [1, "x"]


@settings(max_examples=150, deadline=None)
@given(
    a=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    b=st.binary(max_size=300),
    c=st.text(max_size=50),
    items=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=20),
    inner=st.none() | st.builds(Inner, st.integers(-(2**40), 2**40), st.text(max_size=5)),
)
def test_round_trip(a: int, b: bytes, c: str, items: list[int], inner: Inner | None) -> None:
    obj = Sample(a, b, c, items, inner)
    data = encode(obj)
    assert decode(data, Sample) == obj
    assert encode(decode(data, Sample)) == data


def test_bytes_like_inputs_are_accepted() -> None:
    data = encode(sample())
    assert decode(bytearray(data), Sample) == sample()
    assert decode(memoryview(data), Sample) == sample()


def test_digest_is_sha256_of_encoding() -> None:
    obj = sample()
    assert digest(obj) == hashlib.sha256(encode(obj)).digest()
    assert digest(obj) != digest(sample(a=6))


# ---------------------------------------------------------------- non-canonical integers


INT_EDGES = [0, 1, 5, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63]
INT_EDGES += [2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1]
INT_EDGES += [-(2**63)]


@pytest.mark.parametrize("value", INT_EDGES)
def test_only_the_shortest_integer_form_is_accepted(value: int) -> None:
    forms = mp_int_forms(value)
    accepted = []
    for form in forms:
        data = sample_bytes(a=form)
        try:
            obj = decode(data, Sample)
        except EncodingError as exc:
            assert "non-canonical encoding of Sample" in str(exc)
            continue
        assert obj.a == value
        accepted.append(form)
    assert len(accepted) == 1, [f.hex() for f in accepted]
    assert accepted[0] == min(forms, key=len)
    assert sample_bytes(a=accepted[0]) == encode(sample(a=value))


def test_long_int_in_nested_struct_and_list_is_rejected() -> None:
    expect_error(sample_bytes(inner=inner_bytes(n=b"\xcc\x07")), Sample, "non-canonical")
    expect_error(sample_bytes(items=mp_array([b"\xd0\x01", b"\x02"])), Sample, "non-canonical")


def test_long_string_bytes_and_array_headers_are_rejected() -> None:
    for data in [
        sample_bytes(c=mp_str("hi", "str8")),
        sample_bytes(c=mp_str("hi", "str16")),
        sample_bytes(c=mp_str("hi", "str32")),
        sample_bytes(b=mp_bin(b"ab", "bin16")),
        sample_bytes(b=mp_bin(b"ab", "bin32")),
        sample_bytes(items=mp_array([b"\x01", b"\x02"], "array16")),
        sample_bytes(form="array16"),
        sample_bytes(form="array32"),
    ]:
        expect_error(data, Sample, "non-canonical")


def test_omitted_default_field_is_non_canonical() -> None:
    # msgspec accepts a short array for a struct with defaults; we must not (two encodings).
    assert encode(WithDefault(3)) == b"\x92\x03\x00"
    assert decode(b"\x92\x03\x00", WithDefault) == WithDefault(3, 0)
    expect_error(b"\x91\x03", WithDefault, "non-canonical")


def test_dict_key_order_is_canonical() -> None:
    # Equal dicts must encode identically, and the unsorted twin must be rejected.
    assert encode(WithDict({"b": 1, "a": 2})) == encode(WithDict({"a": 2, "b": 1}))
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1})
    assert encode(frozenset({b"y", b"x", b"z"})) == encode([b"x", b"y", b"z"])
    good = encode(WithDict({"a": 2, "b": 1}))
    assert decode(good, WithDict) == WithDict({"a": 2, "b": 1})
    swapped = b"\x91\x82\xa1b\x01\xa1a\x02"
    expect_error(swapped, WithDict, "non-canonical")


# ---------------------------------------------------------------- wrong types and shapes


@pytest.mark.parametrize(
    "a_form",
    [b"\xcb" + struct.pack(">d", 5.0), b"\xca" + struct.pack(">f", 5.0), b"\xc3", b"\xc2", b"\xc0"],
    ids=["float64", "float32", "true", "false", "nil"],
)
def test_non_int_where_int_belongs(a_form: bytes) -> None:
    expect_error(sample_bytes(a=a_form), Sample, "invalid Sample", "$[0]")


def test_str_where_bytes_belongs_and_vice_versa() -> None:
    expect_error(sample_bytes(b=mp_str("ab")), Sample, "invalid Sample", "bytes")
    expect_error(sample_bytes(c=mp_bin(b"hi")), Sample, "invalid Sample", "str")


def test_missing_and_unknown_fields() -> None:
    full = [b"\x05", mp_bin(b"ab"), mp_str("hi"), mp_array([]), b"\xc0"]
    expect_error(mp_array(full[:4]), Sample, "invalid Sample")
    expect_error(mp_array([*full, b"\x01"]), Sample, "invalid Sample")
    expect_error(mp_array([]), Sample, "invalid Sample")
    # Unknown trailing field in a nested struct.
    expect_error(
        sample_bytes(inner=mp_array([b"\x07", mp_str("t"), b"\x00"])), Sample, "invalid Sample"
    )


def test_map_layout_is_rejected() -> None:
    as_map = msgspec.msgpack.encode({"n": 7, "tag": "t"})
    expect_error(as_map, Inner, "invalid Inner")


def test_invalid_utf8_string_is_rejected() -> None:
    # msgspec raises UnicodeDecodeError here; decode must turn it into EncodingError.
    expect_error(sample_bytes(c=b"\xa2\xff\xfe"), Sample, "malformed Sample")
    expect_error(sample_bytes(inner=inner_bytes(tag=b"\xa1\x80")), Sample, "malformed Sample")


def test_over_deep_nesting_is_rejected() -> None:
    # msgspec raises RecursionError for very deep untyped nesting.
    expect_error(b"\x91" * 100_000 + b"\x00", list, "malformed list")


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x95", b"\x95\x05", sample_bytes()[:-1], b"\xdd\xff\xff\xff\xff"],
    ids=["empty", "reserved-byte", "empty-array-body", "short", "truncated", "huge-length"],
)
def test_garbage_is_rejected(data: bytes) -> None:
    expect_error(data, Sample, "Sample")


def test_trailing_bytes_are_rejected() -> None:
    expect_error(sample_bytes() + b"\x00", Sample, "malformed Sample")
    expect_error(sample_bytes() + sample_bytes(), Sample, "malformed Sample")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_encoding_error_or_are_canonical(data: bytes) -> None:
    try:
        obj = decode(data, Sample)
    except EncodingError as exc:
        assert "Sample" in str(exc)
    else:
        assert encode(obj) == data


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_encodings_never_decode_to_a_different_canonical_form(data: st.DataObject) -> None:
    good = bytearray(encode(sample(a=data.draw(st.integers(0, 2**20)))))
    i = data.draw(st.integers(0, len(good) - 1))
    good[i] = data.draw(st.integers(0, 255))
    try:
        obj = decode(bytes(good), Sample)
    except EncodingError:
        return
    assert encode(obj) == bytes(good)


def test_non_bytes_input_is_rejected() -> None:
    expect_error("\x92\x01\xa1x", Inner, "expected bytes", "str")
    expect_error([1, "x"], Inner, "expected bytes", "list")
    expect_error(None, Inner, "expected bytes")


def test_oversize_input_is_rejected_before_decoding() -> None:
    data = encode(sample())
    assert decode(data, Sample, max_bytes=len(data)) == sample()
    err = None
    with pytest.raises(EncodingError) as info:
        decode(data, Sample, max_bytes=len(data) - 1)
    err = str(info.value)
    assert "Sample" in err and str(len(data)) in err and str(len(data) - 1) in err
    # The default ceiling applies without max_bytes (length checked before parsing).
    big = b"\x00" * (MAX_OBJECT_BYTES + 1)
    expect_error(big, Sample, "limit")


def test_encoding_error_is_a_value_error() -> None:
    assert issubclass(EncodingError, ValueError)


def test_decoder_cache_is_per_type() -> None:
    data = encode(Inner(1, "x"))
    assert decode(data, Inner) == Inner(1, "x")
    expect_error(data, Sample)
    assert decode(data, Inner) == Inner(1, "x")


# ---------------------------------------------------------------- design rule: no floats


def _import_all_cifer_modules() -> list[str]:
    """Import every cifer module so every Canonical subclass is defined.

    A module whose *optional third-party* dependency is missing (torch, ray) is skipped and
    returned; a failing import of cifer's own code fails the test.
    """
    skipped = []
    for info in pkgutil.walk_packages(cifer.__path__, "cifer."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "cifer":
                raise
            skipped.append(f"{info.name} (needs {exc.name})")
    return skipped


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                stack.append(sub)
    return out


def _contains_float(t: mi.Type, seen: set[type]) -> bool:
    if isinstance(t, mi.FloatType):
        return True
    if isinstance(t, mi.StructType):
        if t.cls in seen:
            return False
        seen.add(t.cls)
        return any(_contains_float(f.type, seen) for f in t.fields)
    for attr in ("item_type", "key_type", "value_type"):
        sub = getattr(t, attr, None)
        if isinstance(sub, mi.Type) and _contains_float(sub, seen):
            return True
    for attr in ("types", "item_types"):
        subs = getattr(t, attr, None)
        if subs and any(_contains_float(s, seen) for s in subs):
            return True
    return isinstance(t, mi.Metadata) and _contains_float(t.type, seen)


def test_no_canonical_struct_carries_a_float() -> None:
    _import_all_cifer_modules()
    classes = [c for c in _all_subclasses(Canonical) if c.__module__.startswith("cifer.")]
    names = {c.__name__ for c in classes}
    # Sanity: the walk found the core ledger types.
    assert {"SignedTx", "Vote", "Block", "Header", "Commit", "Validator"} <= names
    offenders = []
    for cls in classes:
        for klass in cls.__mro__:
            for field, ann in getattr(klass, "__annotations__", {}).items():
                if re.search(r"\bfloat\b", str(ann)):
                    offenders.append(f"{cls.__module__}.{cls.__qualname__}.{field}: {ann}")
        if _contains_float(mi.type_info(cls), set()):
            offenders.append(f"{cls.__module__}.{cls.__qualname__} (resolved type reaches float)")
    assert not offenders, "consensus types must not carry floats:\n" + "\n".join(offenders)


def test_float_detector_detects_floats() -> None:
    # The rule's checker must actually catch floats, nested or optional.
    class Bad(msgspec.Struct):
        x: list[dict[str, float | None]]

    class Good(msgspec.Struct):
        x: list[dict[str, int | None]]

    assert _contains_float(mi.type_info(Bad), set())
    assert not _contains_float(mi.type_info(Good), set())


def test_package_importable() -> None:
    assert cifer.__name__ == "cifer"
    assert encoding.Canonical is Canonical

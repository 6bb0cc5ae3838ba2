"""StateOverlay semantics and the app-hash formula."""

from __future__ import annotations

import hashlib

import pytest

from cifer.app.state import StateOverlay, app_hash, changeset_root
from cifer.base.crypto import merkle
from cifer.base.encoding import encode
from cifer.base.store.state import StateStore


@pytest.fixture
def store() -> StateStore:
    s = StateStore(":memory:")
    s.commit(1, b"h1", {b"a/1": b"x", b"a/2": b"y", b"b/1": b"z"})
    return s


def test_reads_fall_through_and_writes_stay_pending(store: StateStore) -> None:
    ov = StateOverlay(store)
    assert ov.get(b"a/1") == b"x"
    ov.set(b"a/1", b"new")
    ov.delete(b"a/2")
    ov.set(b"c", b"c")
    assert (ov.get(b"a/1"), ov.get(b"a/2"), ov.get(b"c")) == (b"new", None, b"c")
    assert store.get(b"a/1") == b"x" and store.get(b"c") is None  # nothing written through


def test_nested_snapshots_revert_exactly(store: StateStore) -> None:
    ov = StateOverlay(store)
    ov.set(b"k", b"0")
    outer = ov.snapshot()
    ov.set(b"k", b"1")
    ov.delete(b"a/1")
    inner = ov.snapshot()
    ov.set(b"k", b"2")
    ov.set(b"new", b"n")
    ov.revert(inner)
    assert ov.get(b"k") == b"1" and ov.get(b"new") is None and ov.get(b"a/1") is None
    ov.revert(outer)
    assert ov.get(b"k") == b"0" and ov.get(b"a/1") == b"x"
    with pytest.raises(ValueError):
        ov.revert(inner)  # no longer live


def test_atomic_reverts_on_exception(store: StateStore) -> None:
    ov = StateOverlay(store)
    with pytest.raises(RuntimeError), ov.atomic():
        ov.set(b"a/1", b"changed")
        raise RuntimeError("boom")
    assert ov.get(b"a/1") == b"x"


def test_iter_prefix_merges_pending_writes_in_order(store: StateStore) -> None:
    ov = StateOverlay(store)
    ov.set(b"a/0", b"w")
    ov.delete(b"a/2")
    ov.set(b"a/1", b"X")
    ov.set(b"b/9", b"other prefix")
    assert list(ov.iter_prefix(b"a/")) == [(b"a/0", b"w"), (b"a/1", b"X")]


def test_changeset_is_net_difference(store: StateStore) -> None:
    ov = StateOverlay(store)
    ov.set(b"a/1", b"x")  # same as committed: no change
    ov.set(b"tmp", b"t")
    ov.delete(b"tmp")  # created and deleted within the block: no change
    ov.delete(b"nope")  # deleting an absent key: no change
    ov.set(b"a/2", b"Y")
    ov.delete(b"b/1")
    assert ov.changeset() == {b"a/2": b"Y", b"b/1": None}


def test_app_hash_formula() -> None:
    changes: dict[bytes, bytes | None] = {b"z": b"1", b"a": None}
    leaves = [encode((b"a", b"", True)), encode((b"z", b"1", False))]
    root = merkle.root(leaves)
    assert changeset_root(changes) == root
    want = hashlib.sha256(b"cifer/apphash/v1" + b"prev" + (7).to_bytes(8, "big") + root).digest()
    assert app_hash(b"prev", 7, changes) == want
    # every input matters
    assert app_hash(b"prev2", 7, changes) != want
    assert app_hash(b"prev", 8, changes) != want
    assert app_hash(b"prev", 7, {b"z": b"2", b"a": None}) != want
    assert app_hash(b"prev", 7, {b"z": b"1", b"a": b""}) != want  # empty value != deleted


def test_state_integers_are_ints_only(store: StateStore) -> None:
    ov = StateOverlay(store)
    with pytest.raises(TypeError):
        ov.set_int(b"n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ov.set(b"n", "text")  # type: ignore[arg-type]
    ov.set_int(b"n", 10**15)
    assert ov.get_int(b"n") == 10**15

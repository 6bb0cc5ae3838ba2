"""State history in the StateStore, and Merkle proofs of state records and txs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer.app import state as app_state
from cifer.app.application import CiferApp
from cifer.base import encoding
from cifer.base.chain.proofs import (
    ProofError,
    StateProof,
    TxProof,
    app_hash_from_root,
    build_state_proof,
    build_tx_proof,
    changeset_leaf,
    verify_state_proof,
    verify_tx_proof,
)
from cifer.base.chain.types import Block, Header
from cifer.base.crypto import merkle
from cifer.base.encoding import EncodingError
from cifer.base.store.sqlite import MEMORY
from cifer.base.store.state import StateStore
from tests.app.helpers import genesis, make_block

Changes = dict[bytes, bytes | None]

BLOCKS: list[Changes] = [
    {b"a": b"1", b"b": b"2", b"c": b"3"},
    {b"a": None, b"b": b"22", b"d": b""},  # a delete, an overwrite, an empty value
    {},  # a block that changed nothing
    {b"a": b"back", b"e/" + bytes(range(256)): b"x" * 5000},
]


def real_store(blocks: list[Changes] = BLOCKS) -> StateStore:
    """A store committed with the app's own hash formula, genesis included (height 0)."""
    s = StateStore(MEMORY)
    prev = b""
    for h, changes in enumerate([{b"genesis": b"g"}, *blocks]):
        prev = app_state.app_hash(prev, h, changes)
        s.commit(h, prev, changes)
    return s


# ---------------------------------------------------------------- the store's history


def test_history_records_each_height_sorted_with_deletes() -> None:
    s = real_store()
    assert s.changeset(0) == {b"genesis": b"g"}
    assert s.changeset(2) == {b"a": None, b"b": b"22", b"d": b""}
    assert list(s.changeset(2)) == [b"a", b"b", b"d"]
    assert s.changeset(3) == {} and s.app_hash_at(3) is not None
    assert s.app_hash_at(4) == s.app_hash
    assert s.app_hash_at(5) is None
    assert s.first_recorded_height() == 0
    assert s.change_at(b"a", 2) == (True, None)  # deleted, not "unchanged"
    assert s.change_at(b"d", 2) == (True, b"")
    assert s.change_at(b"c", 2) == (False, None)
    assert s.change_heights(b"a") == [4, 2, 1]
    assert s.change_heights(b"a", at_most=3) == [2, 1]
    assert s.change_heights(b"a", limit=1) == [4]
    assert s.change_heights(b"zz") == []


def test_history_survives_reopen_and_a_failed_commit_leaves_none(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = StateStore(path)
    s.commit(1, b"h1", {b"k": b"v"})
    bad: dict[bytes, Any] = {b"k": b"v2", b"z": object()}
    with pytest.raises(sqlite3.Error):
        s.commit(2, b"h2", bad)
    s.close()
    again = StateStore(path)
    assert again.changeset(1) == {b"k": b"v"} and again.app_hash_at(1) == b"h1"
    assert again.changeset(2) == {} and again.app_hash_at(2) is None
    assert again.change_heights(b"k") == [1]
    again.close()


def test_the_app_records_its_genesis_and_blocks() -> None:
    store = StateStore(MEMORY)
    app = CiferApp(store)
    app.init_chain(genesis())
    app.finalize_block(make_block(1, [], app_hash=app.info().last_app_hash))
    app.commit()
    # the recorded history reproduces every committed app hash
    for h in (0, 1):
        changes = store.changeset(h)
        prev = b"" if h == 0 else store.app_hash_at(h - 1)
        assert prev is not None
        assert app_state.app_hash(prev, h, changes) == store.app_hash_at(h)
    assert len(store.changeset(0)) > 10  # the genesis accounts


# ---------------------------------------------------------------- hash formula


changesets = st.dictionaries(
    st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=20)), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(changesets, st.binary(max_size=32), st.integers(0, 2**63 - 1))
def test_proof_formula_is_the_apps(changes: Changes, prev: bytes, height: int) -> None:
    leaves = [changeset_leaf(k, v) for k, v in sorted(changes.items())]
    ours = app_hash_from_root(prev, height, merkle.root(leaves))
    assert ours == app_state.app_hash(prev, height, changes)


# ---------------------------------------------------------------- state proofs


def test_every_write_of_every_height_proves_against_its_app_hash() -> None:
    s = real_store()
    proved = 0
    for h in range(0, s.height + 1):
        app_hash = s.app_hash_at(h)
        assert app_hash is not None
        for key, value in s.changeset(h).items():
            p = build_state_proof(s, key, h)
            assert (p.height, p.key, p.deleted) == (h, key, value is None)
            assert p.value == (value or b"")
            verify_state_proof(p, app_hash)
            # a proof travels as canonical bytes and decodes strictly
            assert encoding.decode(encoding.encode(p), StateProof) == p
            proved += 1
    assert proved == 1 + 3 + 3 + 2


def test_a_deleted_key_is_proven_deleted() -> None:
    s = real_store()
    p = build_state_proof(s, b"a", 2)
    assert p.deleted and p.value == b""
    app_hash = s.app_hash_at(2)
    assert app_hash is not None
    verify_state_proof(p, app_hash)
    # claiming the deleted key still held its old value fails
    with pytest.raises(ProofError, match="altered"):
        verify_state_proof(msgspec.structs.replace(p, deleted=False, value=b"1"), app_hash)


def test_building_a_proof_names_what_is_missing() -> None:
    s = real_store()
    with pytest.raises(ProofError, match="was not written at height 3"):
        build_state_proof(s, b"a", 3)
    with pytest.raises(ProofError, match="not committed"):
        build_state_proof(s, b"a", 9)
    with pytest.raises(ProofError, match="negative"):
        build_state_proof(s, b"a", -1)
    late = StateStore(MEMORY)  # e.g. a store that only kept history from height 7 on
    late.commit(7, b"h7", {b"k": b"v"})
    with pytest.raises(ProofError, match="no state history for height 7"):
        build_state_proof(late, b"k", 7)


def test_corrupt_history_is_refused_when_building() -> None:
    s = real_store()
    s._db.execute("INSERT INTO changes (height, key, value) VALUES (2, X'7a7a', X'00')")
    with pytest.raises(ProofError, match="does not reproduce"):
        build_state_proof(s, b"b", 2)


def tampered(p: StateProof) -> dict[str, StateProof]:
    mp = p.proof
    aunts = list(mp.aunts)
    aunts[0] = bytes(32)
    return {
        "value": msgspec.structs.replace(p, value=b"forged"),
        "key": msgspec.structs.replace(p, key=b"c"),
        "deleted flag": msgspec.structs.replace(p, deleted=True, value=b""),
        "height": msgspec.structs.replace(p, height=p.height + 1),
        "previous app hash": msgspec.structs.replace(p, prev_app_hash=bytes(32)),
        "aunt": msgspec.structs.replace(p, proof=msgspec.structs.replace(mp, aunts=aunts)),
        "index": msgspec.structs.replace(p, proof=msgspec.structs.replace(mp, index=2)),
        "path length": msgspec.structs.replace(
            p, proof=msgspec.structs.replace(mp, aunts=aunts[:-1])
        ),
    }


@pytest.mark.parametrize(
    "what",
    ["value", "key", "deleted flag", "height", "previous app hash", "aunt", "index", "path length"],
)
def test_any_tampering_fails_verification(what: str) -> None:
    s = real_store()
    p = build_state_proof(s, b"b", 1)
    app_hash = s.app_hash_at(1)
    assert app_hash is not None
    verify_state_proof(p, app_hash)
    with pytest.raises(ProofError):
        verify_state_proof(tampered(p)[what], app_hash)


def test_a_proof_does_not_verify_against_another_heights_hash() -> None:
    s = real_store()
    p = build_state_proof(s, b"b", 2)
    for h in (1, 3, 4):
        other = s.app_hash_at(h)
        assert other is not None
        with pytest.raises(ProofError, match="implies app hash"):
            verify_state_proof(p, other)


def test_malformed_proof_bytes_are_rejected_when_decoding() -> None:
    p = build_state_proof(real_store(), b"b", 1)
    raw = encoding.encode(p)
    with pytest.raises(EncodingError):
        encoding.decode(raw + b"\x00", StateProof)
    with pytest.raises(EncodingError):
        encoding.decode(raw[:-3], StateProof)


# ---------------------------------------------------------------- tx proofs


def _block(txs: list[bytes]) -> Block:
    return make_block(4, txs)


def test_tx_proofs_verify_against_the_header_only() -> None:
    txs = [bytes([i]) * (i + 1) for i in range(5)]
    block = _block(txs)
    for i, tx in enumerate(txs):
        p = build_tx_proof(block, i)
        assert p.tx == tx and p.height == 4
        verify_tx_proof(p, block.header)
        assert encoding.decode(encoding.encode(p), TxProof) == p
    p = build_tx_proof(block, 1)
    with pytest.raises(ProofError, match="not in block 4"):
        verify_tx_proof(msgspec.structs.replace(p, tx=b"other"), block.header)
    other: Header = _block([b"x"]).header
    with pytest.raises(ProofError, match="not in block 4"):
        verify_tx_proof(p, other)
    with pytest.raises(ProofError, match="height 4, header is 5"):
        verify_tx_proof(p, make_block(5, txs).header)
    with pytest.raises(ProofError, match="has no tx 5"):
        build_tx_proof(block, 5)

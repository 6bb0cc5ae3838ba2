"""The double-sign guard: what a validator key will and will not sign, across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifer.base.chain.types import NIL, PRECOMMIT, PREVOTE, Block, Header, prove_tx, verify_tx_proof
from cifer.base.consensus.privval import DoubleSignError, FileSignStateStore, Signer
from cifer.base.crypto.keys import PrivateKey

KEY = PrivateKey.from_secret("privval-test")
A, B = b"\x0a" * 32, b"\x0b" * 32


def test_refuses_to_sign_conflicting_content_at_one_position() -> None:
    s = Signer(KEY, "c")
    v = s.sign_vote(PREVOTE, 5, 0, A)
    assert s.sign_vote(PREVOTE, 5, 0, A).signature == v.signature  # a resend is fine
    with pytest.raises(DoubleSignError):
        s.sign_vote(PREVOTE, 5, 0, B)
    with pytest.raises(DoubleSignError):
        s.sign_vote(PREVOTE, 5, 0, NIL)


def test_refuses_to_go_back_in_height_round_or_step() -> None:
    s = Signer(KEY, "c")
    s.sign_vote(PRECOMMIT, 5, 2, A)
    for args in ((PREVOTE, 5, 2, A), (PRECOMMIT, 5, 1, A), (PRECOMMIT, 4, 9, A)):
        with pytest.raises(DoubleSignError):
            s.sign_vote(*args)
    with pytest.raises(DoubleSignError):
        s.sign_proposal(5, 2, -1, A)  # propose is an earlier step than precommit
    s.sign_proposal(5, 3, -1, B)  # a later round is fine
    s.sign_vote(PREVOTE, 6, 0, NIL)


def test_guard_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sign_state.bin"
    first = Signer(KEY, "c", FileSignStateStore(path))
    v = first.sign_vote(PRECOMMIT, 7, 1, A)
    restarted = Signer(KEY, "c", FileSignStateStore(path))  # as after kill -9
    with pytest.raises(DoubleSignError):
        restarted.sign_vote(PRECOMMIT, 7, 1, B)
    with pytest.raises(DoubleSignError):
        restarted.sign_vote(PREVOTE, 7, 1, A)
    assert restarted.sign_vote(PRECOMMIT, 7, 1, A).signature == v.signature


def test_state_is_durable_before_the_signature_is_returned(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sign_state.bin"
    store = FileSignStateStore(path)
    s = Signer(KEY, "c", store)

    def failing_save(state):
        raise OSError("disk full")

    monkeypatch.setattr(store, "save", failing_save)
    with pytest.raises(OSError):
        s.sign_vote(PREVOTE, 1, 0, A)  # no durable record, so no signature is released
    assert not path.exists()


def test_tx_inclusion_proofs_against_the_header() -> None:
    txs = [b"tx-%d" % i for i in range(7)]
    from cifer.base.chain.types import data_hash

    h = Header("c", 1, 1, b"", b"", data_hash(txs), b"", b"", b"", b"", b"", b"")
    block = Block(h, txs, None, [])
    for i, tx in enumerate(txs):
        proof = prove_tx(block, i)
        assert verify_tx_proof(h, tx, proof)
        assert not verify_tx_proof(h, b"forged", proof)
    other = Header("c", 1, 1, b"", b"", data_hash(txs[:-1]), b"", b"", b"", b"", b"", b"")
    assert not verify_tx_proof(other, txs[0], prove_tx(block, 0))

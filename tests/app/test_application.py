"""CiferApp as consensus sees it: admission, proposals, execution, commit, evidence."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

import cifer.app.application as application
from cifer.app.application import CiferApp, default_modules
from cifer.app.contracts import bank
from cifer.app.contracts.bank import BankModule
from cifer.app.contracts.validators import ValidatorsModule
from cifer.app.genesis_builder import validator_key
from cifer.app.module import (
    Code,
    Context,
    ExecMode,
    InvariantViolation,
    Module,
    MsgError,
    pack,
)
from cifer.app.state import StateOverlay
from cifer.app.txbuilder import build_body, make_tx, sign_tx
from cifer.base.chain.abci import ValidatorUpdate
from cifer.base.chain.types import (
    PRECOMMIT,
    AnyMsg,
    SignedTx,
    Vote,
    make_evidence,
    verify_tx_signatures,
    vote_sign_bytes,
)
from cifer.base.encoding import Canonical, encode
from cifer.base.store.state import StateStore

from .helpers import CHAIN_ID, FUND, KEYS, Chain, genesis, make_block, send

A, B, C = KEYS[0], KEYS[1], KEYS[2]


def new_app(store: StateStore | None = None, **kw: Any) -> CiferApp:
    app = CiferApp(store or StateStore(":memory:"), **kw)
    app.init_chain(genesis())
    return app


# --------------------------------------------------------------------------- check_tx


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00", b"garbage bytes", b"\x93\x01\x02"],
)
def test_check_tx_rejects_malformed_bytes_with_a_reason(app: CiferApp, raw: bytes) -> None:
    res = app.check_tx(raw)
    assert res.code == Code.MALFORMED_TX and res.log.startswith("malformed tx:")


def test_check_tx_rejects_truncated_padded_and_noncanonical_txs(app: CiferApp) -> None:
    good = send(A, 0, B.address, 1)
    for raw in (good[:-1], good + b"\x00"):
        res = app.check_tx(raw)
        assert res.code == Code.MALFORMED_TX, res.log
    # the same tx with its outer array length written as array16 instead of fixarray
    assert good[0] == 0x93
    res = app.check_tx(b"\xdc\x00\x03" + good[1:])
    assert res.code == Code.MALFORMED_TX and "non-canonical" in res.log


def test_check_tx_rejects_wrong_chain_bad_signature_unknown_message(app: CiferApp) -> None:
    wrong_chain = app.check_tx(send(A, 0, B.address, 1, chain_id="other"))
    assert wrong_chain.code == Code.WRONG_CHAIN and "'other'" in wrong_chain.log
    tx = sign_tx(build_body(CHAIN_ID, A.address, 0, [bank.send_msg(B.address, 1)]), A)
    forged = SignedTx(tx.body, [type(tx.signatures[0])(tx.signatures[0].pubkey, b"\x00" * 64)])
    bad = app.check_tx(forged.to_bytes())
    assert bad.code == Code.BAD_SIGNATURE and "invalid tx signature" in bad.log
    stolen = sign_tx(build_body(CHAIN_ID, A.address, 0, [bank.send_msg(B.address, 1)]), A)
    other = SignedTx(
        stolen.body, [sign_tx(build_body(CHAIN_ID, B.address, 0, []), B).signatures[0]]
    )
    assert app.check_tx(other.to_bytes()).code == Code.BAD_SIGNATURE
    unknown = make_tx(A, CHAIN_ID, 0, [AnyMsg("bank/Mint", b"\x90")])
    res = app.check_tx(unknown)
    assert res.code == Code.UNKNOWN_MSG and "unknown message type 'bank/Mint'" in res.log
    garbled = make_tx(A, CHAIN_ID, 0, [AnyMsg("bank/Send", b"\x01")])
    res = app.check_tx(garbled)
    assert res.code == Code.INVALID_MSG and "bank/Send" in res.log


def test_signatures_are_verified_once_per_tx(
    app: CiferApp, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = verify_tx_signatures

    def counting(tx: SignedTx) -> None:
        calls.append(tx.hash())
        real(tx)

    monkeypatch.setattr(application, "verify_tx_signatures", counting)
    txs = [send(A, 0, B.address, 1), send(B, 0, A.address, 1)]
    for t in txs:
        assert app.check_tx(t).ok
    assert app.prepare_proposal(chain.next_height, txs, 10**6) == txs
    block = chain.block(txs)
    assert app.process_proposal(block).accept
    app.finalize_block(block)
    app.commit()
    assert len(calls) == 2


# --------------------------------------------------------------------------- proposals


def test_prepare_proposal_keeps_valid_txs_in_order_within_max_bytes(
    app: CiferApp, chain: Chain
) -> None:
    t0, t1 = send(A, 0, B.address, 1), send(A, 1, B.address, 1)
    gap = send(B, 5, A.address, 1)
    junk = b"junk"
    t2 = send(C, 0, A.address, FUND * 10)  # its message will fail, but it pays: keep it
    picked = app.prepare_proposal(chain.next_height, [junk, t0, gap, t1, t2], 10**6)
    assert picked == [t0, t1, t2]
    # max_bytes: t0 alone fits; t1 does not fit after it and t2 is skipped too
    assert app.prepare_proposal(chain.next_height, [t0, t1, t2], len(t0) + 10) == [t0]
    # dropping t0 for size makes t1 (nonce 1) invalid: a later tx cannot jump the gap
    assert app.prepare_proposal(chain.next_height, [t1], 10**6) == []
    assert app.info().last_height == 0  # simulation wrote nothing


def test_process_proposal_rejects_bad_txs(app: CiferApp, chain: Chain) -> None:
    good = send(A, 0, B.address, 1)
    tx = sign_tx(build_body(CHAIN_ID, B.address, 0, [bank.send_msg(A.address, 1)]), B)
    badsig = SignedTx(tx.body, [type(tx.signatures[0])(tx.signatures[0].pubkey, b"\x01" * 64)])
    cases = {
        "malformed": [good, b"\xff\x00"],
        "signature": [good, badsig.to_bytes()],
        "unknown message": [make_tx(B, CHAIN_ID, 0, [AnyMsg("nope/Thing", b"")])],
        "block proposers only": [make_tx(B, CHAIN_ID, 0, [AnyMsg("fl/Aggregate", b"")])],
        "chain": [send(B, 0, A.address, 1, chain_id="other")],
        "nonce": [good, good],
        "fee": [send(B, 0, A.address, 1, fee=0)],
    }
    for word, txs in cases.items():
        verdict = app.process_proposal(chain.block(txs))
        assert not verdict.accept and word in verdict.reason, (word, verdict.reason)
    assert app.process_proposal(chain.block([good])).accept
    wrong_height = make_block(5, [good])
    verdict = app.process_proposal(wrong_height)
    assert not verdict.accept and "height 5" in verdict.reason


def test_process_proposal_accepts_failing_messages(app: CiferApp, chain: Chain) -> None:
    block = chain.block([send(A, 0, B.address, FUND * 2)])
    assert app.process_proposal(block).accept


def test_finalize_reuses_process_proposal_execution(app: CiferApp, chain: Chain) -> None:
    block = chain.block([send(A, 0, B.address, 3)])
    assert app.process_proposal(block).accept
    direct = new_app().finalize_block(block)
    assert app.finalize_block(block) == direct


# --------------------------------------------------------------------------- determinism


def drive(app: CiferApp, blocks: list[list[bytes]]) -> list[bytes]:
    chain = Chain(app)
    return [chain.run(txs).app_hash for txs in blocks]


def test_app_hash_is_deterministic_and_sensitive() -> None:
    blocks = [[send(A, 0, B.address, 5)], [], [send(B, 0, C.address, 7), send(A, 1, C.address, 1)]]
    h1, h2 = drive(new_app(), blocks), drive(new_app(), blocks)
    assert h1 == h2 and len(set(h1)) == 3
    other = [blocks[0], [], [send(B, 0, C.address, 8), send(A, 1, C.address, 1)]]
    h3 = drive(new_app(), other)
    assert h3[:2] == h1[:2] and h3[2] != h1[2]
    # a failed tx still changes state (fee, nonce), hence the hash
    h4 = drive(new_app(), [blocks[0], [send(B, 0, C.address, FUND * 2)]])
    assert h4[1] != h1[1]


def test_app_hash_commits_to_history_not_just_last_changes() -> None:
    blocks = [[send(A, 0, B.address, 5)], [send(C, 0, B.address, 5)]]
    swapped = [[send(C, 0, B.address, 5)], [send(A, 0, B.address, 5)]]
    assert drive(new_app(), blocks)[-1] != drive(new_app(), swapped)[-1]


# --------------------------------------------------------------------------- durability


def test_commit_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    app = new_app(StateStore(path))
    hashes = drive(app, [[send(A, 0, B.address, 5)], [send(A, 1, B.address, 6)]])
    app.store.close()
    again = CiferApp(StateStore(path))
    assert again.info().last_height == 2 and again.info().last_app_hash == hashes[-1]
    assert again.chain_id == CHAIN_ID
    assert again.balance(B.address) == FUND + 11 and again.nonce(A.address) == 2
    # and it continues exactly like an app that never stopped
    reference = new_app()
    drive(reference, [[send(A, 0, B.address, 5)], [send(A, 1, B.address, 6)]])
    nxt = [send(B, 0, C.address, 9)]
    assert drive(again, [nxt]) == drive(reference, [nxt])


class _FailingMeta:
    """Connection proxy whose meta write fails: a crash in the middle of StateStore.commit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, *a: Any) -> Any:
        return self._db.execute(*a)

    def executemany(self, sql: str, rows: Any) -> Any:
        if "meta" in sql:
            raise OSError("disk died mid-commit")
        return self._db.executemany(sql, rows)


def test_failure_mid_commit_leaves_previous_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    app = new_app(StateStore(path))
    chain = Chain(app)
    chain.run([send(A, 0, B.address, 5)])
    before = app.info()
    app.finalize_block(chain.block([send(A, 1, B.address, 100)]))
    real = app.store._db
    app.store._db = _FailingMeta(real)  # type: ignore[assignment]
    with pytest.raises(OSError, match="mid-commit"):
        app.commit()
    app.store._db = real
    reopened = CiferApp(StateStore(path))
    assert reopened.info() == before
    assert reopened.balance(B.address) == FUND + 5 and reopened.nonce(A.address) == 1
    # the pending block can still be committed once the disk is back
    app.commit()
    assert app.info().last_height == 2 and app.balance(B.address) == FUND + 105


def test_commit_without_finalize_and_wrong_height_are_errors(app: CiferApp) -> None:
    with pytest.raises(RuntimeError):
        app.commit()
    with pytest.raises(ValueError, match="height 3"):
        app.finalize_block(make_block(3, []))


# --------------------------------------------------------------------------- invariants


def test_corrupted_store_trips_the_supply_invariant(chain: Chain) -> None:
    app = chain.app
    chain.run([send(A, 0, B.address, 5)])
    key = b"bank/bal/" + B.address
    app.store.commit(app.store.height, app.store.app_hash, {key: encode(FUND + 6)})
    with pytest.raises(InvariantViolation, match="supply invariant broken"):
        chain.run()
    with pytest.raises(InvariantViolation, match=r"difference \+1"):
        CiferApp(app.store)  # a restarted node refuses the corrupted store too


class Mint(Canonical):
    amount: int


class BuggyMinter(Module):
    """A module with a bug: it creates money out of nothing."""

    name: ClassVar[str] = "minter"
    msgs: ClassVar[dict[str, type[Canonical]]] = {"minter/Mint": Mint}

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        assert isinstance(msg, Mint)
        ctx.state.set_int(b"bank/bal/" + sender, BankModule.balance(ctx.state, sender) + msg.amount)


def test_module_that_mints_halts_the_chain() -> None:
    app = CiferApp(StateStore(":memory:"), [*default_modules(), BuggyMinter()])
    app.init_chain(genesis())
    chain = Chain(app)
    tx = make_tx(A, CHAIN_ID, 0, [pack("minter/Mint", Mint(1))])
    assert app.check_tx(tx).ok  # admission does not run the invariants
    with pytest.raises(InvariantViolation):
        chain.run([tx])
    assert app.info().last_height == 0  # nothing committed


class Exploding(Module):
    name: ClassVar[str] = "boom"
    msgs: ClassVar[dict[str, type[Canonical]]] = {"boom/Go": Mint}

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        BankModule.transfer(ctx, sender, C.address, 1)
        if isinstance(msg, Mint) and msg.amount == 1:
            raise MsgError("refused by the module", Code.UNAUTHORIZED)
        raise KeyError("a bug")


def test_module_errors_become_deterministic_failed_txs(caplog: pytest.LogCaptureFixture) -> None:
    app = CiferApp(StateStore(":memory:"), [*default_modules(), Exploding()])
    app.init_chain(genesis())
    txs = [make_tx(A, CHAIN_ID, n, [pack("boom/Go", Mint(n + 1))]) for n in range(2)]
    out = Chain(app).run(txs)
    assert [(r.code, r.log) for r in out.tx_results] == [
        (Code.UNAUTHORIZED, "message 0 (boom): refused by the module"),
        (Code.INTERNAL, "message 0 (boom): internal error KeyError"),
    ]
    assert app.balance(C.address) == FUND  # both transfers reverted
    assert "boom" in caplog.text


def test_modules_must_be_well_formed() -> None:
    class NoPrefix(Module):
        name: ClassVar[str] = "x"
        msgs: ClassVar[dict[str, type[Canonical]]] = {"y/Do": Mint}

    with pytest.raises(ValueError, match="must look like 'x/MsgName'"):
        CiferApp(StateStore(":memory:"), [*default_modules(), NoPrefix()])
    with pytest.raises(ValueError, match="two modules named"):
        CiferApp(StateStore(":memory:"), [*default_modules(), BankModule()])


# --------------------------------------------------------------------------- evidence


def vote(i: int, height: int, block_hash: bytes) -> Vote:
    key = validator_key(i)
    sig = key.sign(vote_sign_bytes(CHAIN_ID, PRECOMMIT, height, 0, block_hash))
    return Vote(PRECOMMIT, height, 0, block_hash, key.address, sig)


def test_evidence_zeroes_power_and_jails_for_good(app: CiferApp, chain: Chain) -> None:
    chain.run()
    ev = make_evidence(vote(2, 1, b"\x01" * 32), vote(2, 1, b"\x02" * 32))
    out = chain.run(evidence=[ev])
    offender = validator_key(2).public.raw
    assert out.validator_updates == [ValidatorUpdate(offender, 0)]
    assert [e.type for e in out.events if e.type != "reputation"] == ["jail"]
    rep = [dict((a.key, a.value) for a in e.attrs) for e in out.events if e.type == "reputation"]
    assert any(r.get("event") == "evidence" and r.get("score_ppm") == "0" for r in rep), rep
    info = {v.pubkey: v for v in app.validators()}[offender.hex()]
    assert info.jailed and info.power == 0 and info.jailed_height == 2
    assert info.evidence_hash == ev.hash().hex()
    assert sum(1 for v in app.validators() if v.power > 0) == 3
    # the same or new evidence against a jailed validator changes nothing more
    again = make_evidence(vote(2, 2, b"\x03" * 32), vote(2, 2, b"\x04" * 32))
    assert chain.run(evidence=[again]).validator_updates == []


def test_jailed_validator_cannot_come_back(app: CiferApp, chain: Chain) -> None:
    ev = make_evidence(vote(1, 1, b"\x01" * 32), vote(1, 1, b"\x02" * 32))
    chain.run()
    chain.run(evidence=[ev])
    vm = app.modules.get(ValidatorsModule)
    ctx = Context(StateOverlay(app.store), 3, CHAIN_ID, b"", ExecMode.BLOCK, app.modules)
    with pytest.raises(ValueError, match="jailed"):
        vm.set_power(ctx, validator_key(1).public.raw, 10)
    pk = validator_key(1).public.raw
    assert vm.filter_updates(ctx, [ValidatorUpdate(pk, 10)]) == []


def test_evidence_is_deterministic_in_app_hash() -> None:
    ev = make_evidence(vote(3, 1, b"\x01" * 32), vote(3, 1, b"\x02" * 32))
    hashes: list[bytes] = []
    for _ in range(2):
        chain = Chain(new_app())
        chain.run()
        hashes.append(chain.run(evidence=[ev]).app_hash)
    plain = Chain(new_app())
    plain.run()
    assert hashes[0] == hashes[1] != plain.run().app_hash

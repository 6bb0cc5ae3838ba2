"""Block executor against the real application on SQLite files: crashes, evidence, validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts.bank import send_msg
from cifer.app.contracts.reputation import ReputationModule
from cifer.app.genesis_builder import account_key, make_genesis, validator_key
from cifer.app.txbuilder import make_tx
from cifer.base.chain.executor import BlockExecutor, ChainStateStore, increment_priorities
from cifer.base.chain.types import (
    PRECOMMIT,
    PREVOTE,
    Block,
    Commit,
    CommitSig,
    Header,
    ValidationError,
    Validator,
    ValidatorSet,
    data_hash,
    make_evidence,
    vote_sign_bytes,
)
from cifer.base.consensus.privval import unguarded_signer
from cifer.base.consensus.sim.runner import SIM_TIMEOUTS
from cifer.base.store.blocks import BlockStore
from cifer.base.store.state import StateStore

CHAIN = "exec-test"
ALICE, BOB = account_key(0), account_key(1)


def open_chain(d: Path, n_validators: int = 1) -> BlockExecutor:
    g = make_genesis(
        CHAIN, n_validators, funded_accounts=[ALICE.address, BOB.address], consensus=SIM_TIMEOUTS
    )
    app = CiferApp(StateStore(d / "state.db"))
    return BlockExecutor(g, app, BlockStore(d / "blocks.db"), chain_db=str(d / "chain.db"))


def decide(
    ex: BlockExecutor, txs: list[bytes], signers: int = 1, evidence=None, round: int = 0
) -> Block:
    h = ex.state.last_height + 1
    last = ex.blocks.load_commit(h - 1) if h > 1 else None
    block = ex.create_block(validator_key(0).address, txs, last, evidence or [], 1000 * h)
    ex.validate_block(block)
    sigs = []
    for i in range(signers):
        k = validator_key(i)
        sigs.append(
            CommitSig(k.address, k.sign(vote_sign_bytes(CHAIN, PRECOMMIT, h, round, block.hash())))
        )
    ex.apply_block(block, Commit(h, round, block.hash(), sorted(sigs, key=lambda c: c.validator)))
    return block


def transfer(nonce: int, amount: int = 5) -> bytes:
    return make_tx(ALICE, CHAIN, nonce, [send_msg(BOB.address, amount)])


def test_restart_resumes_from_the_last_committed_block(tmp_path: Path) -> None:
    ex = open_chain(tmp_path)
    for n in range(3):
        decide(ex, [transfer(n)])
    app_hash, bal = ex.state.app_hash, ex.app.balance(BOB.address)  # type: ignore[attr-defined]
    again = open_chain(tmp_path)
    assert again.handshake() == 0
    assert again.state.last_height == 3 and again.state.app_hash == app_hash
    assert again.app.balance(BOB.address) == bal  # type: ignore[attr-defined]
    decide(again, [transfer(3)])  # and the chain goes on
    assert again.state.last_height == 4


def test_crash_between_app_commit_and_chain_state_save(tmp_path: Path, monkeypatch) -> None:
    ex = open_chain(tmp_path)
    decide(ex, [transfer(0)])
    real_save = ChainStateStore.save

    def crash(self, state):
        if state.last_height == 2:
            raise KeyboardInterrupt("power cut")
        real_save(self, state)

    monkeypatch.setattr(ChainStateStore, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        decide(ex, [transfer(1)])
    monkeypatch.setattr(ChainStateStore, "save", real_save)
    again = open_chain(tmp_path)
    assert again.state.last_height == 1  # chain state lagged the app by one block
    again.handshake()
    assert again.state.last_height == 2
    assert again.state.app_hash == again.app.info().last_app_hash
    decide(again, [transfer(2)])
    assert again.app.nonce(ALICE.address) == 3  # type: ignore[attr-defined]


def test_crash_before_app_commit_replays_to_the_same_state(tmp_path: Path, monkeypatch) -> None:
    ref = open_chain(tmp_path / "ref")
    for n in range(3):
        decide(ref, [transfer(n, amount=7 + n)])

    ex = open_chain(tmp_path / "crash")
    for n in range(2):
        decide(ex, [transfer(n, amount=7 + n)])
    monkeypatch.setattr(
        CiferApp, "commit", lambda self: (_ for _ in ()).throw(OSError("disk gone"))
    )
    with pytest.raises(OSError):
        decide(ex, [transfer(2, amount=9)])
    monkeypatch.undo()
    again = open_chain(tmp_path / "crash")
    assert again.blocks.height == 3 and again.app.info().last_height == 2
    assert again.handshake() == 1
    assert again.state.app_hash == ref.state.app_hash
    assert again.state.last_block_hash == ref.state.last_block_hash


def test_evidence_removes_the_offender_two_heights_later(tmp_path: Path) -> None:
    ex = open_chain(tmp_path, n_validators=4)
    decide(ex, [], signers=3)
    cheat = validator_key(3)
    sign = unguarded_signer(cheat, CHAIN)
    ev = make_evidence(sign(PREVOTE, 1, 0, b"\x01" * 32), sign(PREVOTE, 1, 0, b"\x02" * 32))
    block = decide(ex, [], signers=3, evidence=[ev])
    assert block.evidence == [ev]
    assert cheat.address in ex.validator_set()  # height 3: the set was fixed at height 1
    decide(ex, [], signers=3)
    assert cheat.address not in ex.validator_set()  # height 4 = 2 + 2
    assert len(ex.validator_set()) == 3
    # the same offense cannot be punished twice
    with pytest.raises(ValidationError, match="already"):
        ex.check_evidence(ev)


def test_validate_block_names_what_is_wrong(tmp_path: Path) -> None:
    ex = open_chain(tmp_path)
    decide(ex, [transfer(0)])
    good = ex.create_block(
        validator_key(0).address, [transfer(1)], ex.blocks.load_commit(1), [], 5000
    )
    ex.validate_block(good)

    def with_header(block: Block, **changes) -> Block:
        fields = {f: getattr(block.header, f) for f in block.header.__struct_fields__}
        return Block(Header(**(fields | changes)), block.txs, block.last_commit, block.evidence)

    with pytest.raises(ValidationError, match="app_hash"):
        ex.validate_block(with_header(good, app_hash=b"\x00" * 32))
    with pytest.raises(ValidationError, match="time"):
        ex.validate_block(with_header(good, time_ms=1))
    with pytest.raises(ValidationError, match="data hash"):
        ex.validate_block(Block(good.header, [transfer(2)], good.last_commit, []))
    junk = [transfer(1), b"\x93\x01\x02"]
    bad = Block(with_header(good, data_hash=data_hash(junk)).header, junk, good.last_commit, [])
    with pytest.raises(ValidationError, match="application rejected"):
        ex.validate_block(bad)
    assert ex.state.last_height == 1  # nothing was applied by validating


def test_weighted_round_robin_matches_voting_power() -> None:
    keys = [validator_key(i) for i in range(4)]
    vset = ValidatorSet(
        [Validator(k.public.raw, p) for k, p in zip(keys, (1, 2, 3, 4), strict=True)]
    )
    prios = {v.address: 0 for v in vset.validators}
    counts = Counter(increment_priorities(vset, prios) for _ in range(1000))
    for k, p in zip(keys, (1, 2, 3, 4), strict=True):
        assert counts[k.address] == 100 * p


def _rep_events(ex: BlockExecutor, addr: bytes) -> list[str]:
    """Failed-proposal events of ``addr`` (validator 3 never signs: its misses are noise here)."""
    state, _ = ex.app.view()  # type: ignore[attr-defined]
    hist = ReputationModule.info(state, addr).history
    return [h.event for h in hist if h.event == "validator_failed_proposal"]


def test_proposers_of_failed_rounds_lose_reputation_from_the_next_block(tmp_path: Path) -> None:
    ex = open_chain(tmp_path, n_validators=4)
    decide(ex, [], signers=3)
    rotation = ex.proposer_rotation()  # height 2's proposers, round by round
    failed = {rotation(0), rotation(1)}
    decide(ex, [], signers=3, round=2)  # height 2 is decided in round 2
    # the proposers are known only when block 3 carries height 2's commit (round 2)
    assert all(_rep_events(ex, a) == [] for a in failed)
    block3 = decide(ex, [], signers=3)
    assert block3.last_commit is not None and block3.last_commit.round == 2
    assert len(failed) == 2
    for i in range(4):
        addr = validator_key(i).address
        want = ["validator_failed_proposal"] if addr in failed else []
        assert _rep_events(ex, addr) == want, i
    # a restart replays nothing, and the stored chain state still names the same proposers
    again = open_chain(tmp_path, n_validators=4)
    assert again.handshake() == 0 and again.state.last_priorities == ex.state.last_priorities


def test_a_round_zero_commit_names_no_failed_proposer(tmp_path: Path) -> None:
    ex = open_chain(tmp_path, n_validators=4)
    for _ in range(3):
        decide(ex, [], signers=3)
    assert all(_rep_events(ex, validator_key(i).address) == [] for i in range(4))

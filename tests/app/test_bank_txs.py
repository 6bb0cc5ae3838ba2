"""Transfers, fees, nonces, funds, multisig and vesting, through the ABCI calls."""

from __future__ import annotations

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts import bank
from cifer.app.contracts.bank import FEE_COLLECTOR, TOTAL_SUPPLY, tranche_amount
from cifer.app.genesis_builder import account_key, tranche_key
from cifer.app.module import Code
from cifer.app.txbuilder import assemble_multisig, build_body, member_signature, sign_tx
from cifer.base.chain.types import AnyMsg, SignedTx, TxBody
from cifer.base.crypto.multisig import MultisigPolicy
from cifer.base.encoding import encode
from cifer.base.store.state import StateStore

from .helpers import CHAIN_ID, FEE, FUND, KEYS, MS_KEYS, MS_POLICY, Chain, genesis, send

A, B, C = KEYS[0], KEYS[1], KEYS[2]


def test_transfer_moves_funds_and_charges_fee(app: CiferApp, chain: Chain) -> None:
    fees_before = app.balance(FEE_COLLECTOR)
    res = chain.run([send(A, 0, B.address, 123)])
    assert [r.code for r in res.tx_results] == [0]
    assert app.balance(A.address) == FUND - 123 - FEE
    assert app.balance(B.address) == FUND + 123
    assert app.balance(FEE_COLLECTOR) == fees_before + FEE
    assert app.nonce(A.address) == 1
    kinds = [e.type for e in res.tx_results[0].events]
    assert kinds == ["fee", "transfer"]
    app.check_invariants()


def test_replayed_tx_is_rejected_everywhere(app: CiferApp, chain: Chain) -> None:
    tx = send(A, 0, B.address, 5)
    assert app.check_tx(tx).ok
    chain.run([tx])
    res = app.check_tx(tx)
    assert res.code == Code.BAD_NONCE and "expects 1, tx has 0" in res.log
    blk = chain.block([tx])
    verdict = app.process_proposal(blk)
    assert not verdict.accept and "bad nonce" in verdict.reason
    # Even if such a block were decided, the replay changes nothing.
    out = app.finalize_block(blk)
    assert out.tx_results[0].code == Code.BAD_NONCE
    app.commit()
    assert app.balance(B.address) == FUND + 5 and app.nonce(A.address) == 1


def test_mempool_accepts_consecutive_nonces_and_rejects_gaps(app: CiferApp, chain: Chain) -> None:
    txs = [send(A, n, B.address, 1) for n in range(3)]
    assert all(app.check_tx(t).ok for t in txs)
    gap = app.check_tx(send(A, 4, B.address, 1))
    assert gap.code == Code.BAD_NONCE and "gap" in gap.log
    assert app.pending_nonce(A.address) == 3 and app.nonce(A.address) == 0
    chain.run(txs[:1])
    # the check state was reset to committed state: the mempool's re-check rebuilds it
    assert app.pending_nonce(A.address) == 1
    assert app.check_tx(txs[1]).ok and app.check_tx(txs[2]).ok


def test_insufficient_funds(app: CiferApp, chain: Chain) -> None:
    res = app.check_tx(send(A, 0, B.address, FUND))  # plus the fee is too much
    assert res.code == Code.INSUFFICIENT_FUNDS and "balance" in res.log
    # In a block the message fails but the fee and nonce are still taken.
    out = chain.run([send(A, 0, B.address, FUND)])
    assert out.tx_results[0].code == Code.INSUFFICIENT_FUNDS
    assert out.tx_results[0].log.startswith("message 0 (bank): insufficient funds")
    assert [e.type for e in out.tx_results[0].events] == ["fee"]
    assert app.balance(A.address) == FUND - FEE and app.balance(B.address) == FUND
    assert app.nonce(A.address) == 1


def test_failed_message_reverts_earlier_messages_of_the_same_tx(
    app: CiferApp, chain: Chain
) -> None:
    msgs = [bank.send_msg(B.address, 10), bank.send_msg(C.address, FUND)]
    raw = sign_tx(build_body(CHAIN_ID, A.address, 0, msgs), A).to_bytes()
    out = chain.run([raw])
    assert out.tx_results[0].code == Code.INSUFFICIENT_FUNDS
    assert out.tx_results[0].log.startswith("message 1 (bank)")
    assert app.balance(B.address) == FUND  # the first send was undone too


def test_fee_rules(app: CiferApp) -> None:
    low = app.check_tx(send(A, 0, B.address, 1, fee=FEE - 1))
    assert low.code == Code.FEE_TOO_LOW and "minimum" in low.log
    empty = account_key(999)
    poor = app.check_tx(send(empty, 0, B.address, 1))
    assert poor.code == Code.INSUFFICIENT_FUNDS and "fee" in poor.log


@pytest.mark.parametrize(
    ("amount", "to_self", "to_len", "message"),
    [
        (0, False, 20, "positive"),
        (-5, False, 20, "positive"),
        (TOTAL_SUPPLY + 1, False, 20, "exceeds the total supply"),
        (1, True, 20, "self-send"),
        (1, False, 19, "20-byte address"),
    ],
)
def test_send_amount_validation(
    app: CiferApp, amount: int, to_self: bool, to_len: int, message: str
) -> None:
    to = A.address if to_self else B.address[:to_len]
    msg = AnyMsg("bank/Send", encode(bank.Send(to, amount)))
    raw = sign_tx(build_body(CHAIN_ID, A.address, 0, [msg]), A).to_bytes()
    res = app.check_tx(raw)
    assert res.code == Code.INVALID_MSG and message in res.log
    assert app.pending_nonce(A.address) == 0  # nothing charged at admission


def test_supply_is_conserved_over_many_blocks(app: CiferApp, chain: Chain) -> None:
    for n in range(5):
        chain.run(
            [send(k, n, KEYS[(i + 1) % len(KEYS)].address, 1 + i) for i, k in enumerate(KEYS)]
        )
    app.check_invariants()
    assert app.balance(FEE_COLLECTOR) == 5 * len(KEYS) * FEE


# --------------------------------------------------------------------------- multisig


def ms_tx(signers: list[int], nonce: int = 0, policy: MultisigPolicy = MS_POLICY) -> bytes:
    body = build_body(CHAIN_ID, policy.address, nonce, [bank.send_msg(C.address, 77)])
    sigs = [member_signature(body, MS_KEYS[i]) for i in signers]
    return assemble_multisig(body, policy, sigs).to_bytes()


def test_multisig_k_of_n_accepts_enough_members(app: CiferApp, chain: Chain) -> None:
    assert app.check_tx(ms_tx([0, 2])).ok
    out = chain.run([ms_tx([0, 2]), ms_tx([0, 1, 2], nonce=1)])
    assert [r.code for r in out.tx_results] == [0, 0]
    assert app.balance(C.address) == FUND + 2 * 77
    assert app.balance(MS_POLICY.address) == FUND - 2 * (77 + FEE)


def test_multisig_rejects_too_few_or_foreign_signers(app: CiferApp, chain: Chain) -> None:
    few = app.check_tx(ms_tx([1]))
    assert few.code == Code.BAD_SIGNATURE and "needs 2 signatures, got 1" in few.log
    body = build_body(CHAIN_ID, MS_POLICY.address, 0, [bank.send_msg(C.address, 77)])
    foreign = assemble_multisig(
        body, MS_POLICY, [member_signature(body, MS_KEYS[0]), member_signature(body, A)]
    )
    res = app.check_tx(foreign.to_bytes())
    assert res.code == Code.BAD_SIGNATURE and "not a member" in res.log
    # a single member cannot pose as the multisig account with a plain signature
    solo = SignedTx(body, [member_signature(body, MS_KEYS[0])]).to_bytes()
    assert app.check_tx(solo).code == Code.BAD_SIGNATURE
    verdict = app.process_proposal(chain.block([ms_tx([1])]))
    assert not verdict.accept and "signature" in verdict.reason


def test_malformed_multisig_policy_is_a_rejection_not_a_crash(app: CiferApp) -> None:
    for threshold in (300, -1):
        bad = MultisigPolicy(threshold, [k.public.raw for k in MS_KEYS])
        body = TxBody(CHAIN_ID, MS_POLICY.address, 0, FEE, [bank.send_msg(C.address, 1)], "")
        raw = SignedTx(body, [member_signature(body, MS_KEYS[0])], bad).to_bytes()
        assert app.check_tx(raw).code == Code.BAD_SIGNATURE


# --------------------------------------------------------------------------- vesting


@pytest.fixture
def vest_chain() -> Chain:
    app = CiferApp(StateStore(":memory:"))
    app.init_chain(genesis(founders_cliff_height=5, founders_end_height=15))
    return Chain(app)


FOUNDER = tranche_key("founders")
T = tranche_amount("founders")


def test_vesting_schedule_is_linear_after_cliff(vest_chain: Chain) -> None:
    app = vest_chain.app
    v = app.account(FOUNDER.address).vesting
    assert v is not None
    assert [v.locked(h) for h in (0, 4)] == [T, T]
    assert v.locked(5) == T - T * 5 // 15  # accrued since start is released at the cliff
    assert v.locked(10) == T - T * 10 // 15
    assert v.locked(14) == T - T * 14 // 15 > 0
    assert v.locked(15) == 0 and v.locked(10**9) == 0
    assert all(v.locked(h) >= v.locked(h + 1) for h in range(20))


def test_locked_funds_cannot_pay_fees_or_move(vest_chain: Chain) -> None:
    app = vest_chain.app
    res = app.check_tx(send(FOUNDER, 0, B.address, 1))
    assert res.code == Code.FUNDS_LOCKED and "fee" in res.log and "locked" in res.log
    # Give the founder 10 free CIF: they can pay fees and send those, not the locked part.
    vest_chain.run([send(A, 0, FOUNDER.address, 10_000_000)])
    free = app.account(FOUNDER.address).spendable
    assert free == 10_000_000
    over = app.check_tx(send(FOUNDER, 0, B.address, free))  # free - fee is the most
    assert over.code == Code.FUNDS_LOCKED and "spendable is" in over.log
    out = vest_chain.run([send(FOUNDER, 0, B.address, free - FEE)])
    assert out.tx_results[0].code == 0
    assert app.account(FOUNDER.address).spendable == 0
    assert app.balance(FOUNDER.address) == T
    app.check_invariants()


def test_vested_funds_become_spendable_over_heights(vest_chain: Chain) -> None:
    app = vest_chain.app
    vest_chain.advance_to(9)  # next block is height 10
    info = app.account(FOUNDER.address)
    assert info.height == 10 and info.locked == T - T * 10 // 15
    assert info.spendable == T * 10 // 15
    out = vest_chain.run([send(FOUNDER, 0, B.address, info.spendable - FEE)])
    assert out.tx_results[0].code == 0
    # height 11 frees T // 15 more, which must cover this fee too
    assert app.check_tx(send(FOUNDER, 1, B.address, T // 15)).code == Code.FUNDS_LOCKED
    out = vest_chain.run([send(FOUNDER, 1, B.address, T // 15 - FEE)])
    assert out.tx_results[0].code == 0, out.tx_results[0].log
    vest_chain.advance_to(15)
    assert app.account(FOUNDER.address).locked == 0
    app.check_invariants()

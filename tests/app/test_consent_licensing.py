"""consent (grant, purposes, expiry, revocation) and licensing (offers, purchase, usage,
royalties split by share and up the derived-from chain)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts.bank import BankModule, send_msg
from cifer.app.contracts.consent import ConsentModule, grant_consent_msg, revoke_consent_msg
from cifer.app.contracts.licensing import (
    LicensingModule,
    Terms,
    buy_licence_msg,
    offer_licence_msg,
    record_usage_msg,
    withdraw_offer_msg,
)
from cifer.app.contracts.registry import BPS, EdgeKind, RegistryModule, transfer_asset_msg
from cifer.app.genesis_builder import account_key
from cifer.app.module import Code
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey, to_bech32

from .helpers import FEE, KEYS
from .test_registry import Ledger, assert_unchanged, frozen, register

A, B, C, D, E = KEYS


@pytest.fixture
def ledger(app: CiferApp) -> Ledger:
    return Ledger(app)


def bal(ledger: Ledger, key_addr: bytes) -> int:
    return BankModule.balance(ledger.state, key_addr)


# ------------------------------------------------------------------ consent


def test_only_the_owner_grants_consent(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    before = frozen(ledger.app, B.address)
    res = ledger.do(B, grant_consent_msg(asset_id=aid, purposes=["train"]))
    assert res.code == Code.UNAUTHORIZED and "only the owner of asset" in res.log
    assert_unchanged(ledger.app, before, B.address)
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"], grantee=B.address))
    c = ConsentModule.get(ledger.state, 1)
    assert c is not None and c.grantor == A.address and c.grantee == B.address
    assert c.granted == ledger.height and c.revoked == 0
    assert RegistryModule.history(ledger.state, aid)[-1].action == "consent_granted"


def test_consent_to_an_address_a_job_or_anyone(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"], grantee=B.address))
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["eval"], job_id=7))
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["research"]))
    st, h = ledger.state, ledger.height

    def found(purpose: str, who: bytes, job: int) -> int:
        c = ConsentModule.find(st, aid, purpose, who, job, h)
        return 0 if c is None else c.id

    assert found("train", B.address, 0) == 1 and found("train", B.address, 3) == 1
    assert found("train", C.address, 0) == 0  # B's grant is B's alone
    assert found("eval", C.address, 7) == 2 and found("eval", B.address, 7) == 2
    assert found("eval", C.address, 8) == 0  # job 7's grant is job 7's alone
    assert found("research", D.address, 0) == 3 and found("research", E.address, 99) == 3
    assert found("train", D.address, 7) == 0
    res = ledger.do(
        A, grant_consent_msg(asset_id=aid, purposes=["train"], grantee=B.address, job_id=7)
    )
    assert res.code == Code.INVALID_MSG and "not both" in res.log


def test_purpose_prefix_rule(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"], grantee=B.address))
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["eval:bias"], grantee=C.address))
    st, h = ledger.state, ledger.height
    assert ConsentModule.find(st, aid, "train:style", B.address, 0, h) is not None
    assert ConsentModule.find(st, aid, "train", B.address, 0, h) is not None
    assert ConsentModule.find(st, aid, "training", B.address, 0, h) is None
    assert ConsentModule.find(st, aid, "eval:bias:age", C.address, 0, h) is not None
    assert ConsentModule.find(st, aid, "eval", C.address, 0, h) is None  # not vice versa
    assert ConsentModule.find(st, aid, "eval:speed", C.address, 0, h) is None
    res = ledger.do(A, grant_consent_msg(asset_id=aid, purposes=["Train Style"]))
    assert res.code == Code.INVALID_MSG and "is malformed" in res.log


def test_consent_expires_after_its_last_height(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    res = ledger.do(A, grant_consent_msg(asset_id=aid, purposes=["train"], expires=1))
    assert res.code != 0 and "already past" in res.log
    last = ledger.height + 3
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"], expires=last))
    st = ledger.state
    assert ConsentModule.find(st, aid, "train", B.address, 0, last) is not None
    assert ConsentModule.find(st, aid, "train", B.address, 0, last + 1) is None
    why = ConsentModule.explain_missing(st, aid, "train", B.address, 0, last + 1)
    assert why == f"consent 1 expired at height {last}"
    assert "no consent covers purpose 'sell'" in ConsentModule.explain_missing(
        st, aid, "sell", B.address, 0, last
    )


def test_revocation(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"], grantee=B.address))
    before = frozen(ledger.app, C.address)
    res = ledger.do(C, revoke_consent_msg(1))
    assert res.code == Code.UNAUTHORIZED and "only the grantor or the asset's owner" in res.log
    assert_unchanged(ledger.app, before, C.address)
    res = ledger.do(B, revoke_consent_msg(1))  # the grantee cannot revoke either
    assert res.code == Code.UNAUTHORIZED
    res = ledger.do(A, revoke_consent_msg(9))
    assert res.code == Code.NOT_FOUND and "unknown consent 9" in res.log

    ledger.ok(A, revoke_consent_msg(1))
    at = ledger.height
    st = ledger.state
    c = ConsentModule.get(st, 1)
    assert c is not None and c.revoked == at
    assert ConsentModule.find(st, aid, "train", B.address, 0, at) is None
    assert ConsentModule.for_asset(st, aid) == [c]  # kept for the history
    why = ConsentModule.explain_missing(st, aid, "train:style", B.address, 0, at + 1)
    assert why == f"consent 1 was revoked at height {at}"
    res = ledger.do(A, revoke_consent_msg(1))
    assert res.code != 0 and f"already revoked at height {at}" in res.log
    assert RegistryModule.history(st, aid)[-1].action == "consent_revoked"


def test_new_owner_may_revoke_the_old_owners_grant(ledger: Ledger) -> None:
    aid = register(ledger, A, "data")
    ledger.ok(A, grant_consent_msg(asset_id=aid, purposes=["train"]))
    ledger.ok(A, transfer_asset_msg(aid, B.address))
    ledger.ok(B, revoke_consent_msg(1))
    c = ConsentModule.get(ledger.state, 1)
    assert c is not None and c.revoked == ledger.height


# ------------------------------------------------------------------ offers and purchase


def _coauthored(ledger: Ledger) -> bytes:
    """Owned by A; authors B (first, 40%) and A (60%): remainders go to B, the first."""
    return register(ledger, A, "song", [(B, 4_000), (A, 6_000)], kind="content")


def test_only_the_owner_offers_and_terms_must_be_consistent(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    res = ledger.do(B, offer_licence_msg(aid, Terms(allowed=["train"])))  # an author, not owner
    assert res.code == Code.UNAUTHORIZED and "only the owner" in res.log
    before = frozen(ledger.app, A.address)
    res = ledger.do(A, offer_licence_msg(aid, Terms(allowed=["train:style"], denied=["train"])))
    assert res.code == Code.INVALID_MSG
    assert "allowed purpose 'train:style' is itself denied by 'train'" in res.log
    res = ledger.do(A, offer_licence_msg(aid, Terms(allowed=["train"], denied=["train"])))
    assert res.code == Code.INVALID_MSG and "is itself denied" in res.log
    res = ledger.do(A, offer_licence_msg(aid, Terms(allowed=["train"], derivative_bps=BPS + 1)))
    assert res.code == Code.INVALID_MSG and "derivative_bps" in res.log
    res = ledger.do(A, offer_licence_msg(aid, Terms(allowed=["train"], price=-1)))
    assert res.code == Code.INVALID_MSG and "cannot be negative" in res.log
    assert_unchanged(ledger.app, before, A.address)
    # a narrower denial inside a broader permission is fine
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], denied=["train:likeness"])))
    o = LicensingModule.offer(ledger.state, 1)
    assert o is not None and o.seller == A.address and o.sold == 0


def test_buy_pays_the_price_split_by_share_with_the_remainder_to_the_first_author(
    ledger: Ledger,
) -> None:
    aid = _coauthored(ledger)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], price=1_003)))
    a0, b0, c0 = bal(ledger, A.address), bal(ledger, B.address), bal(ledger, C.address)
    res = ledger.ok(C, buy_licence_msg(1, max_price=1_003))
    # 40% of 1003 = 401.2, 60% = 601.8: 401 + 601 = 1002, the 1 left goes to B (first)
    assert bal(ledger, B.address) == b0 + 402
    assert bal(ledger, A.address) == a0 + 601
    assert bal(ledger, C.address) == c0 - 1_003 - FEE
    royalties = [e for e in res.events if e.type == "royalty"]
    assert [{a.key: a.value for a in e.attrs}["amount"] for e in royalties] == ["402", "601"]
    st = ledger.state
    lic = LicensingModule.licence(st, 1)
    assert lic is not None and lic.holder == C.address and lic.paid == 1_003 and lic.uses == 0
    assert LicensingModule.held_by(st, C.address) == [lic]
    o = LicensingModule.offer(st, 1)
    assert o is not None and o.sold == 1
    edges = RegistryModule.edges_out(st, aid, EdgeKind.LICENSED_TO)
    assert [(e.dst, e.weight) for e in edges] == [(C.address, 1)]
    ledger.app.check_invariants()


def test_max_price_sold_out_withdrawn_and_own_offer(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], price=500), max_sales=1))
    before = frozen(ledger.app, C.address)
    res = ledger.do(C, buy_licence_msg(1, max_price=499))
    assert res.code != 0 and "offer 1 costs 500 ucif, above max_price 499" in res.log
    assert_unchanged(ledger.app, before, C.address)
    res = ledger.do(A, buy_licence_msg(1, max_price=500))
    assert res.code != 0 and "cannot buy its own offer" in res.log
    ledger.ok(C, buy_licence_msg(1, max_price=500))
    before = frozen(ledger.app, D.address)
    res = ledger.do(D, buy_licence_msg(1, max_price=500))
    assert res.code != 0 and "offer 1 is sold out (1 of 1 licences)" in res.log
    assert_unchanged(ledger.app, before, D.address)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], price=5)))
    res = ledger.do(B, withdraw_offer_msg(2))
    assert res.code == Code.UNAUTHORIZED
    ledger.ok(A, withdraw_offer_msg(2))
    res = ledger.do(D, buy_licence_msg(2, max_price=5))
    assert res.code != 0 and f"offer 2 was withdrawn at height {ledger.height - 1}" in res.log
    res = ledger.do(D, buy_licence_msg(3, max_price=5))
    assert res.code == Code.NOT_FOUND and "unknown offer 3" in res.log


def test_offer_expiry_refuses_late_buyers(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    last = ledger.height + 2
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], expires=last)))
    assert ledger.height + 1 == last
    ledger.ok(C, buy_licence_msg(1, max_price=0))  # at the last height
    res = ledger.do(D, buy_licence_msg(1, max_price=0))
    assert res.code != 0 and f"offer 1 expired at height {last}" in res.log


# ------------------------------------------------------------------ usage


def test_record_usage_checks_holder_purpose_expiry_and_uses_and_pays_royalties(
    ledger: Ledger,
) -> None:
    aid = _coauthored(ledger)
    expires = ledger.height + 20
    terms = Terms(
        allowed=["train", "synthesize"],
        denied=["synthesize:likeness"],
        expires=expires,
        max_uses=2,
        royalty_per_use=7,
    )
    ledger.ok(A, offer_licence_msg(aid, terms))
    ledger.ok(C, buy_licence_msg(1, max_price=0))

    res = ledger.do(D, record_usage_msg(1, "train:style"))
    assert res.code == Code.UNAUTHORIZED
    assert f"licence 1 is held by {to_bech32(C.address)}, not {to_bech32(D.address)}" in res.log

    before = frozen(ledger.app, C.address)
    res = ledger.do(C, record_usage_msg(1, "synthesize:likeness"))
    assert res.code == Code.UNAUTHORIZED
    assert "purpose 'synthesize:likeness' is denied ('synthesize:likeness')" in res.log
    res = ledger.do(C, record_usage_msg(1, "synthesize:likeness:face"))
    assert res.code == Code.UNAUTHORIZED and "is denied" in res.log
    res = ledger.do(C, record_usage_msg(1, "sell"))
    assert res.code == Code.UNAUTHORIZED
    assert "purpose 'sell' is not among the allowed purposes train, synthesize" in res.log
    assert_unchanged(ledger.app, before, C.address)

    a0, b0 = bal(ledger, A.address), bal(ledger, B.address)
    res = ledger.ok(C, record_usage_msg(1, "train:style", "fl/job/9"))
    # 7 ucif: B 40% = 2.8 -> 2 (+1 remainder, first author), A 60% = 4.2 -> 4
    assert bal(ledger, B.address) == b0 + 3 and bal(ledger, A.address) == a0 + 4
    u = LicensingModule.usage(ledger.state, 1)
    assert u is not None and u.purpose == "train:style" and u.reference == "fl/job/9"
    assert u.royalty == 7 and u.height == ledger.height and u.user == C.address
    assert "usage_recorded" in [e.type for e in res.events]
    ledger.ok(C, record_usage_msg(1, "synthesize:music"))
    lic = LicensingModule.licence(ledger.state, 1)
    assert lic is not None and lic.uses == 2

    before = frozen(ledger.app, C.address)
    res = ledger.do(C, record_usage_msg(1, "train"))
    assert res.code == Code.UNAUTHORIZED
    assert "licence 1 is exhausted: 2 of 2 uses recorded" in res.log
    assert_unchanged(ledger.app, before, C.address)
    ledger.app.check_invariants()


def test_licence_expires_after_its_last_height(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    last = ledger.height + 3
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], expires=last)))
    ledger.ok(C, buy_licence_msg(1, max_price=0))
    assert ledger.height + 1 == last
    ledger.ok(C, record_usage_msg(1, "train"))  # at the last height
    before = frozen(ledger.app, C.address)
    res = ledger.do(C, record_usage_msg(1, "train"))
    assert res.code == Code.UNAUTHORIZED
    assert f"licence 1 expired at height {last} (now {last + 1})" in res.log
    assert_unchanged(ledger.app, before, C.address)


def test_terms_are_a_snapshot_at_purchase(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], royalty_per_use=10)))
    ledger.ok(C, buy_licence_msg(1, max_price=0))
    ledger.ok(A, withdraw_offer_msg(1))
    ledger.ok(C, record_usage_msg(1, "train"))  # the withdrawal does not void the licence
    u = LicensingModule.usage(ledger.state, 1)
    assert u is not None and u.royalty == 10


def test_derivative_royalties_flow_up_to_the_parents_authors(ledger: Ledger) -> None:
    g = register(ledger, E, "grandparent")
    p = register(ledger, D, "parent", parents=[g])
    k = register(ledger, A, "kid", [(A, 5_000), (B, 5_000)], parents=[p])
    ledger.ok(E, offer_licence_msg(g, Terms(allowed=["train"], derivative_bps=1_000)))  # 1
    ledger.ok(D, offer_licence_msg(p, Terms(allowed=["train"], derivative_bps=2_500)))  # 2
    ledger.ok(A, offer_licence_msg(k, Terms(allowed=["train"], price=1_000)))  # 3
    # the largest derivative_bps among open offers counts; a withdrawn one does not
    ledger.ok(D, offer_licence_msg(p, Terms(allowed=["eval"], derivative_bps=9_000)))  # 4
    ledger.ok(D, withdraw_offer_msg(4))
    st = ledger.state
    assert LicensingModule.derivative_bps(st, p) == 2_500
    # 1000 for kid: parent 25% = 250, of which grandparent 10% = 25; kid's authors 750
    assert sorted(LicensingModule.payees(st, k, 1_000)) == sorted(
        [(E.address, 25), (D.address, 225), (A.address, 375), (B.address, 375)]
    )
    before = {key.address: bal(ledger, key.address) for key in (A, B, D, E)}
    ledger.ok(C, buy_licence_msg(3, max_price=1_000))
    gained = {key.address: bal(ledger, key.address) - before[key.address] for key in (A, B, D, E)}
    assert gained == {E.address: 25, D.address: 225, A.address: 375, B.address: 375}
    # once the grandparent's offer is withdrawn it claims nothing more
    ledger.ok(E, withdraw_offer_msg(1))
    assert sorted(LicensingModule.payees(ledger.state, k, 1_000)) == sorted(
        [(D.address, 250), (A.address, 375), (B.address, 375)]
    )
    ledger.app.check_invariants()


# ------------------------------------------------------------------ no state change


POOR = account_key(77)


def _poor(ledger: Ledger) -> None:
    """Fund a fresh account with enough for a few fees, not for the prices below."""
    ledger.ok(E, send_msg(POOR.address, 10 * FEE + 50))


def _setup(ledger: Ledger) -> None:
    """Offer 1 expires soon (licence 2, D, passes its expiry); offer 2 allows one use
    (licence 1, C, used once); offer 3 costs more than the poor account has."""
    aid = _coauthored(ledger)
    soon = ledger.height + 7
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], expires=soon, price=100)))
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], max_uses=1)))
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], price=10 * FEE + 100)))
    ledger.ok(C, buy_licence_msg(2, max_price=0))  # licence 1
    ledger.ok(C, record_usage_msg(1, "train"))
    ledger.ok(D, buy_licence_msg(1, max_price=100))  # licence 2
    _poor(ledger)
    ledger.empty(max(0, soon - ledger.height))
    assert ledger.height == soon  # licence 2 and offer 1 are past from the next block on


@pytest.mark.parametrize(
    ("who", "msg", "code", "needle"),
    [
        (D, lambda: record_usage_msg(2, "train"), Code.UNAUTHORIZED, "licence 2 expired at height"),
        (
            C,
            lambda: record_usage_msg(1, "train"),
            Code.UNAUTHORIZED,
            "licence 1 is exhausted: 1 of 1 uses recorded",
        ),
        (
            POOR,
            lambda: buy_licence_msg(3, max_price=10**9),
            Code.INSUFFICIENT_FUNDS,
            f"price of offer 3 of {10 * FEE + 100} ucif exceeds the spendable balance of "
            f"{to_bech32(POOR.address)}",
        ),
        (E, lambda: buy_licence_msg(1, max_price=100), Code.MSG_FAILED, "offer 1 expired"),
        (C, lambda: record_usage_msg(5, "train"), Code.NOT_FOUND, "unknown licence 5"),
    ],
    ids=[
        "expired-licence",
        "exhausted-licence",
        "payment-above-balance",
        "expired-offer",
        "unknown-licence",
    ],
)
def test_licensing_bad_input_changes_nothing(
    ledger: Ledger,
    who: PrivateKey,
    msg: Callable[[], AnyMsg],
    code: int,
    needle: str,
) -> None:
    _setup(ledger)
    before = frozen(ledger.app, who.address)
    res = ledger.do(who, msg())
    assert res.code == code, res.log
    assert needle in res.log
    assert_unchanged(ledger.app, before, who.address)


@pytest.mark.parametrize(
    ("purpose", "needle"),
    [
        ("train:likeness", "licence 1: purpose 'train:likeness' is denied ('train:likeness')"),
        ("synthesize", "licence 1: purpose 'synthesize' is not among the allowed purposes train"),
    ],
    ids=["denied", "not-allowed"],
)
def test_purpose_not_allowed_changes_nothing(ledger: Ledger, purpose: str, needle: str) -> None:
    aid = _coauthored(ledger)
    terms = Terms(allowed=["train"], denied=["train:likeness"], royalty_per_use=50)
    ledger.ok(A, offer_licence_msg(aid, terms))
    ledger.ok(C, buy_licence_msg(1, max_price=0))
    before = frozen(ledger.app, C.address)
    res = ledger.do(C, record_usage_msg(1, purpose))
    assert res.code == Code.UNAUTHORIZED and needle in res.log
    assert_unchanged(ledger.app, before, C.address)
    lic = LicensingModule.licence(ledger.state, 1)
    assert lic is not None and lic.uses == 0


def test_royalty_above_balance_changes_nothing(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], royalty_per_use=10 * FEE + 1)))
    _poor(ledger)
    ledger.ok(POOR, buy_licence_msg(1, max_price=0))
    before = frozen(ledger.app, POOR.address)
    res = ledger.do(POOR, record_usage_msg(1, "train"))
    assert res.code == Code.INSUFFICIENT_FUNDS and "royalty of licence 1" in res.log
    assert_unchanged(ledger.app, before, POOR.address)
    ledger.app.check_invariants()


def test_withdrawing_twice_is_refused_and_keeps_the_first_height(ledger: Ledger) -> None:
    aid = _coauthored(ledger)
    ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"])))
    ledger.ok(A, withdraw_offer_msg(1))
    at = ledger.height
    res = ledger.do(A, withdraw_offer_msg(1))
    assert res.code != 0 and f"offer 1 was already withdrawn at height {at}" in res.log
    o = LicensingModule.offer(ledger.state, 1)
    assert o is not None and o.withdrawn == at

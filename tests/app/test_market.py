"""market: listings of open offers for datasets and models, search, delisting."""

from __future__ import annotations

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts.licensing import (
    Terms,
    buy_licence_msg,
    offer_licence_msg,
    withdraw_offer_msg,
)
from cifer.app.contracts.market import MarketModule, delist_msg, list_offer_msg
from cifer.app.contracts.registry import AssetMeta
from cifer.app.module import Code

from .helpers import KEYS
from .test_registry import Ledger, assert_unchanged, frozen, module_state, register

A, B, C, D, E = KEYS


@pytest.fixture
def ledger(app: CiferApp) -> Ledger:
    return Ledger(app)


def _catalogue(ledger: Ledger) -> None:
    """A's dataset 'cats' (offer 1), model 'catnet' (offer 2), content 'poem' (offer 3);
    B's dataset 'dogs' (offer 4, one sale only)."""
    cats = register(ledger, A, "cats", meta=AssetMeta(name="Cat photos", tags=["images", "cats"]))
    net = register(
        ledger, A, "catnet", kind="model", meta=AssetMeta(name="CatNet", tags=["images"])
    )
    poem = register(ledger, A, "poem", kind="content", meta=AssetMeta(name="Poem", tags=["text"]))
    dogs = register(ledger, B, "dogs", meta=AssetMeta(name="Dog photos", tags=["images"]))
    for aid in (cats, net, poem):
        ledger.ok(A, offer_licence_msg(aid, Terms(allowed=["train"], price=10)))
    ledger.ok(B, offer_licence_msg(dogs, Terms(allowed=["train"]), max_sales=1))


def _titles(ledger: Ledger, *, kind: str = "", tag: str = "", text: str = "") -> list[str]:
    found = MarketModule.search(ledger.state, ledger.height + 1, kind=kind, tag=tag, text=text)
    return [e.listing.title for e in found]


def test_list_only_own_open_offers_of_datasets_and_models(ledger: Ledger) -> None:
    _catalogue(ledger)
    before = frozen(ledger.app, B.address)
    res = ledger.do(B, list_offer_msg(1, "cats"))
    assert res.code == Code.UNAUTHORIZED and "only the seller of offer 1" in res.log
    assert_unchanged(ledger.app, before, B.address)

    res = ledger.ok(A, list_offer_msg(1, "Cats for training", "10k labelled cat photos"))
    assert "market_listed" in [e.type for e in res.events]
    lst = MarketModule.listing(ledger.state, 1)
    assert lst is not None and lst.kind == "dataset" and lst.tags == ["images", "cats"]
    assert lst.seller == A.address and lst.listed == ledger.height
    ledger.ok(A, list_offer_msg(2, "CatNet weights"))

    before = frozen(ledger.app, A.address)
    res = ledger.do(A, list_offer_msg(3, "A poem"))
    assert res.code != 0 and "the market lists datasets and models" in res.log
    assert "is content" in res.log
    res = ledger.do(A, list_offer_msg(1, "again"))
    assert res.code != 0 and "offer 1 is already listed" in res.log
    res = ledger.do(A, list_offer_msg(9, "nothing"))
    assert res.code == Code.NOT_FOUND and "unknown offer 9" in res.log
    res = ledger.do(A, list_offer_msg(1, ""))
    assert res.code == Code.INVALID_MSG and "title must be" in res.log
    assert_unchanged(ledger.app, before, A.address)

    ledger.ok(B, withdraw_offer_msg(4))
    res = ledger.do(B, list_offer_msg(4, "dogs"))
    assert res.code != 0 and "offer 4 is withdrawn, sold out or expired" in res.log


def test_search_by_kind_tag_and_text(ledger: Ledger) -> None:
    _catalogue(ledger)
    ledger.ok(A, list_offer_msg(1, "Cats for training", "ten thousand labelled photos"))
    ledger.ok(A, list_offer_msg(2, "Vision model"))
    ledger.ok(B, list_offer_msg(4, "Dogs"))
    assert sorted(_titles(ledger)) == ["Cats for training", "Dogs", "Vision model"]
    assert sorted(_titles(ledger, kind="dataset")) == ["Cats for training", "Dogs"]
    assert _titles(ledger, kind="model") == ["Vision model"]
    assert _titles(ledger, kind="content") == []
    assert sorted(_titles(ledger, tag="images")) == ["Cats for training", "Dogs", "Vision model"]
    assert _titles(ledger, tag="cats") == ["Cats for training"]
    assert _titles(ledger, tag="images", kind="model") == ["Vision model"]
    assert _titles(ledger, tag="text") == []
    assert _titles(ledger, text="CATNET") == ["Vision model"]  # the asset's name, any case
    assert _titles(ledger, text="labelled") == ["Cats for training"]  # the description
    assert sorted(_titles(ledger, text="photos")) == ["Cats for training", "Dogs"]
    assert _titles(ledger, text="dog", kind="model") == []
    entries = MarketModule.search(ledger.state, ledger.height + 1, tag="cats")
    assert entries[0].offer.terms.price == 10 and entries[0].asset.meta.name == "Cat photos"
    assert len(MarketModule.search(ledger.state, ledger.height + 1, limit=2)) == 2


def test_withdrawn_sold_out_and_expired_offers_are_hidden(ledger: Ledger) -> None:
    _catalogue(ledger)
    ledger.ok(A, list_offer_msg(1, "Cats"))
    ledger.ok(A, list_offer_msg(2, "CatNet"))
    ledger.ok(B, list_offer_msg(4, "Dogs"))
    ledger.ok(A, withdraw_offer_msg(2))
    assert sorted(_titles(ledger)) == ["Cats", "Dogs"]
    ledger.ok(C, buy_licence_msg(4, max_price=0))  # its only sale
    assert _titles(ledger) == ["Cats"]
    assert MarketModule.listing(ledger.state, 4) is not None  # hidden, not removed
    # an expiring offer is listed until its last height, then hidden
    cows = register(ledger, B, "cows", meta=AssetMeta(name="Cows", tags=["images"]))
    last = ledger.height + 3
    ledger.ok(B, offer_licence_msg(cows, Terms(allowed=["train"], expires=last)))  # offer 5
    ledger.ok(B, list_offer_msg(5, "Cows"))
    st = ledger.state
    assert "Cows" in [e.listing.title for e in MarketModule.search(st, last, tag="images")]
    assert "Cows" not in [e.listing.title for e in MarketModule.search(st, last + 1, tag="images")]


def test_delist(ledger: Ledger) -> None:
    _catalogue(ledger)
    empty_market = {k: v for k, v in module_state(ledger.app).items() if k.startswith(b"market/")}
    assert empty_market == {}
    ledger.ok(A, list_offer_msg(1, "Cats"))
    ledger.ok(A, list_offer_msg(2, "CatNet"))
    res = ledger.do(B, delist_msg(1))
    assert res.code == Code.UNAUTHORIZED
    res = ledger.do(B, delist_msg(4))
    assert res.code == Code.NOT_FOUND and "offer 4 is not listed" in res.log
    res = ledger.ok(A, delist_msg(1))
    assert "market_delisted" in [e.type for e in res.events]
    assert MarketModule.listing(ledger.state, 1) is None
    assert _titles(ledger, tag="cats") == [] and _titles(ledger, kind="dataset") == []
    ledger.ok(A, delist_msg(2))
    market = {k for k in module_state(ledger.app) if k.startswith(b"market/")}
    assert market == set()  # every index entry went with the listings
    ledger.ok(A, list_offer_msg(1, "Cats again"))  # and it may be listed again
    assert _titles(ledger) == ["Cats again"]

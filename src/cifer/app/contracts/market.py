"""market: public listings of datasets and models, bought through licensing.

A listing points at an open licensing offer; the market only indexes it by the asset's kind
and tags so buyers can find it, and adds a title and a short description. Buying is
``licensing/BuyLicence`` on the listed offer: the market never holds funds. A listing
whose offer was withdrawn, sold out or expired is hidden from search (checked when read)
and can be removed by its seller.
"""

from __future__ import annotations

from typing import ClassVar, Final

import msgspec

from cifer.app.contracts.licensing import LicensingModule, Offer
from cifer.app.contracts.registry import Asset, RegistryModule
from cifer.app.module import Code, Context, Module, MsgError, pack
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg
from cifer.base.encoding import Canonical

LISTABLE_KINDS: Final = ("dataset", "model")
MAX_TITLE: Final = 128
MAX_DESCRIPTION: Final = 512
MAX_RESULTS: Final = 500

_LIST: Final = b"market/listing/"
_KIND: Final = b"market/kind/"
_TAG: Final = b"market/tag/"


class ListOffer(Canonical, frozen=True):
    offer_id: int
    title: str
    description: str = ""


class Delist(Canonical, frozen=True):
    offer_id: int


class Listing(Canonical, frozen=True):
    offer_id: int
    asset_id: bytes
    seller: bytes
    kind: str
    tags: list[str]
    title: str
    description: str
    listed: int


class MarketEntry(msgspec.Struct, frozen=True):
    """A listing with what a buyer needs to decide (for the API and CLI)."""

    listing: Listing
    offer: Offer
    asset: Asset


def _tag_key(tag: str, offer_id: int) -> bytes:
    return _TAG + tag.encode() + b"\x00" + offer_id.to_bytes(8, "big")


class MarketModule(Module):
    name: ClassVar[str] = "market"
    msgs: ClassVar[dict[str, type[Canonical]]] = {
        "market/ListOffer": ListOffer,
        "market/Delist": Delist,
    }

    @staticmethod
    def listing(state: StateOverlay, offer_id: int) -> Listing | None:
        raw = state.get(_LIST + offer_id.to_bytes(8, "big"))
        return None if raw is None else encoding.decode_trusted(raw, Listing)

    @classmethod
    def search(
        cls,
        state: StateOverlay,
        height: int,
        *,
        kind: str = "",
        tag: str = "",
        text: str = "",
        limit: int = 100,
    ) -> list[MarketEntry]:
        """Live listings by kind and/or tag (index scans), then title/name text filter."""
        if tag:
            prefix = _TAG + tag.encode() + b"\x00"
        elif kind:
            prefix = _KIND + kind.encode() + b"\x00"
        else:
            prefix = _LIST
        ids = [int.from_bytes(k[-8:], "big") for k, _ in state.iter_prefix(prefix)]
        needle = text.lower()
        out: list[MarketEntry] = []
        for oid in ids:
            lst = cls.listing(state, oid)
            offer = LicensingModule.offer(state, oid)
            if lst is None or offer is None or not _live(offer, height):
                continue
            if kind and lst.kind != kind:
                continue
            asset = RegistryModule.asset(state, lst.asset_id)
            if asset is None:
                continue
            if (
                needle
                and needle
                not in (lst.title + " " + asset.meta.name + " " + lst.description).lower()
            ):
                continue
            out.append(MarketEntry(lst, offer, asset))
            if len(out) >= min(limit, MAX_RESULTS):
                break
        return out

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, ListOffer | Delist) and msg.offer_id < 1:
            raise MsgError("offer ids start at 1", Code.INVALID_MSG)
        if isinstance(msg, ListOffer):
            if not 1 <= len(msg.title) <= MAX_TITLE:
                raise MsgError(f"title must be 1..{MAX_TITLE} characters", Code.INVALID_MSG)
            if len(msg.description) > MAX_DESCRIPTION:
                raise MsgError(
                    f"description is longer than {MAX_DESCRIPTION} characters", Code.INVALID_MSG
                )

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        state = ctx.state
        if not isinstance(msg, ListOffer | Delist):
            raise MsgError(f"market does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)
        offer = LicensingModule.offer(state, msg.offer_id)
        if offer is None:
            raise MsgError(f"unknown offer {msg.offer_id}", Code.NOT_FOUND)
        if offer.seller != sender:
            raise MsgError(
                f"only the seller of offer {offer.id} may list or delist it", Code.UNAUTHORIZED
            )
        current = self.listing(state, offer.id)
        if isinstance(msg, Delist):
            if current is None:
                raise MsgError(f"offer {offer.id} is not listed", Code.NOT_FOUND)
            state.delete(_LIST + offer.id.to_bytes(8, "big"))
            state.delete(_KIND + current.kind.encode() + b"\x00" + offer.id.to_bytes(8, "big"))
            for t in current.tags:
                state.delete(_tag_key(t, offer.id))
            ctx.emit("market_delisted", offer_id=offer.id)
            return
        if current is not None:
            raise MsgError(f"offer {offer.id} is already listed")
        if not _live(offer, ctx.height):
            raise MsgError(f"offer {offer.id} is withdrawn, sold out or expired")
        asset = RegistryModule.require(state, offer.asset_id)
        if asset.kind not in LISTABLE_KINDS:
            raise MsgError(
                f"the market lists datasets and models; asset {asset.id.hex()} is {asset.kind} "
                "(license it directly through its offer)"
            )
        lst = Listing(
            offer.id,
            asset.id,
            sender,
            asset.kind,
            list(asset.meta.tags),
            msg.title,
            msg.description,
            ctx.height,
        )
        state.set_obj(_LIST + offer.id.to_bytes(8, "big"), lst)
        state.set(_KIND + asset.kind.encode() + b"\x00" + offer.id.to_bytes(8, "big"), b"\x01")
        for t in asset.meta.tags:
            state.set(_tag_key(t, offer.id), b"\x01")
        ctx.emit("market_listed", offer_id=offer.id, asset=asset.id, kind=asset.kind)


def _live(offer: Offer, height: int) -> bool:
    t = offer.terms
    return not (
        offer.withdrawn
        or (offer.max_sales and offer.sold >= offer.max_sales)
        or (t.expires and height > t.expires)
    )


def list_offer_msg(offer_id: int, title: str, description: str = "") -> AnyMsg:
    return pack("market/ListOffer", ListOffer(offer_id, title, description))


def delist_msg(offer_id: int) -> AnyMsg:
    return pack("market/Delist", Delist(offer_id))

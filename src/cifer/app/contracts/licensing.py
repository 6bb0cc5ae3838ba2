"""licensing: offers with terms, licences bought with CIF, recorded usage and royalties.

An asset's owner publishes an :class:`Offer` (allowed and denied purposes, an expiry
height, a maximum number of uses, a price, a royalty per use, and the share of payments
for *derived* works this asset claims). ``BuyLicence`` pays the price and gives the buyer
a :class:`Licence` with a snapshot of the terms, so a later change of offer cannot change
what was bought. ``RecordUsage`` against a licence checks the terms, counts the use, pays
the royalty and writes an immutable :class:`Usage` record that a light client can prove.

Payments (:func:`pay`)
----------------------
A payment for asset A goes first up the derived-from chain: each parent P of A takes
``derivative_bps(P)`` of it (the largest ``derivative_bps`` among P's open offers: "where
the parent's licence says so"), paid recursively the same way, at most
:data:`MAX_ROYALTY_DEPTH` levels up. What is left is split among A's authors by share;
integer remainders go to the first author, so every ucif is paid. All transfers go through
the bank module, so the supply invariant holds by construction; the payer's balance is
checked before any transfer, so a payment above the balance fails with nothing moved.

Purpose rules: a use is allowed iff some allowed purpose covers it and no denied purpose
covers it (deny wins); an offer whose allowed purpose is covered by one of its own denied
purposes is refused as contradictory.
"""

from __future__ import annotations

from typing import ClassVar, Final

import msgspec

from cifer.app.contracts.bank import TOTAL_SUPPLY, BankModule
from cifer.app.contracts.registry import (
    BPS,
    EdgeKind,
    RegistryModule,
    check_purpose,
    purpose_covers,
)
from cifer.app.module import Code, Context, Module, MsgError, pack
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import to_bech32
from cifer.base.encoding import Canonical

MAX_PURPOSES: Final = 16
MAX_REFERENCE: Final = 128
MAX_ROYALTY_DEPTH: Final = 8

_OFFER: Final = b"licensing/offer/"
_OFFERS_OF: Final = b"licensing/asset/"
_LICENCE: Final = b"licensing/licence/"
_HELD: Final = b"licensing/held/"
_USAGE: Final = b"licensing/usage/"
_NEXT_OFFER: Final = b"licensing/next_offer"
_NEXT_LICENCE: Final = b"licensing/next_licence"
_NEXT_USAGE: Final = b"licensing/next_usage"


class Terms(Canonical, frozen=True):
    allowed: list[str]
    denied: list[str] = msgspec.field(default_factory=list)
    expires: int = 0  # last height a licence may be used; 0 = no expiry
    max_uses: int = 0  # per licence; 0 = unlimited
    price: int = 0  # ucif, paid once at purchase
    royalty_per_use: int = 0  # ucif, paid at each RecordUsage
    derivative_bps: int = 0  # share of payments for works derived from this asset

    def check(self, purpose: str) -> str:
        """ "" if ``purpose`` is allowed by these terms, else why not."""
        for d in self.denied:
            if purpose_covers(d, purpose):
                return f"purpose {purpose!r} is denied ({d!r})"
        if not any(purpose_covers(a, purpose) for a in self.allowed):
            return (
                f"purpose {purpose!r} is not among the allowed purposes {', '.join(self.allowed)}"
            )
        return ""


class OfferLicence(Canonical, frozen=True):
    asset_id: bytes
    terms: Terms
    max_sales: int = 0  # licences this offer may sell; 0 = unlimited


class WithdrawOffer(Canonical, frozen=True):
    offer_id: int


class BuyLicence(Canonical, frozen=True):
    offer_id: int
    max_price: int  # the buyer's limit: protects against an offer changing under it


class RecordUsage(Canonical, frozen=True):
    licence_id: int
    purpose: str
    reference: str = ""  # what the use was, e.g. "fl/job/3"


class Offer(Canonical, frozen=True):
    id: int
    asset_id: bytes
    seller: bytes
    terms: Terms
    max_sales: int
    sold: int
    created: int
    withdrawn: int = 0


class Licence(Canonical, frozen=True):
    id: int
    offer_id: int
    asset_id: bytes
    holder: bytes
    terms: Terms
    uses: int
    bought: int
    paid: int


class Usage(Canonical, frozen=True):
    """Immutable usage record, written once at ``height`` (what a light client proves)."""

    id: int
    licence_id: int
    asset_id: bytes
    user: bytes
    purpose: str
    reference: str
    royalty: int
    height: int


def _validate_terms(t: Terms) -> None:
    def bad(text: str) -> MsgError:
        return MsgError(f"terms: {text}", Code.INVALID_MSG)

    if not 1 <= len(t.allowed) <= MAX_PURPOSES or len(t.denied) > MAX_PURPOSES:
        raise bad(f"1..{MAX_PURPOSES} allowed and at most {MAX_PURPOSES} denied purposes")
    for p in t.allowed:
        check_purpose(p, "allowed purpose")
    for p in t.denied:
        check_purpose(p, "denied purpose")
    for a in t.allowed:
        for d in t.denied:
            if purpose_covers(d, a):
                raise bad(f"allowed purpose {a!r} is itself denied by {d!r}")
    if min(t.expires, t.max_uses, t.price, t.royalty_per_use) < 0:
        raise bad("expires, max_uses, price and royalty_per_use cannot be negative")
    if t.price > TOTAL_SUPPLY or t.royalty_per_use > TOTAL_SUPPLY:
        raise bad("price and royalty cannot exceed the total supply")
    if not 0 <= t.derivative_bps <= BPS:
        raise bad(f"derivative_bps must be in 0..{BPS}")


def _key(prefix: bytes, n: int) -> bytes:
    return prefix + n.to_bytes(8, "big")


class LicensingModule(Module):
    name: ClassVar[str] = "licensing"
    msgs: ClassVar[dict[str, type[Canonical]]] = {
        "licensing/OfferLicence": OfferLicence,
        "licensing/WithdrawOffer": WithdrawOffer,
        "licensing/BuyLicence": BuyLicence,
        "licensing/RecordUsage": RecordUsage,
    }

    # ------------------------------------------------------------ reads

    @staticmethod
    def offer(state: StateOverlay, offer_id: int) -> Offer | None:
        raw = state.get(_key(_OFFER, offer_id))
        return None if raw is None else encoding.decode_trusted(raw, Offer)

    @classmethod
    def offers_of(cls, state: StateOverlay, asset_id: bytes) -> list[Offer]:
        out = []
        for key, _ in state.iter_prefix(_OFFERS_OF + asset_id):
            o = cls.offer(state, int.from_bytes(key[-8:], "big"))
            if o is not None:
                out.append(o)
        return out

    @staticmethod
    def licence(state: StateOverlay, licence_id: int) -> Licence | None:
        raw = state.get(_key(_LICENCE, licence_id))
        return None if raw is None else encoding.decode_trusted(raw, Licence)

    @classmethod
    def held_by(cls, state: StateOverlay, holder: bytes) -> list[Licence]:
        out = []
        for key, _ in state.iter_prefix(_HELD + holder):
            lic = cls.licence(state, int.from_bytes(key[-8:], "big"))
            if lic is not None:
                out.append(lic)
        return out

    @staticmethod
    def usage_key(usage_id: int) -> bytes:
        return _key(_USAGE, usage_id)

    @classmethod
    def usage(cls, state: StateOverlay, usage_id: int) -> Usage | None:
        raw = state.get(cls.usage_key(usage_id))
        return None if raw is None else encoding.decode_trusted(raw, Usage)

    @classmethod
    def derivative_bps(cls, state: StateOverlay, asset_id: bytes) -> int:
        return max(
            (o.terms.derivative_bps for o in cls.offers_of(state, asset_id) if not o.withdrawn),
            default=0,
        )

    @staticmethod
    def licence_problem(lic: Licence, purpose: str, height: int) -> str:
        """ "" if ``lic`` may be used for ``purpose`` at ``height``, else why not."""
        t = lic.terms
        if t.expires and height > t.expires:
            return f"licence {lic.id} expired at height {t.expires} (now {height})"
        if t.max_uses and lic.uses >= t.max_uses:
            return f"licence {lic.id} is exhausted: {lic.uses} of {t.max_uses} uses recorded"
        why = t.check(purpose)
        return f"licence {lic.id}: {why}" if why else ""

    # ------------------------------------------------------------ payments

    @classmethod
    def payees(
        cls, state: StateOverlay, asset_id: bytes, amount: int, depth: int = 0
    ) -> list[tuple[bytes, int]]:
        """Who receives what of a payment of ``amount`` for ``asset_id`` (module docstring)."""
        asset = RegistryModule.asset(state, asset_id)
        if asset is None or amount <= 0:
            return []
        out: list[tuple[bytes, int]] = []
        left = amount
        if depth < MAX_ROYALTY_DEPTH:
            for p in asset.parents:
                cut = min(left, amount * cls.derivative_bps(state, p) // BPS)
                if cut > 0:
                    out.extend(cls.payees(state, p, cut, depth + 1))
                    left -= cut
        shares = [left * a.share_bps // BPS for a in asset.authors]
        shares[0] += left - sum(shares)
        out.extend((a.address, s) for a, s in zip(asset.authors, shares, strict=True) if s > 0)
        return out

    @classmethod
    def pay(cls, ctx: Context, payer: bytes, asset_id: bytes, amount: int, what: str) -> None:
        if amount <= 0:
            return
        spendable = BankModule.spendable(ctx.state, payer, ctx.height)
        if spendable < amount:
            raise MsgError(
                f"{what} of {amount} ucif exceeds the spendable balance of {to_bech32(payer)} "
                f"({spendable} ucif)",
                Code.INSUFFICIENT_FUNDS,
            )
        for to, part in cls.payees(ctx.state, asset_id, amount):
            BankModule.transfer(ctx, payer, to, part, what=what)
            ctx.emit("royalty", asset=asset_id, payer=payer, recipient=to, amount=part)

    # ------------------------------------------------------------ messages

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, OfferLicence):
            if len(msg.asset_id) != 32:
                raise MsgError("asset ids are 32 bytes", Code.INVALID_MSG)
            _validate_terms(msg.terms)
            if msg.max_sales < 0:
                raise MsgError("max_sales cannot be negative", Code.INVALID_MSG)
        elif isinstance(msg, WithdrawOffer | BuyLicence):
            if msg.offer_id < 1:
                raise MsgError("offer ids start at 1", Code.INVALID_MSG)
            if isinstance(msg, BuyLicence) and not 0 <= msg.max_price <= TOTAL_SUPPLY:
                raise MsgError("max_price must be in 0..total supply", Code.INVALID_MSG)
        elif isinstance(msg, RecordUsage):
            if msg.licence_id < 1:
                raise MsgError("licence ids start at 1", Code.INVALID_MSG)
            check_purpose(msg.purpose)
            if len(msg.reference) > MAX_REFERENCE:
                raise MsgError(
                    f"reference is longer than {MAX_REFERENCE} characters", Code.INVALID_MSG
                )

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, OfferLicence):
            self._offer(ctx, msg, sender)
        elif isinstance(msg, WithdrawOffer):
            self._withdraw(ctx, msg, sender)
        elif isinstance(msg, BuyLicence):
            self._buy(ctx, msg, sender)
        elif isinstance(msg, RecordUsage):
            self.record_usage(ctx, msg.licence_id, msg.purpose, msg.reference, sender)
        else:
            raise MsgError(f"licensing does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)

    def _offer(self, ctx: Context, msg: OfferLicence, sender: bytes) -> None:
        state = ctx.state
        asset = RegistryModule.require(state, msg.asset_id)
        if asset.owner != sender:
            raise MsgError(
                f"only the owner of asset {asset.id.hex()} may offer licences for it",
                Code.UNAUTHORIZED,
            )
        if msg.terms.expires and msg.terms.expires < ctx.height:
            raise MsgError(
                f"terms expire at height {msg.terms.expires}, already past (now {ctx.height})"
            )
        oid = state.get_int(_NEXT_OFFER, 1)
        state.set_int(_NEXT_OFFER, oid + 1)
        state.set_obj(
            _key(_OFFER, oid),
            Offer(oid, asset.id, sender, msg.terms, msg.max_sales, 0, ctx.height),
        )
        state.set(_OFFERS_OF + asset.id + oid.to_bytes(8, "big"), b"\x01")
        RegistryModule.note(ctx, asset.id, "offered", sender, f"offer {oid}")
        ctx.emit("licence_offered", offer_id=oid, asset=asset.id, price=msg.terms.price)

    def _withdraw(self, ctx: Context, msg: WithdrawOffer, sender: bytes) -> None:
        o = self._require_offer(ctx.state, msg.offer_id)
        if o.seller != sender:
            raise MsgError(f"only the seller may withdraw offer {o.id}", Code.UNAUTHORIZED)
        if o.withdrawn:
            raise MsgError(f"offer {o.id} was already withdrawn at height {o.withdrawn}")
        ctx.state.set_obj(_key(_OFFER, o.id), msgspec.structs.replace(o, withdrawn=ctx.height))
        ctx.emit("licence_offer_withdrawn", offer_id=o.id)

    def _buy(self, ctx: Context, msg: BuyLicence, sender: bytes) -> None:
        state = ctx.state
        o = self._require_offer(state, msg.offer_id)
        if o.withdrawn:
            raise MsgError(f"offer {o.id} was withdrawn at height {o.withdrawn}")
        if o.terms.expires and ctx.height > o.terms.expires:
            raise MsgError(f"offer {o.id} expired at height {o.terms.expires} (now {ctx.height})")
        if o.max_sales and o.sold >= o.max_sales:
            raise MsgError(f"offer {o.id} is sold out ({o.sold} of {o.max_sales} licences)")
        if o.terms.price > msg.max_price:
            raise MsgError(
                f"offer {o.id} costs {o.terms.price} ucif, above max_price {msg.max_price}"
            )
        if o.seller == sender:
            raise MsgError("the seller cannot buy its own offer")
        RegistryModule.require(state, o.asset_id)
        self.pay(ctx, sender, o.asset_id, o.terms.price, f"price of offer {o.id}")
        lid = state.get_int(_NEXT_LICENCE, 1)
        state.set_int(_NEXT_LICENCE, lid + 1)
        lic = Licence(lid, o.id, o.asset_id, sender, o.terms, 0, ctx.height, o.terms.price)
        state.set_obj(_key(_LICENCE, lid), lic)
        state.set(_HELD + sender + lid.to_bytes(8, "big"), b"\x01")
        state.set_obj(_key(_OFFER, o.id), msgspec.structs.replace(o, sold=o.sold + 1))
        RegistryModule.add_edge(ctx, EdgeKind.LICENSED_TO, o.asset_id, sender, lid)
        RegistryModule.note(ctx, o.asset_id, "licensed", sender, f"licence {lid} from offer {o.id}")
        ctx.emit("licence_bought", licence_id=lid, offer_id=o.id, holder=sender, paid=o.terms.price)

    def record_usage(
        self, ctx: Context, licence_id: int, purpose: str, reference: str, user: bytes
    ) -> Usage:
        """Check ``licence_id`` allows ``purpose`` now, pay its royalty, write the record.

        Also called by the fl contract when a job over licensed assets is created."""
        state = ctx.state
        lic = self.licence(state, licence_id)
        if lic is None:
            raise MsgError(f"unknown licence {licence_id}", Code.NOT_FOUND)
        if lic.holder != user:
            raise MsgError(
                f"licence {lic.id} is held by {to_bech32(lic.holder)}, not {to_bech32(user)}",
                Code.UNAUTHORIZED,
            )
        why = self.licence_problem(lic, purpose, ctx.height)
        if why:
            raise MsgError(why, Code.UNAUTHORIZED)
        royalty = lic.terms.royalty_per_use
        self.pay(ctx, user, lic.asset_id, royalty, f"royalty of licence {lic.id}")
        uid = state.get_int(_NEXT_USAGE, 1)
        state.set_int(_NEXT_USAGE, uid + 1)
        usage = Usage(uid, lic.id, lic.asset_id, user, purpose, reference, royalty, ctx.height)
        state.set_obj(self.usage_key(uid), usage)
        state.set_obj(_key(_LICENCE, lic.id), msgspec.structs.replace(lic, uses=lic.uses + 1))
        RegistryModule.note(
            ctx, lic.asset_id, "used", user, f"usage {uid}: {purpose} {reference}".strip()
        )
        ctx.emit(
            "usage_recorded", usage_id=uid, licence_id=lic.id, purpose=purpose, royalty=royalty
        )
        return usage

    def _require_offer(self, state: StateOverlay, offer_id: int) -> Offer:
        o = self.offer(state, offer_id)
        if o is None:
            raise MsgError(f"unknown offer {offer_id}", Code.NOT_FOUND)
        return o


def offer_licence_msg(asset_id: bytes, terms: Terms, max_sales: int = 0) -> AnyMsg:
    return pack("licensing/OfferLicence", OfferLicence(asset_id, terms, max_sales))


def withdraw_offer_msg(offer_id: int) -> AnyMsg:
    return pack("licensing/WithdrawOffer", WithdrawOffer(offer_id))


def buy_licence_msg(offer_id: int, max_price: int) -> AnyMsg:
    return pack("licensing/BuyLicence", BuyLicence(offer_id, max_price))


def record_usage_msg(licence_id: int, purpose: str, reference: str = "") -> AnyMsg:
    return pack("licensing/RecordUsage", RecordUsage(licence_id, purpose, reference))

"""Node API routes for assets, provenance, consent, licences and the market (read-only).

Writes are transactions (``POST /txs``); these routes show what the chain holds: ids and
hashes in hex, addresses in bech32, amounts in ucif. Every asset and usage record names
the state key and height a light client proves it at (``/proofs/state``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException

from cifer.app.contracts.consent import Consent, ConsentModule
from cifer.app.contracts.licensing import Licence, LicensingModule, Offer, Terms, Usage
from cifer.app.contracts.market import MarketModule
from cifer.app.contracts.registry import (
    KINDS,
    Asset,
    AssetStatus,
    Edge,
    EdgeKind,
    RegistryModule,
)
from cifer.app.state import StateOverlay
from cifer.base.crypto.keys import (
    ADDRESS_LEN,
    CryptoError,
    address_bytes,
    from_bech32,
    to_bech32,
)

if TYPE_CHECKING:
    from cifer.app.node.runtime import Node


def _node_text(node: bytes) -> str:
    return to_bech32(node) if len(node) == ADDRESS_LEN else node.hex()


def asset_json(a: Asset, state: StateOverlay) -> dict[str, Any]:
    rec = RegistryModule.record(state, a.id)
    return {
        "id": a.id.hex(),
        "kind": a.kind,
        "content_hash": a.content_hash.hex(),
        "name": a.meta.name,
        "media_type": a.meta.media_type,
        "uri": a.meta.uri,
        "tags": list(a.meta.tags),
        "authors": [{"address": to_bech32(x.address), "share_bps": x.share_bps} for x in a.authors],
        "signed_by": [to_bech32(address_bytes(s.pubkey)) for s in a.signatures],
        "parents": [p.hex() for p in a.parents],
        "owner": to_bech32(a.owner),
        "status": AssetStatus.NAMES[a.status],
        "created": a.created,
        "registered": a.registered,
        "expires": a.expires or None,
        "version": a.version,
        "previous": a.previous.hex() or None,
        "next_version": a.next_version.hex() or None,
        "origin": a.origin or None,
        "record": None
        if rec is None
        else {"key": RegistryModule.record_key(a.id).hex(), "height": rec.height},
    }


def edge_json(e: Edge, depth: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": EdgeKind.NAMES[e.kind],
        "from": _node_text(e.src),
        "to": _node_text(e.dst),
        "weight": e.weight,
        "height": e.height,
    }
    if depth is not None:
        out["depth"] = depth
    return out


def terms_json(t: Terms) -> dict[str, Any]:
    return {
        "allowed": list(t.allowed),
        "denied": list(t.denied),
        "expires": t.expires or None,
        "max_uses": t.max_uses or None,
        "price": t.price,
        "royalty_per_use": t.royalty_per_use,
        "derivative_bps": t.derivative_bps,
    }


def offer_json(o: Offer) -> dict[str, Any]:
    return {
        "id": o.id,
        "asset_id": o.asset_id.hex(),
        "seller": to_bech32(o.seller),
        "terms": terms_json(o.terms),
        "max_sales": o.max_sales or None,
        "sold": o.sold,
        "created": o.created,
        "withdrawn": o.withdrawn or None,
    }


def licence_json(lic: Licence) -> dict[str, Any]:
    return {
        "id": lic.id,
        "offer_id": lic.offer_id,
        "asset_id": lic.asset_id.hex(),
        "holder": to_bech32(lic.holder),
        "terms": terms_json(lic.terms),
        "uses": lic.uses,
        "bought": lic.bought,
        "paid": lic.paid,
    }


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "id": u.id,
        "licence_id": u.licence_id,
        "asset_id": u.asset_id.hex(),
        "user": to_bech32(u.user),
        "purpose": u.purpose,
        "reference": u.reference,
        "royalty": u.royalty,
        "height": u.height,
        "record": {"key": LicensingModule.usage_key(u.id).hex(), "height": u.height},
    }


def consent_json(c: Consent, height: int) -> dict[str, Any]:
    return {
        "id": c.id,
        "asset_id": c.asset_id.hex(),
        "grantor": to_bech32(c.grantor),
        "grantee": c.grantee_text(),
        "purposes": list(c.purposes),
        "expires": c.expires or None,
        "granted": c.granted,
        "revoked": c.revoked or None,
        "in_force": c.in_force(height),
    }


def _asset_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise HTTPException(400, f"asset ids are 64 hex characters, got {text[:80]!r}")
    return raw


def _address(text: str) -> bytes:
    try:
        return from_bech32(text)
    except (CryptoError, ValueError) as exc:
        raise HTTPException(400, f"not a cif1... address: {exc}") from None


def add_asset_routes(api: FastAPI, node: Node) -> None:
    view = node.app.view

    def get_asset(state: StateOverlay, text: str) -> Asset:
        aid = _asset_id(text)
        a = RegistryModule.asset(state, aid)
        if a is None:
            raise HTTPException(404, f"unknown asset {aid.hex()}")
        return a

    @api.get("/assets", summary="Assets owned by an address (or count of all assets)")
    async def assets(owner: str | None = None) -> dict[str, Any]:
        state, height = view()
        if owner is None:
            return {"count": RegistryModule.count(state), "height": height}
        ids = RegistryModule.owned_by(state, _address(owner))
        found = [RegistryModule.asset(state, i) for i in ids[:1000]]
        return {"assets": [asset_json(a, state) for a in found if a is not None], "height": height}

    @api.get("/assets/by-content/{content_hash}", summary="The asset registered for a content hash")
    async def by_content(content_hash: str) -> dict[str, Any]:
        state, _ = view()
        aid = RegistryModule.by_content(state, _asset_id(content_hash))
        if aid is None:
            raise HTTPException(404, f"no asset has content {content_hash}")
        return asset_json(get_asset(state, aid.hex()), state)

    @api.get("/assets/{asset_id}", summary="One asset: authors, shares, owner, status, record")
    async def asset(asset_id: str) -> dict[str, Any]:
        state, _ = view()
        return asset_json(get_asset(state, asset_id), state)

    @api.get(
        "/assets/{asset_id}/provenance",
        summary="Ancestors, descendants, contributors with shares, licensees and full history",
    )
    async def provenance(asset_id: str, depth: int = 16) -> dict[str, Any]:
        if not 1 <= depth <= 64:
            raise HTTPException(400, "depth must be in 1..64")
        state, height = view()
        a = get_asset(state, asset_id)
        authors, contributed = RegistryModule.contributors(state, a.id)
        return {
            "asset": asset_json(a, state),
            "ancestors": [edge_json(e, d) for e, d in RegistryModule.ancestors(state, a.id, depth)],
            "descendants": [
                edge_json(e, d) for e, d in RegistryModule.descendants(state, a.id, depth)
            ],
            "authors": [
                {"address": to_bech32(x.address), "share_bps": x.share_bps} for x in authors
            ],
            "contributors": [
                {"address": _node_text(e.dst), "share_bps": e.weight} for e in contributed
            ],
            "licensed_to": [
                edge_json(e) for e in RegistryModule.edges_out(state, a.id, EdgeKind.LICENSED_TO)
            ],
            "history": [
                {
                    "height": h.height,
                    "action": h.action,
                    "actor": to_bech32(h.actor),
                    "detail": h.detail,
                }
                for h in RegistryModule.history(state, a.id)
            ],
            "height": height,
        }

    @api.get("/assets/{asset_id}/consents", summary="Consent grants for an asset")
    async def consents(asset_id: str) -> dict[str, Any]:
        state, height = view()
        a = get_asset(state, asset_id)
        return {"consents": [consent_json(c, height) for c in ConsentModule.for_asset(state, a.id)]}

    @api.get("/assets/{asset_id}/offers", summary="Licence offers for an asset")
    async def offers(asset_id: str) -> dict[str, Any]:
        state, _ = view()
        a = get_asset(state, asset_id)
        return {"offers": [offer_json(o) for o in LicensingModule.offers_of(state, a.id)]}

    @api.get("/consents/{consent_id}", summary="One consent grant")
    async def consent(consent_id: int) -> dict[str, Any]:
        state, height = view()
        c = ConsentModule.get(state, consent_id)
        if c is None:
            raise HTTPException(404, f"unknown consent {consent_id}")
        return consent_json(c, height)

    @api.get("/licensing/offers/{offer_id}", summary="One licence offer and its terms")
    async def offer(offer_id: int) -> dict[str, Any]:
        state, _ = view()
        o = LicensingModule.offer(state, offer_id)
        if o is None:
            raise HTTPException(404, f"unknown offer {offer_id}")
        return offer_json(o)

    @api.get("/licensing/licences/{licence_id}", summary="One licence: holder, terms, uses")
    async def licence(licence_id: int) -> dict[str, Any]:
        state, _ = view()
        lic = LicensingModule.licence(state, licence_id)
        if lic is None:
            raise HTTPException(404, f"unknown licence {licence_id}")
        return licence_json(lic)

    @api.get("/licensing/held/{address}", summary="Licences an address holds")
    async def held(address: str) -> dict[str, Any]:
        state, _ = view()
        return {
            "licences": [licence_json(x) for x in LicensingModule.held_by(state, _address(address))]
        }

    @api.get("/licensing/usage/{usage_id}", summary="One recorded usage (royalty paid, record)")
    async def usage(usage_id: int) -> dict[str, Any]:
        state, _ = view()
        u = LicensingModule.usage(state, usage_id)
        if u is None:
            raise HTTPException(404, f"unknown usage {usage_id}")
        return usage_json(u)

    @api.get("/market", summary="Live market listings, by kind, tag and text")
    async def market(
        kind: str = "", tag: str = "", q: str = "", limit: int = 100
    ) -> dict[str, Any]:
        if kind and kind not in KINDS:
            raise HTTPException(400, f"kind must be one of {', '.join(KINDS)}")
        if not 1 <= limit <= 500:
            raise HTTPException(400, "limit must be in 1..500")
        state, height = view()
        entries = MarketModule.search(state, height, kind=kind, tag=tag, text=q, limit=limit)
        return {
            "listings": [
                {
                    "offer_id": e.listing.offer_id,
                    "title": e.listing.title,
                    "description": e.listing.description,
                    "kind": e.listing.kind,
                    "tags": list(e.listing.tags),
                    "seller": to_bech32(e.listing.seller),
                    "listed": e.listing.listed,
                    "asset": asset_json(e.asset, state),
                    "offer": offer_json(e.offer),
                }
                for e in entries
            ],
            "height": height,
        }

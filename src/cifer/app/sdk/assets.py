"""Asset, consent, licence and market operations of :class:`cifer.Client`.

Kept apart from the FL client loop; :class:`~cifer.app.sdk.client.Client` inherits them.
Every write waits for its block and fails with the chain's reason if the tx failed in it;
ids of what a tx created (offers, licences, consents, usage records) come from its events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifer.app.contracts.consent import grant_consent_msg, revoke_consent_msg
from cifer.app.contracts.licensing import (
    Terms,
    buy_licence_msg,
    offer_licence_msg,
    record_usage_msg,
    withdraw_offer_msg,
)
from cifer.app.contracts.market import delist_msg, list_offer_msg
from cifer.app.contracts.registry import (
    BPS,
    AssetMeta,
    AuthorShare,
    AuthorSig,
    asset_id_for,
    register_asset_msg,
    sign_authorship,
    sign_authorship_msg,
    transfer_asset_msg,
)
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import CryptoError, PrivateKey, from_bech32


class AssetError(ValueError):
    """Bad input to an asset operation, found before anything is sent."""


def content_hash_of(content: bytes | str | Path) -> bytes:
    """SHA-256 of a file (path) or of bytes, streamed so large files are fine."""
    if isinstance(content, bytes):
        return hashlib.sha256(content).digest()
    path = Path(content)
    if not path.is_file():
        raise AssetError(f"{path} is not a file")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def parse_asset_id(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        raw = text
    else:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
    if len(raw) != 32:
        raise AssetError(f"an asset id is 64 hex characters, got {str(text)[:80]!r}")
    return raw


def _address(a: str | bytes) -> bytes:
    if isinstance(a, bytes):
        return a
    try:
        return from_bech32(a)
    except (CryptoError, ValueError) as exc:
        raise AssetError(f"{a!r} is not a cif1... address: {exc}") from None


def _created(tx: dict[str, Any], event: str, attr: str, what: str) -> int:
    from cifer.app.sdk.client import ClientError, _event_attr

    value = _event_attr(tx, event, attr)
    if value is None:
        raise ClientError(f"{what} committed but the node did not report the new id")
    return int(value)


class AssetOps:
    """Mixin: needs the Client's key, chain id, ``_commit`` and ``_get_json``."""

    if TYPE_CHECKING:  # provided by Client; declared here for the type checker only
        key: PrivateKey

        @property
        def chain_id(self) -> str: ...

        def _commit(self, msgs: Sequence[AnyMsg], what: str) -> dict[str, Any]: ...

        def _get_json(self, path: str, what: str) -> Any: ...

    def authorship_signature(
        self,
        content_hash: bytes,
        kind: str,
        authors: Sequence[tuple[str | bytes, int]],
        *,
        owner: str | bytes,
        parents: Sequence[str | bytes] = (),
    ) -> AuthorSig:
        """This key's signature over a registration's authorship statement, for a
        co-author who signs off-line and hands it to the registrant (``owner``)."""
        shares = [AuthorShare(_address(a), int(bps)) for a, bps in authors]
        return sign_authorship(
            self.key,
            self.chain_id,
            content_hash,
            kind,
            shares,
            owner=_address(owner),
            parents=[parse_asset_id(p) for p in parents],
        )

    def register_asset(
        self,
        *,
        kind: str,
        name: str,
        content: bytes | str | Path | None = None,
        content_hash: bytes | None = None,
        media_type: str = "",
        uri: str = "",
        tags: Sequence[str] = (),
        authors: Sequence[tuple[str | bytes, int]] | None = None,
        signatures: Sequence[AuthorSig] = (),
        parents: Sequence[str | bytes] = (),
        previous: str | bytes | None = None,
        pending_blocks: int = 1_000,
    ) -> str:
        """Register content (bytes or a file: only its hash is sent) and return the asset
        id. ``authors`` defaults to this key alone; this key signs if it is an author.
        With a co-author's signature missing the asset stays pending until they run
        :meth:`sign_asset`."""
        if (content is None) == (content_hash is None):
            raise AssetError("give exactly one of content and content_hash")
        digest = content_hash if content_hash is not None else content_hash_of(content)  # type: ignore[arg-type]
        if len(digest) != 32:
            raise AssetError("content_hash must be 32 bytes")
        pairs = list(authors) if authors is not None else [(self.key.address, BPS)]
        shares = [AuthorShare(_address(a), int(bps)) for a, bps in pairs]
        sigs = list(signatures)
        if any(s.address == self.key.address for s in shares) and not any(
            sig.pubkey == self.key.public.raw for sig in sigs
        ):
            sigs.append(
                sign_authorship(
                    self.key,
                    self.chain_id,
                    digest,
                    kind,
                    shares,
                    owner=self.key.address,
                    parents=[parse_asset_id(p) for p in parents],
                )
            )
        msg = register_asset_msg(
            kind=kind,
            content_hash=digest,
            meta=AssetMeta(name=name, media_type=media_type, uri=uri, tags=list(tags)),
            authors=shares,
            signatures=sigs,
            parents=[parse_asset_id(p) for p in parents],
            previous=parse_asset_id(previous) if previous else b"",
            pending_blocks=pending_blocks,
        )
        self._commit([msg], "RegisterAsset")
        return asset_id_for(self.chain_id, digest).hex()

    def sign_asset(self, asset_id: str | bytes) -> None:
        """Add this key's authorship signature to a pending asset."""
        a = self.asset(asset_id)
        shares = [AuthorShare(from_bech32(x["address"]), int(x["share_bps"])) for x in a["authors"]]
        sig = sign_authorship(
            self.key,
            self.chain_id,
            bytes.fromhex(a["content_hash"]),
            a["kind"],
            shares,
            owner=from_bech32(a["owner"]),
            parents=[bytes.fromhex(p) for p in a["parents"]],
        )
        self._commit([sign_authorship_msg(parse_asset_id(asset_id), sig)], "SignAuthorship")

    def transfer_asset(self, asset_id: str | bytes, to: str | bytes) -> None:
        self._commit([transfer_asset_msg(parse_asset_id(asset_id), _address(to))], "TransferAsset")

    def asset(self, asset_id: str | bytes) -> dict[str, Any]:
        aid = parse_asset_id(asset_id).hex()
        out: dict[str, Any] = self._get_json(f"/assets/{aid}", f"asset {aid}")
        return out

    def asset_provenance(self, asset_id: str | bytes, depth: int = 16) -> dict[str, Any]:
        aid = parse_asset_id(asset_id).hex()
        out: dict[str, Any] = self._get_json(
            f"/assets/{aid}/provenance?depth={depth}", f"provenance of {aid}"
        )
        return out

    # ------------------------------------------------------------ consent

    def grant_consent(
        self,
        asset_id: str | bytes,
        purposes: Sequence[str],
        *,
        grantee: str | bytes | None = None,
        job_id: int = 0,
        expires: int = 0,
    ) -> int:
        """Consent to use an asset you own for ``purposes`` by one address, one job, or
        (neither given) anyone, until height ``expires`` (0: none). Returns its id."""
        msg = grant_consent_msg(
            asset_id=parse_asset_id(asset_id),
            purposes=list(purposes),
            grantee=_address(grantee) if grantee else b"",
            job_id=job_id,
            expires=expires,
        )
        tx = self._commit([msg], "GrantConsent")
        return _created(tx, "consent_granted", "consent_id", "GrantConsent")

    def revoke_consent(self, consent_id: int) -> None:
        self._commit([revoke_consent_msg(consent_id)], f"RevokeConsent {consent_id}")

    # ------------------------------------------------------------ licensing

    def offer_licence(
        self,
        asset_id: str | bytes,
        *,
        allowed: Sequence[str],
        denied: Sequence[str] = (),
        price: int = 0,
        royalty_per_use: int = 0,
        expires: int = 0,
        max_uses: int = 0,
        derivative_bps: int = 0,
        max_sales: int = 0,
    ) -> int:
        """Offer licences for an asset you own; amounts in ucif. Returns the offer id."""
        terms = Terms(
            allowed=list(allowed),
            denied=list(denied),
            expires=expires,
            max_uses=max_uses,
            price=price,
            royalty_per_use=royalty_per_use,
            derivative_bps=derivative_bps,
        )
        tx = self._commit(
            [offer_licence_msg(parse_asset_id(asset_id), terms, max_sales)], "OfferLicence"
        )
        return _created(tx, "licence_offered", "offer_id", "OfferLicence")

    def withdraw_offer(self, offer_id: int) -> None:
        self._commit([withdraw_offer_msg(offer_id)], f"WithdrawOffer {offer_id}")

    def buy_licence(self, offer_id: int, max_price: int | None = None) -> int:
        """Buy a licence (paying the price to the authors); ``max_price`` defaults to the
        price the offer shows now. Returns the licence id."""
        if max_price is None:
            max_price = int(self.offer(offer_id)["terms"]["price"])
        tx = self._commit(
            [buy_licence_msg(offer_id, max_price)], f"BuyLicence from offer {offer_id}"
        )
        return _created(tx, "licence_bought", "licence_id", "BuyLicence")

    def record_usage(self, licence_id: int, purpose: str, reference: str = "") -> int:
        """Record one use under a licence you hold (pays its royalty); returns the usage id."""
        tx = self._commit(
            [record_usage_msg(licence_id, purpose, reference)],
            f"RecordUsage on licence {licence_id}",
        )
        return _created(tx, "usage_recorded", "usage_id", "RecordUsage")

    def offer(self, offer_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._get_json(f"/licensing/offers/{offer_id}", f"offer {offer_id}")
        return out

    def licence(self, licence_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._get_json(
            f"/licensing/licences/{licence_id}", f"licence {licence_id}"
        )
        return out

    def usage(self, usage_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._get_json(f"/licensing/usage/{usage_id}", f"usage {usage_id}")
        return out

    # ------------------------------------------------------------ market

    def market_list(self, offer_id: int, title: str, description: str = "") -> None:
        self._commit([list_offer_msg(offer_id, title, description)], f"ListOffer {offer_id}")

    def market_delist(self, offer_id: int) -> None:
        self._commit([delist_msg(offer_id)], f"Delist {offer_id}")

    def market_search(
        self, *, kind: str = "", tag: str = "", text: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        q = urlencode({"kind": kind, "tag": tag, "q": text, "limit": limit})
        return list(self._get_json(f"/market?{q}", "market search")["listings"])

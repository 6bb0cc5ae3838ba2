"""consent: an asset owner's permission to use the asset for named purposes.

A grant names the asset, the grantee (one address, one FL job, or anyone), the purposes
(``train`` covers ``train:style``; see :func:`~cifer.app.contracts.registry.purpose_covers`)
and an expiry height (0: none). Revocation is a state change at a height: every use checked
after it (a ``JoinJob``, a job creation) no longer finds the grant; uses already recorded
stay recorded. Grants are never deleted, so an asset's consent history stays queryable.

Consent is not a licence: it is free, personal and revocable (a data subject's or a
creator's say-so), while a licence (licensing contract) is bought and carries terms and
royalties. The fl contract accepts either for the job's creator and asks consent of each
client that declares someone else's dataset.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from cifer.app.contracts.registry import RegistryModule, check_purpose, purpose_covers
from cifer.app.module import Code, Context, Module, MsgError, pack
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import ADDRESS_LEN, to_bech32
from cifer.base.encoding import Canonical

MAX_PURPOSES: Final = 16

_GRANT: Final = b"consent/grant/"
_BY_ASSET: Final = b"consent/asset/"
_NEXT: Final = b"consent/next"


class GrantConsent(Canonical, frozen=True):
    asset_id: bytes
    purposes: list[str]
    grantee: bytes = b""  # an address; empty with job_id 0 means anyone
    job_id: int = 0  # or one FL job
    expires: int = 0  # last height the grant is valid at; 0 = no expiry


class RevokeConsent(Canonical, frozen=True):
    consent_id: int


class Consent(Canonical, frozen=True):
    id: int
    asset_id: bytes
    grantor: bytes
    grantee: bytes
    job_id: int
    purposes: list[str]
    expires: int
    granted: int
    revoked: int = 0  # height of revocation; 0 while in force

    def grantee_text(self) -> str:
        if self.grantee:
            return to_bech32(self.grantee)
        return f"fl job {self.job_id}" if self.job_id else "anyone"

    def in_force(self, height: int) -> bool:
        return self.revoked == 0 and (self.expires == 0 or height <= self.expires)

    def applies(self, purpose: str, who: bytes, job_id: int) -> bool:
        if self.grantee and self.grantee != who:
            return False
        if self.job_id and self.job_id != job_id:
            return False
        return any(purpose_covers(p, purpose) for p in self.purposes)


class ConsentModule(Module):
    name: ClassVar[str] = "consent"
    msgs: ClassVar[dict[str, type[Canonical]]] = {
        "consent/GrantConsent": GrantConsent,
        "consent/RevokeConsent": RevokeConsent,
    }

    @staticmethod
    def get(state: StateOverlay, consent_id: int) -> Consent | None:
        raw = state.get(_GRANT + consent_id.to_bytes(8, "big"))
        return None if raw is None else encoding.decode_trusted(raw, Consent)

    @classmethod
    def for_asset(cls, state: StateOverlay, asset_id: bytes) -> list[Consent]:
        out = []
        for key, _ in state.iter_prefix(_BY_ASSET + asset_id):
            c = cls.get(state, int.from_bytes(key[-8:], "big"))
            if c is not None:
                out.append(c)
        return out

    @classmethod
    def find(
        cls,
        state: StateOverlay,
        asset_id: bytes,
        purpose: str,
        who: bytes,
        job_id: int,
        height: int,
    ) -> Consent | None:
        """The first grant in force that covers ``purpose`` for ``who`` in job ``job_id``."""
        for c in cls.for_asset(state, asset_id):
            if c.in_force(height) and c.applies(purpose, who, job_id):
                return c
        return None

    @classmethod
    def explain_missing(
        cls,
        state: StateOverlay,
        asset_id: bytes,
        purpose: str,
        who: bytes,
        job_id: int,
        height: int,
    ) -> str:
        """Why no grant covers the use: names a revoked or expired grant that would have."""
        for c in reversed(cls.for_asset(state, asset_id)):
            if c.applies(purpose, who, job_id):
                if c.revoked:
                    return f"consent {c.id} was revoked at height {c.revoked}"
                if c.expires and height > c.expires:
                    return f"consent {c.id} expired at height {c.expires}"
        return f"no consent covers purpose {purpose!r} for {to_bech32(who)}"

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, GrantConsent):
            if len(msg.asset_id) != 32:
                raise MsgError("asset ids are 32 bytes", Code.INVALID_MSG)
            if not 1 <= len(msg.purposes) <= MAX_PURPOSES:
                raise MsgError(f"a grant names 1..{MAX_PURPOSES} purposes", Code.INVALID_MSG)
            for p in msg.purposes:
                check_purpose(p)
            if msg.grantee and len(msg.grantee) != ADDRESS_LEN:
                raise MsgError(f"grantee must be a {ADDRESS_LEN}-byte address", Code.INVALID_MSG)
            if msg.grantee and msg.job_id:
                raise MsgError("grant to an address or to a job, not both", Code.INVALID_MSG)
            if msg.job_id < 0 or msg.expires < 0:
                raise MsgError("job_id and expires cannot be negative", Code.INVALID_MSG)
        elif isinstance(msg, RevokeConsent) and msg.consent_id < 1:
            raise MsgError("consent ids start at 1", Code.INVALID_MSG)

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        state = ctx.state
        if isinstance(msg, GrantConsent):
            asset = RegistryModule.require(state, msg.asset_id)
            if asset.owner != sender:
                raise MsgError(
                    f"only the owner of asset {asset.id.hex()} may grant consent to use it",
                    Code.UNAUTHORIZED,
                )
            if msg.expires and msg.expires < ctx.height:
                raise MsgError(f"expiry height {msg.expires} is already past (now {ctx.height})")
            cid = state.get_int(_NEXT, 1)
            c = Consent(
                id=cid,
                asset_id=asset.id,
                grantor=sender,
                grantee=msg.grantee,
                job_id=msg.job_id,
                purposes=list(msg.purposes),
                expires=msg.expires,
                granted=ctx.height,
            )
            state.set_int(_NEXT, cid + 1)
            state.set_obj(_GRANT + cid.to_bytes(8, "big"), c)
            state.set(_BY_ASSET + asset.id + cid.to_bytes(8, "big"), b"\x01")
            RegistryModule.note(
                ctx,
                asset.id,
                "consent_granted",
                sender,
                f"consent {cid}: {', '.join(c.purposes)} to {c.grantee_text()}",
            )
            ctx.emit("consent_granted", consent_id=cid, asset=asset.id, grantor=sender)
        elif isinstance(msg, RevokeConsent):
            found = self.get(state, msg.consent_id)
            if found is None:
                raise MsgError(f"unknown consent {msg.consent_id}", Code.NOT_FOUND)
            c = found
            current = RegistryModule.asset(state, c.asset_id)
            owner = current.owner if current is not None else b""
            if sender not in (c.grantor, owner):
                raise MsgError(
                    f"only the grantor or the asset's owner may revoke consent {c.id}",
                    Code.UNAUTHORIZED,
                )
            if c.revoked:
                raise MsgError(f"consent {c.id} was already revoked at height {c.revoked}")
            state.set_obj(
                _GRANT + c.id.to_bytes(8, "big"), msgspec.structs.replace(c, revoked=ctx.height)
            )
            RegistryModule.note(ctx, c.asset_id, "consent_revoked", sender, f"consent {c.id}")
            ctx.emit("consent_revoked", consent_id=c.id, asset=c.asset_id)
        else:
            raise MsgError(f"consent does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)


def grant_consent_msg(**fields: Any) -> AnyMsg:
    return pack("consent/GrantConsent", GrantConsent(**fields))


def revoke_consent_msg(consent_id: int) -> AnyMsg:
    return pack("consent/RevokeConsent", RevokeConsent(consent_id))

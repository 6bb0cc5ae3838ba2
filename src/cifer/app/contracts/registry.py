"""registry: assets on chain with proof of authorship, versions, and the provenance graph.

An asset (dataset, model, content, code) is registered by its SHA-256 content hash; the
content itself stays with its owner. DESIGN.md: "Proof of authorship = the authors'
signatures over the content hash in a timestamped, final block".

Decisions
---------
* **Asset id** = SHA-256(``cifer/asset/v1`` || chain id || content hash): one asset per
  content on a chain, so a duplicate registration is refused with the id of the first.
* **What authors sign** is an :class:`AuthorshipStatement`: chain id, content hash, kind,
  the full author/share list, the owner (the registering signer) and the parents. So a
  co-author agrees to the split and to the lineage (parents take derivative royalties),
  not only to the content; a signature cannot be replayed on another chain or split; and
  a registration copied from the mempool by someone else fails instead of making the
  copier the owner. Registration proves the authors' signatures, not possession: anyone
  can register a hash they saw, which is why a dataset's owner should register it before
  publishing its hash.
* **Pending registrations.** If a co-author's signature is missing, the asset is PENDING:
  it reserves its content hash, and ``SignAuthorship`` adds the missing signatures. When the
  last one arrives it becomes REGISTERED (and only then provable, licensable and usable as a
  parent). A pending registration that is not complete within ``pending_blocks`` expires at
  the end of that block and frees the content hash.
* **Registration record.** On completion an immutable :class:`RegistrationRecord` is
  written once under its own key; light clients prove *that* write against a block header
  (``cifer asset verify``). The mutable :class:`Asset` (owner, next version) lives apart.
* **Owner vs authors.** The signer of ``RegisterAsset`` is the owner: it grants consent,
  offers licences and may transfer ownership. Authors are who royalties are paid to.
* **Provenance graph.** Edges are stored twice (out- and in-index) so both ancestors and
  descendants are prefix scans. Kinds: derived-from (asset -> parent asset), trained-on
  (model -> dataset asset), contributed-by (model -> client address, weight = share in bps),
  licensed-to (asset -> licensee address, weight = licence id). The fl and licensing
  contracts add edges through :meth:`RegistryModule.add_edge`.
* **Versions**: ``RegisterAsset.previous`` names the asset this one supersedes; only its
  owner may do so, and a version chain stays linear (one next version per asset).
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import msgspec

from cifer.app.module import Code, Context, InvariantViolation, Module, MsgError, pack
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import ADDRESS_LEN, PrivateKey, address_bytes, to_bech32, verify
from cifer.base.encoding import Canonical

KINDS: Final = ("dataset", "model", "content", "code")
BPS: Final = 10_000
MAX_AUTHORS: Final = 16
MAX_PARENTS: Final = 16
MAX_TAGS: Final = 16
MAX_NAME: Final = 128
MAX_MEDIA_TYPE: Final = 64
MAX_URI: Final = 512
MAX_TAG: Final = 32
#: Encoded size limit of an asset's metadata: state is replicated on every node.
MAX_META_BYTES: Final = 1_024
DEFAULT_PENDING_BLOCKS: Final = 1_000
MAX_PENDING_BLOCKS: Final = 100_000
#: Bounds on graph queries (they run on a node's API, not in consensus).
MAX_QUERY_DEPTH: Final = 64
MAX_QUERY_NODES: Final = 10_000

STATEMENT_TAG: Final = b"cifer/authorship/v1"
_TAG_RE: Final = re.compile(r"^[a-z0-9][a-z0-9:_.+-]*$")

_ASSET: Final = b"registry/asset/"
_REG: Final = b"registry/reg/"
_HASH: Final = b"registry/hash/"
_PENDING: Final = b"registry/pending/"
_OWNER: Final = b"registry/owner/"
_OUT: Final = b"registry/edge/o/"
_IN: Final = b"registry/edge/i/"
_HIST: Final = b"registry/hist/"
_HSEQ: Final = b"registry/hseq/"
_COUNT: Final = b"registry/count"


class AssetStatus:
    PENDING = 0
    REGISTERED = 1

    NAMES: ClassVar[dict[int, str]] = {0: "pending", 1: "registered"}


class EdgeKind:
    DERIVED_FROM = 1
    TRAINED_ON = 2
    CONTRIBUTED_BY = 3
    LICENSED_TO = 4

    NAMES: ClassVar[dict[int, str]] = {
        1: "derived-from",
        2: "trained-on",
        3: "contributed-by",
        4: "licensed-to",
    }
    #: Edges that point from an asset to an asset it came from (walked by ancestors()).
    LINEAGE: ClassVar[tuple[int, ...]] = (1, 2)


# ------------------------------------------------------------------ messages and records


class AssetMeta(Canonical, frozen=True):
    name: str
    media_type: str = ""
    uri: str = ""
    tags: list[str] = msgspec.field(default_factory=list)


class AuthorShare(Canonical, frozen=True):
    address: bytes
    share_bps: int


class AuthorSig(Canonical, frozen=True):
    pubkey: bytes  # Ed25519; the author's address is derived from it
    signature: bytes


class AuthorshipStatement(Canonical, frozen=True):
    """What each author signs (see the module docstring)."""

    chain_id: str
    content_hash: bytes
    kind: str
    authors: list[AuthorShare]
    owner: bytes  # who registers it: a copied tx cannot hand the asset to someone else
    parents: list[bytes]  # co-authors agree to the lineage (parents take derivative cuts)


class RegisterAsset(Canonical, frozen=True):
    kind: str
    content_hash: bytes
    meta: AssetMeta
    authors: list[AuthorShare]
    signatures: list[AuthorSig] = msgspec.field(default_factory=list)
    parents: list[bytes] = msgspec.field(default_factory=list)
    previous: bytes = b""  # asset id this one is a new version of
    pending_blocks: int = DEFAULT_PENDING_BLOCKS


class SignAuthorship(Canonical, frozen=True):
    asset_id: bytes
    signature: AuthorSig


class TransferAsset(Canonical, frozen=True):
    asset_id: bytes
    to: bytes


class Asset(Canonical, frozen=True):
    id: bytes
    kind: str
    content_hash: bytes
    meta: AssetMeta
    authors: list[AuthorShare]
    parents: list[bytes]
    signatures: list[AuthorSig]  # in the order of ``authors`` once complete
    owner: bytes
    status: int
    created: int  # height of RegisterAsset
    registered: int = 0  # height at which the last signature arrived (0 while pending)
    expires: int = 0  # last height a pending registration may complete
    previous: bytes = b""
    next_version: bytes = b""
    version: int = 1
    origin: str = ""  # "" for a signed registration; e.g. "fl/job/3" for a chain-made model


class RegistrationRecord(Canonical, frozen=True):
    """Immutable proof-of-authorship record, written once at ``height`` (what is proven)."""

    asset_id: bytes
    kind: str
    content_hash: bytes
    meta: AssetMeta
    authors: list[AuthorShare]
    parents: list[bytes]
    signatures: list[AuthorSig]
    owner: bytes
    previous: bytes
    origin: str
    height: int


class Edge(Canonical, frozen=True):
    kind: int
    src: bytes
    dst: bytes  # an asset id (32 bytes) or an address (20 bytes)
    weight: int
    height: int


class HistoryEntry(Canonical, frozen=True):
    height: int
    action: str
    actor: bytes
    detail: str


# ------------------------------------------------------------------ pure helpers


def asset_id_for(chain_id: str, content_hash: bytes) -> bytes:
    return hashlib.sha256(
        b"cifer/asset/v1\x00" + chain_id.encode() + b"\x00" + content_hash
    ).digest()


def statement_bytes(
    chain_id: str,
    content_hash: bytes,
    kind: str,
    authors: list[AuthorShare],
    *,
    owner: bytes,
    parents: Sequence[bytes] = (),
) -> bytes:
    return STATEMENT_TAG + encoding.encode(
        AuthorshipStatement(chain_id, content_hash, kind, list(authors), owner, list(parents))
    )


def sign_authorship(
    key: PrivateKey,
    chain_id: str,
    content_hash: bytes,
    kind: str,
    authors: list[AuthorShare],
    *,
    owner: bytes,
    parents: Sequence[bytes] = (),
) -> AuthorSig:
    """An author's signature for a registration by ``owner`` (``cifer asset sign``)."""
    stmt = statement_bytes(chain_id, content_hash, kind, authors, owner=owner, parents=parents)
    return AuthorSig(key.public.raw, key.sign(stmt))


def check_purpose(text: str, what: str = "purpose") -> None:
    """Purposes look like ``train`` or ``train:style`` (lowercase, ``:``-separated)."""
    if not 1 <= len(text) <= 64 or not re.fullmatch(r"[a-z][a-z0-9_]*(:[a-z0-9_*-]+)*", text):
        raise MsgError(
            f"{what} {text[:64]!r} is malformed: use lowercase words joined by ':', "
            "e.g. 'train:style'",
            Code.INVALID_MSG,
        )


def purpose_covers(granted: str, requested: str) -> bool:
    """``train`` covers ``train`` and ``train:style``; ``train:style`` does not cover ``train``."""
    return requested == granted or requested.startswith(granted + ":")


def _id_hex(asset_id: bytes) -> str:
    return asset_id.hex()


def _validate_meta(meta: AssetMeta) -> None:
    def bad(text: str) -> MsgError:
        return MsgError(f"metadata: {text}", Code.INVALID_MSG)

    size = len(encoding.encode(meta))
    if size > MAX_META_BYTES:
        raise bad(f"is {size} bytes encoded; the limit is {MAX_META_BYTES}")
    if not 1 <= len(meta.name) <= MAX_NAME:
        raise bad(f"name must be 1..{MAX_NAME} characters, got {len(meta.name)}")
    if len(meta.media_type) > MAX_MEDIA_TYPE:
        raise bad(f"media_type is longer than {MAX_MEDIA_TYPE} characters")
    if len(meta.uri) > MAX_URI:
        raise bad(f"uri is longer than {MAX_URI} characters")
    if len(meta.tags) > MAX_TAGS:
        raise bad(f"{len(meta.tags)} tags; at most {MAX_TAGS}")
    if len(set(meta.tags)) != len(meta.tags):
        raise bad("tags repeat")
    for t in meta.tags:
        if not 1 <= len(t) <= MAX_TAG or not _TAG_RE.match(t):
            raise bad(f"tag {t[:40]!r} must be 1..{MAX_TAG} of a-z 0-9 : _ . + -")


def validate_authors(authors: list[AuthorShare]) -> None:
    if not 1 <= len(authors) <= MAX_AUTHORS:
        raise MsgError(
            f"an asset has 1..{MAX_AUTHORS} authors, got {len(authors)}", Code.INVALID_MSG
        )
    addrs = [a.address for a in authors]
    if any(len(a) != ADDRESS_LEN for a in addrs):
        raise MsgError(f"author addresses must be {ADDRESS_LEN} bytes", Code.INVALID_MSG)
    if len(set(addrs)) != len(addrs):
        raise MsgError("an author is listed twice", Code.INVALID_MSG)
    if any(a.share_bps <= 0 for a in authors):
        raise MsgError(
            "every author share must be a positive number of basis points", Code.INVALID_MSG
        )
    total = sum(a.share_bps for a in authors)
    if total != BPS:
        raise MsgError(
            f"author shares sum to {total} basis points; they must sum to {BPS}", Code.INVALID_MSG
        )


def _hist_key(asset_id: bytes, seq: int) -> bytes:
    return _HIST + asset_id + seq.to_bytes(4, "big")


# ------------------------------------------------------------------ module


class RegistryModule(Module):
    name: ClassVar[str] = "registry"
    msgs: ClassVar[dict[str, type[Canonical]]] = {
        "registry/RegisterAsset": RegisterAsset,
        "registry/SignAuthorship": SignAuthorship,
        "registry/TransferAsset": TransferAsset,
    }

    # ------------------------------------------------------------ reads

    @staticmethod
    def asset(state: StateOverlay, asset_id: bytes) -> Asset | None:
        raw = state.get(_ASSET + asset_id)
        return None if raw is None else encoding.decode_trusted(raw, Asset)

    @staticmethod
    def record_key(asset_id: bytes) -> bytes:
        """State key of the immutable registration record (what a light client proves)."""
        return _REG + asset_id

    @classmethod
    def record(cls, state: StateOverlay, asset_id: bytes) -> RegistrationRecord | None:
        raw = state.get(cls.record_key(asset_id))
        return None if raw is None else encoding.decode_trusted(raw, RegistrationRecord)

    @staticmethod
    def by_content(state: StateOverlay, content_hash: bytes) -> bytes | None:
        return state.get(_HASH + content_hash)

    @staticmethod
    def count(state: StateOverlay) -> int:
        return state.get_int(_COUNT)

    @classmethod
    def require(cls, state: StateOverlay, asset_id: bytes, *, registered: bool = True) -> Asset:
        """The asset, or a MsgError naming why it cannot be used."""
        if len(asset_id) != 32:
            raise MsgError("asset ids are 32 bytes", Code.INVALID_MSG)
        a = cls.asset(state, asset_id)
        if a is None:
            raise MsgError(f"unknown asset {_id_hex(asset_id)}", Code.NOT_FOUND)
        if registered and a.status != AssetStatus.REGISTERED:
            missing = len(a.authors) - len(a.signatures)
            raise MsgError(
                f"asset {_id_hex(asset_id)} is pending: {missing} author signature(s) missing "
                f"(expires after height {a.expires})"
            )
        return a

    @staticmethod
    def owned_by(state: StateOverlay, owner: bytes) -> list[bytes]:
        return [k[len(_OWNER) + ADDRESS_LEN :] for k, _ in state.iter_prefix(_OWNER + owner)]

    @staticmethod
    def edges_out(state: StateOverlay, node: bytes, kind: int | None = None) -> list[Edge]:
        prefix = _OUT + bytes([len(node)]) + node + (bytes([kind]) if kind else b"")
        return [encoding.decode_trusted(v, Edge) for _, v in state.iter_prefix(prefix)]

    @staticmethod
    def edges_in(state: StateOverlay, node: bytes, kind: int | None = None) -> list[Edge]:
        prefix = _IN + bytes([len(node)]) + node + (bytes([kind]) if kind else b"")
        return [encoding.decode_trusted(v, Edge) for _, v in state.iter_prefix(prefix)]

    @staticmethod
    def history(state: StateOverlay, asset_id: bytes) -> list[HistoryEntry]:
        return [
            encoding.decode_trusted(v, HistoryEntry) for _, v in state.iter_prefix(_HIST + asset_id)
        ]

    @classmethod
    def ancestors(
        cls, state: StateOverlay, asset_id: bytes, max_depth: int = MAX_QUERY_DEPTH
    ) -> list[tuple[Edge, int]]:
        """Lineage edges reachable from ``asset_id`` (derived-from, trained-on), breadth
        first, with the depth of each edge's source; each asset is expanded once."""
        return cls._walk(state, asset_id, max_depth, forward=True)

    @classmethod
    def descendants(
        cls, state: StateOverlay, asset_id: bytes, max_depth: int = MAX_QUERY_DEPTH
    ) -> list[tuple[Edge, int]]:
        """Assets that derive from or were trained on ``asset_id``, transitively."""
        return cls._walk(state, asset_id, max_depth, forward=False)

    @classmethod
    def _walk(
        cls, state: StateOverlay, start: bytes, max_depth: int, *, forward: bool
    ) -> list[tuple[Edge, int]]:
        max_depth = max(1, min(max_depth, MAX_QUERY_DEPTH))
        seen = {start}
        out: list[tuple[Edge, int]] = []
        queue: deque[tuple[bytes, int]] = deque([(start, 0)])
        while queue and len(out) < MAX_QUERY_NODES:
            node, depth = queue.popleft()
            if depth >= max_depth:
                continue
            for kind in EdgeKind.LINEAGE:
                edges = (
                    cls.edges_out(state, node, kind) if forward else cls.edges_in(state, node, kind)
                )
                for e in edges:
                    out.append((e, depth))
                    nxt = e.dst if forward else e.src
                    if nxt not in seen:
                        seen.add(nxt)
                        queue.append((nxt, depth + 1))
        return out

    @classmethod
    def contributors(
        cls, state: StateOverlay, asset_id: bytes
    ) -> tuple[list[AuthorShare], list[Edge]]:
        """Authors with their shares, and clients that contributed (FL models) with theirs."""
        a = cls.asset(state, asset_id)
        if a is None:
            return [], []
        return list(a.authors), cls.edges_out(state, asset_id, EdgeKind.CONTRIBUTED_BY)

    # ------------------------------------------------------------ writes other modules use

    @staticmethod
    def add_edge(ctx: Context, kind: int, src: bytes, dst: bytes, weight: int = 0) -> None:
        """Record a provenance edge (idempotent per (kind, src, dst): the newest wins)."""
        if kind not in EdgeKind.NAMES:
            raise ValueError(f"unknown edge kind {kind}")
        e = Edge(kind, src, dst, weight, ctx.height)
        ctx.state.set_obj(_OUT + bytes([len(src)]) + src + bytes([kind]) + dst, e)
        ctx.state.set_obj(_IN + bytes([len(dst)]) + dst + bytes([kind]) + src, e)

    @staticmethod
    def note(ctx: Context, asset_id: bytes, action: str, actor: bytes, detail: str = "") -> None:
        """Append to an asset's history (registered, signed, transferred, licensed, used ...)."""
        state = ctx.state
        seq = state.get_int(_HSEQ + asset_id)
        state.set_obj(_hist_key(asset_id, seq), HistoryEntry(ctx.height, action, actor, detail))
        state.set_int(_HSEQ + asset_id, seq + 1)

    def register_derived(
        self,
        ctx: Context,
        *,
        kind: str,
        content_hash: bytes,
        meta: AssetMeta,
        owner: bytes,
        origin: str,
        parents: list[bytes] | None = None,
    ) -> bytes | None:
        """Register an asset the chain itself produced (an FL job's final model).

        Its proof of authorship is the chain's own record (``origin``), not signatures;
        the owner is the sole author. Returns None (and registers nothing) if the content
        is already an asset, e.g. a job whose rounds never moved the model.
        """
        if self.by_content(ctx.state, content_hash) is not None:
            return None
        authors = [AuthorShare(owner, BPS)]
        asset_id = asset_id_for(ctx.chain_id, content_hash)
        asset = Asset(
            id=asset_id,
            kind=kind,
            content_hash=content_hash,
            meta=meta,
            authors=authors,
            parents=list(parents or []),
            signatures=[],
            owner=owner,
            status=AssetStatus.PENDING,
            created=ctx.height,
            origin=origin,
        )
        ctx.state.set(_HASH + content_hash, asset_id)
        ctx.state.set(_OWNER + owner + asset_id, b"\x01")
        ctx.state.set_int(_COUNT, self.count(ctx.state) + 1)
        self._complete(ctx, asset, owner)
        return asset_id

    # ------------------------------------------------------------ messages

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, RegisterAsset):
            if msg.kind not in KINDS:
                raise MsgError(
                    f"kind {msg.kind[:32]!r} is not one of {', '.join(KINDS)}", Code.INVALID_MSG
                )
            if len(msg.content_hash) != 32:
                raise MsgError("content_hash must be a 32-byte SHA-256", Code.INVALID_MSG)
            _validate_meta(msg.meta)
            validate_authors(msg.authors)
            if len(msg.signatures) > len(msg.authors):
                raise MsgError("more signatures than authors", Code.INVALID_MSG)
            for s in msg.signatures:
                _check_sig_shape(s)
            if len(msg.parents) > MAX_PARENTS:
                raise MsgError(f"at most {MAX_PARENTS} parents", Code.INVALID_MSG)
            if any(len(p) != 32 for p in msg.parents) or len(set(msg.parents)) != len(msg.parents):
                raise MsgError("parents must be distinct 32-byte asset ids", Code.INVALID_MSG)
            if msg.previous and len(msg.previous) != 32:
                raise MsgError("previous must be a 32-byte asset id", Code.INVALID_MSG)
            if not 1 <= msg.pending_blocks <= MAX_PENDING_BLOCKS:
                raise MsgError(
                    f"pending_blocks must be in 1..{MAX_PENDING_BLOCKS}", Code.INVALID_MSG
                )
        elif isinstance(msg, SignAuthorship):
            if len(msg.asset_id) != 32:
                raise MsgError("asset ids are 32 bytes", Code.INVALID_MSG)
            _check_sig_shape(msg.signature)
        elif isinstance(msg, TransferAsset):
            if len(msg.asset_id) != 32:
                raise MsgError("asset ids are 32 bytes", Code.INVALID_MSG)
            if len(msg.to) != ADDRESS_LEN:
                raise MsgError(f"recipient must be a {ADDRESS_LEN}-byte address", Code.INVALID_MSG)
            if msg.to == sender:
                raise MsgError("the asset already belongs to the signer", Code.INVALID_MSG)

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, RegisterAsset):
            self._register(ctx, msg, sender)
        elif isinstance(msg, SignAuthorship):
            self._sign(ctx, msg, sender)
        elif isinstance(msg, TransferAsset):
            self._transfer(ctx, msg, sender)
        else:
            raise MsgError(f"registry does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)

    def _register(self, ctx: Context, msg: RegisterAsset, sender: bytes) -> None:
        state = ctx.state
        existing = self.by_content(state, msg.content_hash)
        if existing is not None:
            raise MsgError(
                f"content {msg.content_hash.hex()} is already registered as asset "
                f"{_id_hex(existing)}"
            )
        for p in msg.parents:
            self.require(state, p)
        version = 1
        if msg.previous:
            prev = self.require(state, msg.previous)
            if prev.owner != sender:
                raise MsgError(
                    f"only the owner of asset {_id_hex(prev.id)} may publish a new version of it",
                    Code.UNAUTHORIZED,
                )
            if prev.next_version:
                raise MsgError(
                    f"asset {_id_hex(prev.id)} already has a newer version "
                    f"{_id_hex(prev.next_version)}"
                )
            version = prev.version + 1
        asset_id = asset_id_for(ctx.chain_id, msg.content_hash)
        stmt = statement_bytes(
            ctx.chain_id,
            msg.content_hash,
            msg.kind,
            msg.authors,
            owner=sender,
            parents=msg.parents,
        )
        sigs = {address_bytes(s.pubkey): s for s in msg.signatures}
        authors = {a.address for a in msg.authors}
        for i, s in enumerate(msg.signatures):
            _check_sig(s, stmt, authors, f"signature {i}")
        if len(sigs) != len(msg.signatures):
            raise MsgError("two signatures by the same author", Code.INVALID_MSG)
        asset = Asset(
            id=asset_id,
            kind=msg.kind,
            content_hash=msg.content_hash,
            meta=msg.meta,
            authors=list(msg.authors),
            parents=list(msg.parents),
            signatures=_ordered(msg.authors, sigs),
            owner=sender,
            status=AssetStatus.PENDING,
            created=ctx.height,
            expires=ctx.height + msg.pending_blocks,
            previous=msg.previous,
            version=version,
        )
        state.set(_HASH + msg.content_hash, asset_id)
        state.set(_OWNER + sender + asset_id, b"\x01")
        state.set_int(_COUNT, self.count(state) + 1)
        if len(asset.signatures) == len(asset.authors):
            self._complete(ctx, asset, sender)
        else:
            state.set_obj(_ASSET + asset_id, asset)
            state.set(_PENDING + asset.expires.to_bytes(8, "big") + asset_id, b"\x01")
            self.note(
                ctx,
                asset_id,
                "pending",
                sender,
                f"{len(asset.signatures)} of {len(asset.authors)} author signatures",
            )
            ctx.emit("asset_pending", asset=asset_id, owner=sender, expires=asset.expires)

    def _complete(self, ctx: Context, asset: Asset, actor: bytes) -> None:
        state = ctx.state
        done = msgspec.structs.replace(
            asset, status=AssetStatus.REGISTERED, registered=ctx.height, expires=0
        )
        if asset.status == AssetStatus.PENDING and asset.expires:
            state.delete(_PENDING + asset.expires.to_bytes(8, "big") + asset.id)
        state.set_obj(_ASSET + asset.id, done)
        state.set_obj(
            self.record_key(asset.id),
            RegistrationRecord(
                asset_id=asset.id,
                kind=asset.kind,
                content_hash=asset.content_hash,
                meta=asset.meta,
                authors=list(asset.authors),
                parents=list(asset.parents),
                signatures=list(asset.signatures),
                owner=asset.owner,
                previous=asset.previous,
                origin=asset.origin,
                height=ctx.height,
            ),
        )
        for p in asset.parents:
            self.add_edge(ctx, EdgeKind.DERIVED_FROM, asset.id, p)
        if asset.previous:
            prev = self.require(state, asset.previous)
            if prev.next_version:  # another version completed while this one was pending
                raise MsgError(
                    f"asset {_id_hex(prev.id)} already has a newer version "
                    f"{_id_hex(prev.next_version)}"
                )
            state.set_obj(_ASSET + prev.id, msgspec.structs.replace(prev, next_version=asset.id))
            self.note(ctx, prev.id, "superseded", actor, f"new version {_id_hex(asset.id)}")
        self.note(
            ctx,
            asset.id,
            "registered",
            actor,
            asset.origin or f"{len(asset.authors)} author(s) signed",
        )
        ctx.emit("asset_registered", asset=asset.id, owner=asset.owner, kind=asset.kind)

    def _sign(self, ctx: Context, msg: SignAuthorship, sender: bytes) -> None:
        state = ctx.state
        asset = self.asset(state, msg.asset_id)
        if asset is None:
            raise MsgError(f"unknown asset {_id_hex(msg.asset_id)}", Code.NOT_FOUND)
        if asset.status != AssetStatus.PENDING:
            raise MsgError(f"asset {_id_hex(asset.id)} is already registered")
        stmt = statement_bytes(
            ctx.chain_id,
            asset.content_hash,
            asset.kind,
            asset.authors,
            owner=asset.owner,
            parents=asset.parents,
        )
        _check_sig(msg.signature, stmt, {a.address for a in asset.authors}, "signature")
        author = address_bytes(msg.signature.pubkey)
        sigs = {address_bytes(s.pubkey): s for s in asset.signatures}
        if author in sigs:
            raise MsgError(f"{to_bech32(author)} has already signed asset {_id_hex(asset.id)}")
        sigs[author] = msg.signature
        asset = msgspec.structs.replace(asset, signatures=_ordered(asset.authors, sigs))
        self.note(ctx, asset.id, "signed", author)
        if len(asset.signatures) == len(asset.authors):
            self._complete(ctx, asset, sender)
        else:
            state.set_obj(_ASSET + asset.id, asset)

    def _transfer(self, ctx: Context, msg: TransferAsset, sender: bytes) -> None:
        state = ctx.state
        asset = self.require(state, msg.asset_id)
        if asset.owner != sender:
            raise MsgError(
                f"{to_bech32(sender)} does not own asset {_id_hex(asset.id)}", Code.UNAUTHORIZED
            )
        state.delete(_OWNER + sender + asset.id)
        state.set(_OWNER + msg.to + asset.id, b"\x01")
        state.set_obj(_ASSET + asset.id, msgspec.structs.replace(asset, owner=msg.to))
        self.note(ctx, asset.id, "transferred", sender, f"to {to_bech32(msg.to)}")
        ctx.emit("asset_transferred", asset=asset.id, sender=sender, recipient=msg.to)

    # ------------------------------------------------------------ blocks

    def end_block(self, ctx: Context) -> list[Any]:
        """Expire pending registrations whose window ended at this height."""
        state = ctx.state
        prefix = _PENDING + ctx.height.to_bytes(8, "big")
        for key, _ in list(state.iter_prefix(prefix)):
            asset_id = key[len(prefix) :]
            asset = self.asset(state, asset_id)
            state.delete(key)
            if asset is None or asset.status != AssetStatus.PENDING:
                continue
            state.delete(_ASSET + asset_id)
            state.delete(_HASH + asset.content_hash)
            state.delete(_OWNER + asset.owner + asset_id)
            state.set_int(_COUNT, self.count(state) - 1)
            self.note(ctx, asset_id, "expired", asset.owner, "author signatures did not arrive")
            ctx.emit("asset_expired", asset=asset_id)
        return []

    def invariants(self, ctx: Context) -> None:
        n = sum(1 for _ in ctx.state.iter_prefix(_HASH))
        count = self.count(ctx.state)
        if n != count:
            raise InvariantViolation(
                f"registry: {n} content hashes indexed but the asset count is {count}"
            )


def _check_sig_shape(s: AuthorSig) -> None:
    if len(s.pubkey) != 32 or len(s.signature) != 64:
        raise MsgError(
            "an authorship signature is a 32-byte key and a 64-byte signature", Code.INVALID_MSG
        )


def _check_sig(s: AuthorSig, stmt: bytes, authors: set[bytes], what: str) -> None:
    author = address_bytes(s.pubkey)
    if author not in authors:
        raise MsgError(
            f"{what} is by {to_bech32(author)}, who is not an author of this asset",
            Code.UNAUTHORIZED,
        )
    if not verify(s.pubkey, stmt, s.signature):
        raise MsgError(
            f"{what} by {to_bech32(author)} does not verify over the authorship statement "
            "(chain id, content hash, kind, authors and shares, owner, parents)",
            Code.BAD_SIGNATURE,
        )


def _ordered(authors: list[AuthorShare], sigs: dict[bytes, AuthorSig]) -> list[AuthorSig]:
    return [sigs[a.address] for a in authors if a.address in sigs]


def register_asset_msg(**fields: Any) -> AnyMsg:
    return pack("registry/RegisterAsset", RegisterAsset(**fields))


def sign_authorship_msg(asset_id: bytes, signature: AuthorSig) -> AnyMsg:
    return pack("registry/SignAuthorship", SignAuthorship(asset_id, signature))


def transfer_asset_msg(asset_id: bytes, to: bytes) -> AnyMsg:
    return pack("registry/TransferAsset", TransferAsset(asset_id, to))

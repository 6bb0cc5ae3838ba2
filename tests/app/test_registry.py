"""registry: proof of authorship, pending co-authored registrations, versions, provenance.

Also the shared helpers of the asset-layer tests (registry, consent, licensing, market,
fl assets): a :class:`Ledger` that signs and runs txs block by block, and
:func:`frozen` / :func:`assert_unchanged` for "bad input changes nothing".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts.bank import FEE_COLLECTOR
from cifer.app.contracts.consent import grant_consent_msg
from cifer.app.contracts.licensing import Terms, offer_licence_msg
from cifer.app.contracts.registry import (
    BPS,
    MAX_META_BYTES,
    AssetMeta,
    AssetStatus,
    AuthorShare,
    AuthorSig,
    Edge,
    EdgeKind,
    RegisterAsset,
    RegistryModule,
    asset_id_for,
    register_asset_msg,
    sign_authorship,
    sign_authorship_msg,
    transfer_asset_msg,
)
from cifer.app.module import Code
from cifer.app.state import StateOverlay
from cifer.app.txbuilder import make_tx
from cifer.base.chain.abci import Event, TxResult
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey, to_bech32
from cifer.base.encoding import decode, encode

from .helpers import CHAIN_ID, FEE, KEYS, Chain

A, B, C, D, E = KEYS

#: State of the asset-layer modules; the bank's part is compared separately.
MODULE_PREFIXES = (b"registry/", b"consent/", b"licensing/", b"market/", b"fl/")


# ------------------------------------------------------------------ shared helpers


class Ledger:
    """One app driven block by block; each tx signed with its key's next nonce."""

    def __init__(self, app: CiferApp) -> None:
        self.app = app
        self.chain = Chain(app)
        self.last_events: list[Event] = []  # block events (end_block) of the last block

    @property
    def state(self) -> StateOverlay:
        return StateOverlay(self.app.store)

    @property
    def height(self) -> int:
        return self.app.height

    def block(self, *txs: tuple[PrivateKey, AnyMsg]) -> list[TxResult]:
        used: dict[bytes, int] = {}
        raws = []
        for key, msg in txs:
            n = self.app.nonce(key.address) + used.get(key.address, 0)
            used[key.address] = used.get(key.address, 0) + 1
            raws.append(make_tx(key, CHAIN_ID, n, [msg], fee=FEE))
        res = self.chain.run(raws)
        self.last_events = list(res.events)
        return list(res.tx_results)

    def do(self, key: PrivateKey, msg: AnyMsg) -> TxResult:
        return self.block((key, msg))[0]

    def ok(self, key: PrivateKey, msg: AnyMsg) -> TxResult:
        res = self.do(key, msg)
        assert res.code == 0, res.log
        return res

    def empty(self, n: int = 1) -> None:
        for _ in range(n):
            self.block()


def content(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def shares(*pairs: tuple[PrivateKey, int]) -> list[AuthorShare]:
    return [AuthorShare(k.address, bps) for k, bps in pairs]


REGISTER_FIELDS = RegisterAsset.__struct_fields__


def decode_register(msg: AnyMsg) -> RegisterAsset:
    return decode(msg.value, RegisterAsset)


def sign_as_a(key: PrivateKey, *args: object, **kw: object) -> AuthorSig:
    """An authorship signature for a registration whose owner is A (most tests' registrant)."""
    kw.setdefault("owner", A.address)
    return sign_authorship(key, *args, **kw)  # type: ignore[arg-type]


def register_msg(
    tag: str,
    authors: Sequence[tuple[PrivateKey, int]],
    *,
    signers: Sequence[PrivateKey] | None = None,
    kind: str = "dataset",
    meta: AssetMeta | None = None,
    parents: Sequence[bytes] = (),
    previous: bytes = b"",
    pending_blocks: int = 1_000,
    chain_id: str = CHAIN_ID,
    owner: PrivateKey | None = None,
) -> AnyMsg:
    """RegisterAsset of ``content(tag)``, signed by ``signers`` (default: every author)."""
    h = content(tag)
    who = shares(*authors)
    keys = [k for k, _ in authors] if signers is None else list(signers)
    return register_asset_msg(
        kind=kind,
        content_hash=h,
        meta=meta if meta is not None else AssetMeta(name=tag),
        authors=who,
        signatures=[
            sign_as_a(
                k, chain_id, h, kind, who, owner=(owner or authors[0][0]).address, parents=parents
            )
            for k in keys
        ],
        parents=list(parents),
        previous=previous,
        pending_blocks=pending_blocks,
    )


def register(
    ledger: Ledger,
    owner: PrivateKey,
    tag: str,
    authors: Sequence[tuple[PrivateKey, int]] | None = None,
    **kw: object,
) -> bytes:
    """Register ``content(tag)`` (authors default to the owner alone); -> its asset id."""
    ledger.ok(owner, register_msg(tag, authors or [(owner, BPS)], owner=owner, **kw))  # type: ignore[arg-type]
    return asset_id_for(CHAIN_ID, content(tag))


def module_state(app: CiferApp) -> dict[bytes, bytes]:
    st = StateOverlay(app.store)
    return {k: v for p in MODULE_PREFIXES for k, v in st.iter_prefix(p)}


def frozen(app: CiferApp, signer: bytes) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The asset modules' state, and the bank's except the signer's and the fee collector's
    entries (which the fee and nonce of a failed tx legitimately change)."""
    st = StateOverlay(app.store)
    bank = {k: v for k, v in st.iter_prefix(b"bank/") if signer not in k and FEE_COLLECTOR not in k}
    return module_state(app), bank


def assert_unchanged(
    app: CiferApp, before: tuple[dict[bytes, bytes], dict[bytes, bytes]], signer: bytes
) -> None:
    after = frozen(app, signer)
    assert after[0] == before[0], "asset-module state changed"
    assert after[1] == before[1], "another account's balance changed"


def event_types(res: TxResult) -> list[str]:
    return [e.type for e in res.events]


def attrs(ev: Event) -> dict[str, str]:
    return {a.key: a.value for a in ev.attrs}


@pytest.fixture
def ledger(app: CiferApp) -> Ledger:
    return Ledger(app)


# ------------------------------------------------------------------ registration


def test_single_author_registration_completes_at_once(ledger: Ledger) -> None:
    meta = AssetMeta(name="cats", media_type="image/png", uri="ipfs://x", tags=["images"])
    res = ledger.ok(A, register_msg("cats", [(A, BPS)], meta=meta))
    h = ledger.height
    aid = asset_id_for(CHAIN_ID, content("cats"))
    st = ledger.state
    a = RegistryModule.asset(st, aid)
    assert a is not None
    assert a.status == AssetStatus.REGISTERED and a.registered == h and a.created == h
    assert a.owner == A.address and a.kind == "dataset" and a.meta == meta
    assert [s.pubkey for s in a.signatures] == [A.public.raw]
    rec = RegistryModule.record(st, aid)
    assert rec is not None and rec.height == h and rec.content_hash == content("cats")
    assert rec.authors == shares((A, BPS)) and rec.signatures == a.signatures
    assert RegistryModule.by_content(st, content("cats")) == aid
    assert RegistryModule.owned_by(st, A.address) == [aid]
    assert RegistryModule.count(st) == 1
    assert [(e.action, e.actor, e.height) for e in RegistryModule.history(st, aid)] == [
        ("registered", A.address, h)
    ]
    assert "asset_registered" in event_types(res)
    ev = next(e for e in res.events if e.type == "asset_registered")
    assert attrs(ev) == {"asset": aid.hex(), "owner": to_bech32(A.address), "kind": "dataset"}


def test_co_authored_registration_is_pending_until_the_last_author_signs(
    ledger: Ledger,
) -> None:
    authors = [(A, 6_000), (B, 4_000)]
    res = ledger.ok(A, register_msg("song", authors, signers=[A], kind="content"))
    aid = asset_id_for(CHAIN_ID, content("song"))
    created = ledger.height
    st = ledger.state
    a = RegistryModule.asset(st, aid)
    assert a is not None and a.status == AssetStatus.PENDING and a.registered == 0
    assert a.expires == created + 1_000
    assert RegistryModule.record(st, aid) is None  # nothing provable yet
    assert "asset_pending" in event_types(res) and "asset_registered" not in event_types(res)
    # a pending asset cannot be licensed yet
    bad = ledger.do(A, offer_licence_msg(aid, Terms(allowed=["train"])))
    assert bad.code != 0 and "is pending: 1 author signature(s) missing" in bad.log
    # the co-author's signature may be relayed by anyone
    sig = sign_as_a(B, CHAIN_ID, content("song"), "content", shares(*authors))
    res = ledger.ok(C, sign_authorship_msg(aid, sig))
    done_at = ledger.height
    st = ledger.state
    a = RegistryModule.asset(st, aid)
    assert a is not None and a.status == AssetStatus.REGISTERED and a.registered == done_at
    assert [s.pubkey for s in a.signatures] == [A.public.raw, B.public.raw]
    assert a.expires == 0
    rec = RegistryModule.record(st, aid)
    assert rec is not None and rec.height == done_at and len(rec.signatures) == 2
    assert [e.action for e in RegistryModule.history(st, aid)] == [
        "pending",
        "signed",
        "registered",
    ]
    assert "asset_registered" in event_types(res)
    # it no longer expires
    assert not list(st.iter_prefix(b"registry/pending/"))


def test_pending_registration_completes_at_its_last_height(ledger: Ledger) -> None:
    authors = [(A, 5_000), (B, 5_000)]
    ledger.ok(A, register_msg("edge", authors, signers=[A], pending_blocks=2))
    aid = asset_id_for(CHAIN_ID, content("edge"))
    expires = ledger.height + 2
    ledger.empty()
    assert ledger.height + 1 == expires
    sig = sign_as_a(B, CHAIN_ID, content("edge"), "dataset", shares(*authors))
    ledger.ok(B, sign_authorship_msg(aid, sig))
    a = RegistryModule.asset(ledger.state, aid)
    assert a is not None and a.status == AssetStatus.REGISTERED
    ledger.empty(2)
    assert RegistryModule.asset(ledger.state, aid) is not None


def test_pending_registration_expires_and_frees_the_content_hash(ledger: Ledger) -> None:
    authors = [(A, 6_000), (B, 4_000)]
    ledger.ok(A, register_msg("late", authors, signers=[A], pending_blocks=2))
    aid = asset_id_for(CHAIN_ID, content("late"))
    expires = ledger.height + 2
    # while pending it reserves the content hash
    dup = ledger.do(C, register_msg("late", [(C, BPS)]))
    assert dup.code != 0 and f"already registered as asset {aid.hex()}" in dup.log
    assert ledger.height + 1 == expires
    ledger.empty()  # the block at the expiry height ends the window
    assert any(
        e.type == "asset_expired" and attrs(e)["asset"] == aid.hex() for e in ledger.last_events
    )
    st = ledger.state
    assert RegistryModule.asset(st, aid) is None
    assert RegistryModule.by_content(st, content("late")) is None
    assert RegistryModule.owned_by(st, A.address) == []
    assert RegistryModule.count(st) == 0
    assert [e.action for e in RegistryModule.history(st, aid)] == ["pending", "expired"]
    # the late signature finds nothing
    sig = sign_as_a(B, CHAIN_ID, content("late"), "dataset", shares(*authors))
    res = ledger.do(B, sign_authorship_msg(aid, sig))
    assert res.code == Code.NOT_FOUND and f"unknown asset {aid.hex()}" in res.log
    # and someone else may now register the content
    ledger.ok(C, register_msg("late", [(C, BPS)]))
    a = RegistryModule.asset(ledger.state, aid)
    assert a is not None and a.owner == C.address and a.status == AssetStatus.REGISTERED
    ledger.app.check_invariants()


def test_duplicate_content_is_refused_with_the_existing_asset_id(ledger: Ledger) -> None:
    aid = register(ledger, A, "dup")
    before = frozen(ledger.app, B.address)
    res = ledger.do(B, register_msg("dup", [(B, BPS)], kind="model"))
    assert res.code == Code.MSG_FAILED
    assert f"content {content('dup').hex()} is already registered as asset {aid.hex()}" in res.log
    assert_unchanged(ledger.app, before, B.address)


# ------------------------------------------------------------------ signatures


def test_signature_by_a_non_author_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    authors = [(A, 6_000), (B, 4_000)]
    before = frozen(ledger.app, A.address)
    res = ledger.do(A, register_msg("x", authors, signers=[A, C]))
    assert res.code == Code.UNAUTHORIZED
    assert f"signature 1 is by {to_bech32(C.address)}, who is not an author" in res.log
    assert_unchanged(ledger.app, before, A.address)

    ledger.ok(A, register_msg("x", authors, signers=[A]))
    aid = asset_id_for(CHAIN_ID, content("x"))
    before = frozen(ledger.app, C.address)
    sig = sign_as_a(C, CHAIN_ID, content("x"), "dataset", shares(*authors))
    res = ledger.do(C, sign_authorship_msg(aid, sig))
    assert res.code == Code.UNAUTHORIZED and to_bech32(C.address) in res.log
    assert "not an author" in res.log
    assert_unchanged(ledger.app, before, C.address)
    a = RegistryModule.asset(ledger.state, aid)
    assert a is not None and a.status == AssetStatus.PENDING and len(a.signatures) == 1


@pytest.mark.parametrize(
    "forge",
    [
        # signed over another split
        lambda: sign_as_a(B, CHAIN_ID, content("y"), "dataset", shares((A, 5_000), (B, 5_000))),
        # signed for another chain
        lambda: sign_as_a(
            B, "other-chain", content("y"), "dataset", shares((A, 6_000), (B, 4_000))
        ),
        # signed for another kind
        lambda: sign_as_a(B, CHAIN_ID, content("y"), "model", shares((A, 6_000), (B, 4_000))),
        # B's key, A's signature
        lambda: AuthorSig(
            B.public.raw,
            sign_as_a(
                A, CHAIN_ID, content("y"), "dataset", shares((A, 6_000), (B, 4_000))
            ).signature,
        ),
    ],
    ids=["other-shares", "other-chain", "other-kind", "wrong-key"],
)
def test_bad_signature_is_refused(ledger: Ledger, forge: Callable[[], AuthorSig]) -> None:
    authors = [(A, 6_000), (B, 4_000)]
    sig = forge()
    good = sign_as_a(A, CHAIN_ID, content("y"), "dataset", shares(*authors))
    msg = register_asset_msg(
        kind="dataset",
        content_hash=content("y"),
        meta=AssetMeta(name="y"),
        authors=shares(*authors),
        signatures=[good, sig],
    )
    before = frozen(ledger.app, A.address)
    res = ledger.do(A, msg)
    assert res.code == Code.BAD_SIGNATURE, res.log
    assert f"signature 1 by {to_bech32(B.address)} does not verify" in res.log
    assert_unchanged(ledger.app, before, A.address)
    # the same bad signature sent to complete a pending registration
    ledger.ok(A, register_msg("y", authors, signers=[A]))
    aid = asset_id_for(CHAIN_ID, content("y"))
    before = frozen(ledger.app, B.address)
    res = ledger.do(B, sign_authorship_msg(aid, sig))
    assert res.code == Code.BAD_SIGNATURE and "does not verify" in res.log
    assert_unchanged(ledger.app, before, B.address)


def test_second_signature_by_the_same_author_is_refused(ledger: Ledger) -> None:
    authors = [(A, 6_000), (B, 4_000)]
    ledger.ok(A, register_msg("twice", authors, signers=[A]))
    aid = asset_id_for(CHAIN_ID, content("twice"))
    sig = sign_as_a(A, CHAIN_ID, content("twice"), "dataset", shares(*authors))
    res = ledger.do(A, sign_authorship_msg(aid, sig))
    assert res.code != 0 and f"{to_bech32(A.address)} has already signed" in res.log
    res = ledger.do(A, register_msg("twice2", authors, signers=[A, A]))
    assert res.code == Code.INVALID_MSG and "two signatures by the same author" in res.log


# ------------------------------------------------------------------ bad input


def _too_big_meta() -> AssetMeta:
    return AssetMeta(
        name="n" * 128,
        media_type="m" * 64,
        uri="u" * 512,
        tags=[f"t{i:02d}" + "x" * 28 for i in range(16)],
    )


@pytest.mark.parametrize(
    ("msg", "code", "needle"),
    [
        (
            lambda: register_msg("s", [(A, 6_000), (B, 3_000)]),
            Code.INVALID_MSG,
            "author shares sum to 9000 basis points; they must sum to 10000",
        ),
        (
            lambda: register_msg("s", [(A, 6_000), (B, 4_001)]),
            Code.INVALID_MSG,
            "author shares sum to 10001 basis points",
        ),
        (
            lambda: register_msg("s", [(A, 6_000), (C, 4_000)], signers=[A, C, B]),
            Code.INVALID_MSG,
            "more signatures than authors",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], meta=AssetMeta(name="n" * 129)),
            Code.INVALID_MSG,
            "metadata: name must be 1..128 characters, got 129",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], meta=AssetMeta(name="")),
            Code.INVALID_MSG,
            "metadata: name must be 1..128 characters, got 0",
        ),
        (
            lambda: register_msg(
                "s", [(A, BPS)], meta=AssetMeta(name="n", tags=[f"t{i}" for i in range(17)])
            ),
            Code.INVALID_MSG,
            "metadata: 17 tags; at most 16",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], meta=_too_big_meta()),
            Code.INVALID_MSG,
            f"the limit is {MAX_META_BYTES}",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], meta=AssetMeta(name="n", tags=["Bad Tag"])),
            Code.INVALID_MSG,
            "tag 'Bad Tag' must be",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], kind="weights"),
            Code.INVALID_MSG,
            "kind 'weights' is not one of dataset, model, content, code",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], parents=[content("nope")]),
            Code.NOT_FOUND,
            f"unknown asset {content('nope').hex()}",
        ),
        (
            lambda: register_msg("s", [(A, BPS)], previous=content("nope")),
            Code.NOT_FOUND,
            f"unknown asset {content('nope').hex()}",
        ),
        (
            lambda: transfer_asset_msg(content("nope"), B.address),
            Code.NOT_FOUND,
            f"unknown asset {content('nope').hex()}",
        ),
        (
            lambda: sign_authorship_msg(
                content("nope"),
                sign_as_a(A, CHAIN_ID, content("nope"), "dataset", shares((A, BPS))),
            ),
            Code.NOT_FOUND,
            f"unknown asset {content('nope').hex()}",
        ),
    ],
    ids=[
        "shares-9000",
        "shares-10001",
        "too-many-signatures",
        "name-too-long",
        "name-empty",
        "too-many-tags",
        "meta-over-1024-bytes",
        "bad-tag",
        "bad-kind",
        "unknown-parent",
        "unknown-previous",
        "unknown-transfer",
        "unknown-sign",
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_no_state_change(
    ledger: Ledger, msg: Callable[[], AnyMsg], code: int, needle: str
) -> None:
    register(ledger, A, "existing")  # some state to keep
    before = frozen(ledger.app, A.address)
    res = ledger.do(A, msg())
    assert res.code == code, res.log
    assert needle in res.log
    assert_unchanged(ledger.app, before, A.address)


def test_oversized_metadata_is_measured_encoded() -> None:
    """The 1,024-byte limit bites before the field limits in the oversized case above."""
    meta = _too_big_meta()
    assert len(meta.name) <= 128 and len(meta.tags) <= 16 and len(meta.uri) <= 512
    assert len(encode(meta)) > MAX_META_BYTES


def test_pending_parent_cannot_be_used(ledger: Ledger) -> None:
    ledger.ok(A, register_msg("p", [(A, 5_000), (B, 5_000)], signers=[A]))
    pid = asset_id_for(CHAIN_ID, content("p"))
    res = ledger.do(A, register_msg("child", [(A, BPS)], parents=[pid]))
    assert res.code != 0 and f"asset {pid.hex()} is pending" in res.log
    assert RegistryModule.by_content(ledger.state, content("child")) is None


# ------------------------------------------------------------------ ownership and versions


def test_transfer_by_non_owner_is_refused_and_by_owner_moves_the_owner_index(
    ledger: Ledger,
) -> None:
    aid = register(ledger, A, "t")
    before = frozen(ledger.app, B.address)
    res = ledger.do(B, transfer_asset_msg(aid, C.address))
    assert res.code == Code.UNAUTHORIZED
    assert f"{to_bech32(B.address)} does not own asset {aid.hex()}" in res.log
    assert_unchanged(ledger.app, before, B.address)

    res = ledger.ok(A, transfer_asset_msg(aid, B.address))
    st = ledger.state
    a = RegistryModule.asset(st, aid)
    assert a is not None and a.owner == B.address
    assert a.authors == shares((A, BPS))  # authorship does not move with ownership
    assert RegistryModule.owned_by(st, A.address) == []
    assert RegistryModule.owned_by(st, B.address) == [aid]
    assert RegistryModule.history(st, aid)[-1].action == "transferred"
    assert "asset_transferred" in event_types(res)
    # the record of authorship is immutable: it still names the registering owner
    rec = RegistryModule.record(st, aid)
    assert rec is not None and rec.owner == A.address
    # the old owner has lost its rights, the new one has them
    res = ledger.do(A, transfer_asset_msg(aid, C.address))
    assert res.code == Code.UNAUTHORIZED
    ledger.ok(B, grant_consent_msg(asset_id=aid, purposes=["train"]))


def test_versions_only_by_the_owner_and_linear(ledger: Ledger) -> None:
    v1 = register(ledger, A, "v1")
    res = ledger.do(B, register_msg("v2", [(B, BPS)], previous=v1))
    assert res.code == Code.UNAUTHORIZED and "only the owner of asset" in res.log
    v2 = register(ledger, A, "v2", previous=v1)
    st = ledger.state
    a1, a2 = RegistryModule.asset(st, v1), RegistryModule.asset(st, v2)
    assert a1 is not None and a2 is not None
    assert a1.next_version == v2 and a2.previous == v1 and a2.version == 2
    assert RegistryModule.history(st, v1)[-1].action == "superseded"
    # a second "next version" of v1 would fork the chain
    res = ledger.do(A, register_msg("v2b", [(A, BPS)], previous=v1))
    assert res.code != 0 and f"already has a newer version {v2.hex()}" in res.log
    v3 = register(ledger, A, "v3", previous=v2)
    a3 = RegistryModule.asset(ledger.state, v3)
    assert a3 is not None and a3.version == 3


def test_pending_version_cannot_fork_the_chain_when_it_completes(ledger: Ledger) -> None:
    v1 = register(ledger, A, "v1")
    authors = [(A, 5_000), (B, 5_000)]
    ledger.ok(A, register_msg("v2-pending", authors, signers=[A], previous=v1))
    pending = asset_id_for(CHAIN_ID, content("v2-pending"))
    v2 = register(ledger, A, "v2", previous=v1)  # completes first
    sig = sign_as_a(B, CHAIN_ID, content("v2-pending"), "dataset", shares(*authors))
    res = ledger.do(B, sign_authorship_msg(pending, sig))
    assert res.code != 0 and f"already has a newer version {v2.hex()}" in res.log
    a1 = RegistryModule.asset(ledger.state, v1)
    assert a1 is not None and a1.next_version == v2


# ------------------------------------------------------------------ provenance


def test_ancestors_descendants_and_contributors_over_a_small_dag(ledger: Ledger) -> None:
    d1 = register(ledger, A, "d1")
    d2 = register(ledger, B, "d2")
    m = register(ledger, C, "m", [(C, 7_000), (D, 3_000)], kind="model", parents=[d1, d2])
    n = register(ledger, D, "n", kind="model", parents=[m])
    o = register(ledger, E, "o", kind="model", parents=[m, d2])
    st = ledger.state

    def edges(out: list[tuple[Edge, int]]) -> set[tuple[bytes, bytes, int, int]]:
        return {(e.src, e.dst, e.kind, depth) for e, depth in out}

    df = EdgeKind.DERIVED_FROM
    assert edges(RegistryModule.ancestors(st, o)) == {
        (o, m, df, 0),
        (o, d2, df, 0),
        (m, d1, df, 1),
        (m, d2, df, 1),
    }
    assert edges(RegistryModule.ancestors(st, o, max_depth=1)) == {(o, m, df, 0), (o, d2, df, 0)}
    assert edges(RegistryModule.ancestors(st, n)) == {
        (n, m, df, 0),
        (m, d1, df, 1),
        (m, d2, df, 1),
    }
    assert edges(RegistryModule.descendants(st, d2)) == {
        (m, d2, df, 0),
        (o, d2, df, 0),
        (n, m, df, 1),
        (o, m, df, 1),
    }
    assert edges(RegistryModule.descendants(st, d2, max_depth=1)) == {
        (m, d2, df, 0),
        (o, d2, df, 0),
    }
    assert RegistryModule.ancestors(st, d1) == []
    assert RegistryModule.descendants(st, n) == []
    authors, contributed = RegistryModule.contributors(st, m)
    assert authors == shares((C, 7_000), (D, 3_000)) and contributed == []
    assert RegistryModule.contributors(st, content("none")) == ([], [])
    rec = RegistryModule.record(st, o)
    assert rec is not None and rec.parents == [m, d2]


def test_a_registration_copied_by_another_sender_cannot_steal_ownership(ledger: Ledger) -> None:
    """The statement names the owner: C replaying A's signed registration gets nothing."""
    msg = register_msg("stolen", [(A, 6_000), (B, 4_000)], owner=A)
    before = module_state(ledger.app)
    res = ledger.do(C, msg)
    assert res.code == Code.BAD_SIGNATURE and "owner" in res.log
    assert module_state(ledger.app) == before
    ledger.ok(A, msg)  # the rightful owner's tx still goes through
    a = RegistryModule.asset(ledger.state, asset_id_for(CHAIN_ID, content("stolen")))
    assert a is not None and a.owner == A.address


def test_co_authors_sign_the_parents(ledger: Ledger) -> None:
    """Parents take derivative royalties, so adding one the co-author did not sign fails."""
    parent = register(ledger, D, "parent")
    signed_without = register_msg("child", [(A, 5_000), (B, 5_000)])
    tampered = register_asset_msg(
        **{
            **{f: getattr(decode_register(signed_without), f) for f in REGISTER_FIELDS},
            "parents": [parent],
        }
    )
    res = ledger.do(A, tampered)
    assert res.code == Code.BAD_SIGNATURE
    ledger.ok(A, register_msg("child", [(A, 5_000), (B, 5_000)], parents=[parent]))

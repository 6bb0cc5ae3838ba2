"""``cifer asset | consent | license | market``: the IP side of Cifer from the command line.

Every write waits for its block and prints what the chain recorded (ids, payments);
a refusal prints the chain's reason. Amounts accept ``CIF`` or ``ucif`` suffixes like
``cifer tx send``. Exit codes: 0 done, 1 the node refused or could not be reached,
2 bad input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cifer.app.cli.client import NodeOpt, load_signer, parse_amount
from cifer.app.contracts.registry import KINDS
from cifer.app.sdk.assets import AssetError, content_hash_of, parse_asset_id
from cifer.app.sdk.client import Client, ClientError, NodeUnreachable

asset_app = typer.Typer(
    help="Register assets with proof of authorship; show, trace and verify them.",
    no_args_is_help=True,
)
consent_app = typer.Typer(help="Grant and revoke consent to use an asset.", no_args_is_help=True)
license_app = typer.Typer(
    help="Offer, buy and use licences (royalties paid on chain).", no_args_is_help=True
)
market_app = typer.Typer(
    help="List and find datasets and models for licence.", no_args_is_help=True
)

console = Console()
err_console = Console(stderr=True)

KeyOpt = typer.Option(..., "--key", help="Key name, or test:N for a localnet test account.")
HomeOpt = typer.Option(None, "--home", help="Keyring home (default ~/.cifer).")
JsonOpt = typer.Option(False, "--json", help="Print the node's JSON instead of a table.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _client(node: str, key: str | None = None, home: str | None = None) -> Iterator[Client]:
    """A Client whose errors become clean CLI failures."""
    from cifer.app.genesis_builder import account_key

    signer = load_signer(key, home) if key else account_key(0)
    try:
        with Client(node, signer, retry_s=10.0) as c:
            yield c
    except NodeUnreachable as exc:
        raise _fail(f"cannot reach node {node}: {exc}", 1) from None
    except ClientError as exc:
        raise _fail(str(exc), 1) from None
    except AssetError as exc:
        raise _fail(str(exc)) from None


def _amount(text: str, what: str) -> int:
    try:
        return parse_amount(text)
    except (ValueError, typer.BadParameter) as exc:
        raise _fail(f"{what}: {exc}") from None


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data))


def _authors(specs: list[str], default: str) -> list[tuple[str, int]]:
    """``ADDR:BPS`` pairs; none given means the signer alone at 10,000 bps."""
    if not specs:
        return [(default, 10_000)]
    out = []
    for s in specs:
        addr, sep, bps = s.rpartition(":")
        if not sep or not bps.isdigit():
            raise _fail(f"--author takes ADDRESS:BPS (e.g. cif1...:6000), got {s!r}")
        out.append((addr, int(bps)))
    return out


# ----------------------------------------------------------------------------- asset


@asset_app.command("register")
def register(
    file: Path = typer.Argument(None, help="The content; only its SHA-256 leaves this machine."),
    kind: str = typer.Option(..., "--kind", help=f"One of {', '.join(KINDS)}."),
    name: str = typer.Option(..., "--name", help="Display name."),
    content_hash: str = typer.Option(None, "--hash", help="Hex SHA-256 instead of a file."),
    media_type: str = typer.Option("", "--media-type"),
    uri: str = typer.Option("", "--uri", help="Where the owner keeps the content (optional)."),
    tags: list[str] = typer.Option([], "--tag", help="Free tag; repeat for several."),
    authors: list[str] = typer.Option(
        [], "--author", help="ADDRESS:BPS; repeat; shares sum to 10000 (default: you alone)."
    ),
    parents: list[str] = typer.Option([], "--parent", help="Asset id this derives from."),
    previous: str = typer.Option(None, "--previous", help="Asset id this is a new version of."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Register an asset; you sign as author if you are one. Co-authors then run
    ``cifer asset sign ID`` (the asset is pending until all have signed)."""
    if kind not in KINDS:
        raise _fail(f"--kind must be one of {', '.join(KINDS)}")
    if (file is None) == (content_hash is None):
        raise _fail("give a FILE or --hash (not both)")
    try:
        digest = bytes.fromhex(content_hash) if content_hash else content_hash_of(file)
    except (ValueError, AssetError) as exc:
        raise _fail(f"content: {exc}") from None
    with _client(node, key, home) as c:
        aid = c.register_asset(
            kind=kind,
            name=name,
            content_hash=digest,
            media_type=media_type,
            uri=uri,
            tags=tags,
            authors=_authors(authors, c.address),
            parents=parents,
            previous=previous,
        )
        a = c.asset(aid)
    console.print(f"asset [bold]{aid}[/] {a['status']} (content {digest.hex()})")
    missing = [x["address"] for x in a["authors"] if x["address"] not in a["signed_by"]]
    if missing:
        console.print(
            f"waiting for {len(missing)} co-author signature(s) until height {a['expires']}: "
            + ", ".join(missing)
            + f"\neach runs: cifer asset sign {aid} --key KEY"
        )


@asset_app.command("sign")
def sign(
    asset_id: str = typer.Argument(..., help="A pending asset you are an author of."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Add your authorship signature to a pending registration."""
    with _client(node, key, home) as c:
        c.sign_asset(asset_id)
        a = c.asset(asset_id)
    console.print(f"signed; asset {asset_id} is {a['status']}")


@asset_app.command("transfer")
def transfer(
    asset_id: str = typer.Argument(...),
    to: str = typer.Argument(..., help="New owner (cif1...)."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Transfer ownership (control of consent and licensing; royalties stay with authors)."""
    with _client(node, key, home) as c:
        c.transfer_asset(asset_id, to)
    console.print(f"asset {asset_id} now belongs to {to}")


@asset_app.command("show")
def show(asset_id: str = typer.Argument(...), node: str = NodeOpt, as_json: bool = JsonOpt) -> None:
    """An asset: kind, content hash, authors and shares, owner, status, record."""
    with _client(node) as c:
        a = c.asset(asset_id)
    if as_json:
        _print_json(a)
        return
    t = Table(show_header=False, title=f"asset {a['id']}")
    for k in ("kind", "name", "content_hash", "owner", "status", "version", "origin", "tags"):
        t.add_row(k, str(a[k]))
    for x in a["authors"]:
        signed = "signed" if x["address"] in a["signed_by"] else "[yellow]not signed[/]"
        t.add_row("author", f"{x['address']}  {x['share_bps'] / 100:g}%  {signed}")
    for p in a["parents"]:
        t.add_row("derived from", p)
    if a["record"]:
        t.add_row("record", f"height {a['record']['height']} (cifer asset verify {a['id']})")
    console.print(t)


@asset_app.command("provenance")
def provenance(
    asset_id: str = typer.Argument(...),
    depth: int = typer.Option(16, "--depth", min=1, max=64),
    node: str = NodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Lineage (ancestors, descendants), contributors with shares, licensees, history."""
    with _client(node) as c:
        p = c.asset_provenance(asset_id, depth)
    if as_json:
        _print_json(p)
        return
    a = p["asset"]
    console.print(f"[bold]{a['name']}[/] ({a['kind']}, {a['id']})")
    t = Table(title="lineage")
    for col in ("edge", "from", "to", "depth"):
        t.add_column(col)
    for e in p["ancestors"]:
        t.add_row(e["kind"], e["from"], e["to"], str(e["depth"]))
    for e in p["descendants"]:
        t.add_row(e["kind"] + " (descendant)", e["from"], e["to"], str(e["depth"]))
    console.print(t)
    t = Table(title="authors and contributors")
    t.add_column("who")
    t.add_column("role")
    t.add_column("share", justify="right")
    for x in p["authors"]:
        t.add_row(x["address"], "author", f"{x['share_bps'] / 100:g}%")
    for x in p["contributors"]:
        t.add_row(x["address"], "contributor", f"{x['share_bps'] / 100:g}%")
    console.print(t)
    for e in p["licensed_to"]:
        console.print(f"licensed to {e['to']} (licence {e['weight']}, height {e['height']})")
    t = Table(title="history")
    for col in ("height", "action", "by", "detail"):
        t.add_column(col)
    for h in p["history"]:
        t.add_row(str(h["height"]), h["action"], h["actor"], h["detail"])
    console.print(t)


@asset_app.command("verify")
def verify(
    asset_id: str = typer.Argument(None, help="Asset whose registration record to verify."),
    genesis: Path = typer.Option(
        None,
        "--genesis",
        help="Your own copy of the chain's genesis.json (without it the node's is used, "
        "which proves consistency with that node's chain, not which chain it is).",
    ),
    usage: int = typer.Option(None, "--usage", help="Verify this usage record instead."),
    trust_file: Path = typer.Option(
        None, "--trust-file", help="Keep verified headers here; later runs start from them."
    ),
    node: str = NodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check a registration (or usage) record with a light client: every header from
    genesis with its commit's signatures, then the record's Merkle proof against the app
    hash, then the authors' signatures inside the record."""
    from cifer.app.sdk.proofs import VerificationError, verify_record
    from cifer.base.chain.genesis import load_genesis
    from cifer.base.chain.types import ValidationError

    if (asset_id is None) == (usage is None):
        raise _fail("give an ASSET_ID or --usage ID")
    with _client(node) as c:
        if usage is not None:
            rec = c.usage(usage)["record"]
            what = f"usage record {usage}"
        else:
            a = c.asset(parse_asset_id(asset_id))
            rec = a["record"]
            what = f"registration of asset {a['id']}"
            if rec is None:
                raise _fail(f"asset {a['id']} is {a['status']}: no registration record yet", 1)
        try:
            gen = load_genesis(genesis) if genesis is not None else _node_genesis(c)
        except ValidationError as exc:
            raise _fail(f"genesis: {exc}") from None
    key = bytes.fromhex(rec["key"])
    try:
        report = verify_record(node, key, int(rec["height"]), gen, trust_file=trust_file)
        checks = check_record_content(key, report.value, gen.chain_id)
    except VerificationError as exc:
        raise _fail(f"{what} does NOT verify: {exc}", 1) from None
    if as_json:
        _print_json({**report.to_json(), "record_checks": checks})
        return
    console.print(f"[bold green]verified[/] {what}")
    for line in [*report.lines(), *checks]:
        console.print(f"  {line}")
    if genesis is None:
        console.print(
            "  [yellow]note:[/] genesis came from the node; pass --genesis with your own copy "
            "to pin which chain this is"
        )


def _node_genesis(c: Client) -> Any:
    import msgspec

    from cifer.base.chain.genesis import Genesis
    from cifer.base.chain.types import ValidationError

    try:
        g = msgspec.convert(c.genesis(), Genesis)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"the node's genesis does not decode: {exc}") from None
    g.validate()
    return g


def check_record_content(key: bytes, value: bytes | None, chain_id: str) -> list[str]:
    """What the proven bytes say, checked: a registration record's authors' signatures
    over the authorship statement and its asset id; a usage record's decoding."""
    from cifer.app.contracts.licensing import Usage
    from cifer.app.contracts.registry import (
        RegistrationRecord,
        RegistryModule,
        asset_id_for,
        statement_bytes,
    )
    from cifer.app.sdk.proofs import VerificationError
    from cifer.base import encoding
    from cifer.base.crypto.keys import address_bytes, to_bech32
    from cifer.base.crypto.keys import verify as verify_sig

    if value is None:
        raise VerificationError("the proof shows the record deleted, not written")
    if key.startswith(RegistryModule.record_key(b"")):
        try:
            r = encoding.decode(value, RegistrationRecord)
        except encoding.EncodingError as exc:
            raise VerificationError(f"proven value is not a registration record: {exc}") from None
        if RegistryModule.record_key(r.asset_id) != key or (
            not r.origin and asset_id_for(chain_id, r.content_hash) != r.asset_id
        ):
            raise VerificationError("record does not belong to the asset id it is stored under")
        out = [f"record: {r.kind} {r.meta.name!r}, content {r.content_hash.hex()}"]
        if r.origin:
            out.append(f"made by the chain itself ({r.origin}); owner {to_bech32(r.owner)}")
            return out
        stmt = statement_bytes(
            chain_id, r.content_hash, r.kind, r.authors, owner=r.owner, parents=r.parents
        )
        signers = {address_bytes(s.pubkey): s for s in r.signatures}
        for a in r.authors:
            sig = signers.get(a.address)
            if sig is None or not verify_sig(sig.pubkey, stmt, sig.signature):
                raise VerificationError(f"author {to_bech32(a.address)} has no valid signature")
            out.append(
                f"author {to_bech32(a.address)} ({a.share_bps / 100:g}%) signed the content "
                "hash, the shares, the owner and the parents"
            )
        return out
    try:
        u = encoding.decode(value, Usage)
    except encoding.EncodingError as exc:
        raise VerificationError(f"proven value is not a usage record: {exc}") from None
    return [
        f"usage {u.id}: licence {u.licence_id}, purpose {u.purpose!r} by {to_bech32(u.user)}, "
        f"royalty {u.royalty} ucif at height {u.height}"
    ]


# ----------------------------------------------------------------------------- consent


@consent_app.command("grant")
def grant(
    asset_id: str = typer.Argument(...),
    purposes: list[str] = typer.Option(..., "--purpose", help="e.g. train:style; repeat."),
    to: str = typer.Option(None, "--to", help="Grantee address (default: anyone)."),
    job: int = typer.Option(0, "--job", help="Or one FL job id."),
    expires: int = typer.Option(0, "--expires", help="Last valid height (0: none)."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Consent to use an asset you own, for purposes, by one address, one job or anyone."""
    with _client(node, key, home) as c:
        cid = c.grant_consent(asset_id, purposes, grantee=to, job_id=job, expires=expires)
    who = to or (f"job {job}" if job else "anyone")
    console.print(f"consent [bold]{cid}[/]: {', '.join(purposes)} for {who}")


@consent_app.command("revoke")
def revoke(
    consent_id: int = typer.Argument(...),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Revoke a grant: every later use (a job join, a job creation) is refused."""
    with _client(node, key, home) as c:
        c.revoke_consent(consent_id)
    console.print(f"consent {consent_id} revoked")


# ----------------------------------------------------------------------------- licences


@license_app.command("offer")
def offer(
    asset_id: str = typer.Argument(...),
    allow: list[str] = typer.Option(..., "--allow", help="Allowed purpose; repeat."),
    deny: list[str] = typer.Option([], "--deny", help="Denied purpose; repeat (deny wins)."),
    price: str = typer.Option("0", "--price", help="Price, e.g. 25CIF."),
    royalty: str = typer.Option("0", "--royalty", help="Royalty per recorded use, e.g. 1CIF."),
    expires: int = typer.Option(0, "--expires", help="Last height a licence is usable."),
    max_uses: int = typer.Option(0, "--max-uses", help="Uses per licence (0: unlimited)."),
    derivative_bps: int = typer.Option(
        0, "--derivative-bps", help="Share of payments for derived works, in bps."
    ),
    max_sales: int = typer.Option(0, "--max-sales", help="Licences to sell (0: unlimited)."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Offer licences for an asset you own."""
    with _client(node, key, home) as c:
        oid = c.offer_licence(
            asset_id,
            allowed=allow,
            denied=deny,
            price=_amount(price, "--price"),
            royalty_per_use=_amount(royalty, "--royalty"),
            expires=expires,
            max_uses=max_uses,
            derivative_bps=derivative_bps,
            max_sales=max_sales,
        )
    console.print(f"offer [bold]{oid}[/] for asset {asset_id}")


@license_app.command("buy")
def buy(
    offer_id: int = typer.Argument(...),
    max_price: str = typer.Option(None, "--max-price", help="Refuse to pay more than this."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Buy a licence; the price is paid to the asset's authors (and parents) at once."""
    with _client(node, key, home) as c:
        limit = _amount(max_price, "--max-price") if max_price else None
        lid = c.buy_licence(offer_id, limit)
        lic = c.licence(lid)
    console.print(f"licence [bold]{lid}[/] bought for {lic['paid']} ucif")


@license_app.command("use")
def use(
    licence_id: int = typer.Argument(...),
    purpose: str = typer.Option(..., "--purpose"),
    reference: str = typer.Option("", "--ref", help="What the use was (e.g. a job or a file)."),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """Record a use under a licence you hold; pays its royalty to the authors."""
    with _client(node, key, home) as c:
        uid = c.record_usage(licence_id, purpose, reference)
        u = c.usage(uid)
    console.print(
        f"usage [bold]{uid}[/] recorded at height {u['height']}; royalty {u['royalty']} ucif"
    )


@license_app.command("show")
def show_licence(
    licence_id: int = typer.Argument(None, help="A licence id."),
    offer_id: int = typer.Option(None, "--offer", help="Show an offer instead."),
    node: str = NodeOpt,
) -> None:
    """A licence (holder, terms, uses) or an offer."""
    with _client(node) as c:
        if offer_id is not None:
            _print_json(c.offer(offer_id))
        elif licence_id is not None:
            _print_json(c.licence(licence_id))
        else:
            raise _fail("give a LICENCE_ID or --offer ID")


# ----------------------------------------------------------------------------- market


@market_app.command("add")
def market_add(
    offer_id: int = typer.Argument(..., help="Your open offer on a dataset or model."),
    title: str = typer.Option(..., "--title"),
    description: str = typer.Option("", "--description"),
    key: str = KeyOpt,
    home: str = HomeOpt,
    node: str = NodeOpt,
) -> None:
    """List an offer on the market (indexed by the asset's kind and tags)."""
    with _client(node, key, home) as c:
        c.market_list(offer_id, title, description)
    console.print(f"offer {offer_id} listed")


def _market_table(rows: list[dict[str, Any]]) -> None:
    t = Table(title=f"{len(rows)} listing(s)")
    for col in ("offer", "title", "kind", "tags", "price", "royalty/use", "allowed", "denied"):
        t.add_column(col)
    for r in rows:
        terms = r["offer"]["terms"]
        t.add_row(
            str(r["offer_id"]),
            r["title"],
            r["kind"],
            ", ".join(r["tags"]),
            f"{terms['price']} ucif",
            f"{terms['royalty_per_use']} ucif",
            ", ".join(terms["allowed"]),
            ", ".join(terms["denied"]),
        )
    console.print(t)
    if rows:
        console.print("buy with: cifer license buy OFFER --key KEY")


@market_app.command("list")
def market_list(
    kind: str = typer.Option("", "--kind", help="dataset or model"),
    tag: str = typer.Option("", "--tag"),
    node: str = NodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Live listings, optionally by kind and tag."""
    with _client(node) as c:
        rows = c.market_search(kind=kind, tag=tag)
    _print_json(rows) if as_json else _market_table(rows)


@market_app.command("search")
def market_search(
    text: str = typer.Argument(..., help="Words in the title, name or description."),
    kind: str = typer.Option("", "--kind"),
    tag: str = typer.Option("", "--tag"),
    node: str = NodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Search live listings by text (and kind, tag)."""
    with _client(node) as c:
        rows = c.market_search(kind=kind, tag=tag, text=text)
    _print_json(rows) if as_json else _market_table(rows)

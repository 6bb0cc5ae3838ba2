"""``cifer tx`` and ``cifer query``: talk to a node's HTTP API."""

from __future__ import annotations

import base64
import os
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import typer
from rich.console import Console

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key
from cifer.app.txbuilder import make_tx
from cifer.base.chain.types import Header, verify_tx_proof
from cifer.base.crypto.keys import CryptoError, PrivateKey, from_bech32, sha256
from cifer.base.crypto.merkle import MerkleProof

UCIF = 10**6
DEFAULT_NODE = "http://127.0.0.1:26657"
console = Console()
tx_app = typer.Typer(help="Sign and broadcast transactions.")
query_app = typer.Typer(help="Read chain state from a node.")

NodeOpt = typer.Option(
    os.environ.get("CIFER_NODE", DEFAULT_NODE), "--node", help="Node API URL (env CIFER_NODE)."
)


def parse_amount(text: str) -> int:
    """'10cif', '1.5cif', '2500ucif' or a bare number of ucif -> ucif, exactly."""
    t = text.strip().lower()
    unit = UCIF if t.endswith("cif") and not t.endswith("ucif") else 1
    num = t.removesuffix("ucif").removesuffix("cif")
    try:
        value = Decimal(num) * unit
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount like 10cif or 2500ucif") from None
    if value != value.to_integral_value():
        raise typer.BadParameter(f"{text!r} is finer than 1 ucif (10^-6 CIF)")
    if value <= 0:
        raise typer.BadParameter("amount must be positive")
    return int(value)


def load_signer(name: str, home: str | None) -> PrivateKey:
    """A keyring key by name, or ``test:N`` for localnet test account N (public keys!)."""
    if name.startswith("test:"):
        idx = name.removeprefix("test:")
        if not idx.isdigit():
            raise typer.BadParameter("test accounts are named test:0, test:1, ...")
        return account_key(int(idx))
    from cifer.app.cli.keys import load_local_key

    return load_local_key(name, home)


def _client(node: str) -> httpx.Client:
    return httpx.Client(base_url=node.rstrip("/"), timeout=40.0)


def _get(node: str, path: str) -> Any:
    try:
        with _client(node) as c:
            r = c.get(path)
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] cannot reach {node}: {exc}")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        console.print(f"[red]error {r.status_code}:[/] {r.json().get('detail', r.text)}")
        raise typer.Exit(1)
    return r.json()


@tx_app.command()
def transfer(
    from_: str = typer.Option(..., "--from", help="Key name, or test:N for a localnet account."),
    to: str = typer.Option(..., "--to", help="Recipient cif1... address."),
    amount: str = typer.Option(..., help="Amount, e.g. 10cif or 2500ucif."),
    node: str = NodeOpt,
    fee: int = typer.Option(1000, help="Fee in ucif."),
    memo: str = typer.Option("", help="Free text stored with the tx."),
    wait: bool = typer.Option(True, help="Wait until the tx is in a final block."),
    home: str | None = typer.Option(None, help="Keyring home (default ~/.cifer)."),
) -> None:
    """Send CIF from one of your keys to an address."""
    ucif = parse_amount(amount)
    try:
        dest = from_bech32(to)
    except CryptoError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    key = load_signer(from_, home)
    status = _get(node, "/status")
    acct = _get(node, f"/accounts/{key.public.bech32}")
    tx = make_tx(
        key, status["chain_id"], acct["pending_nonce"], [send_msg(dest, ucif)], fee=fee, memo=memo
    )
    body = {"tx": base64.b64encode(tx).decode(), "mode": "commit" if wait else "sync"}
    try:
        with _client(node) as c:
            r = c.post("/txs", json=body)
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] cannot reach {node}: {exc}")
        raise typer.Exit(1) from None
    out = r.json()
    if r.status_code != 200 or not out.get("accepted"):
        console.print(f"[red]rejected:[/] {out.get('log') or out.get('detail')}")
        raise typer.Exit(1)
    console.print(f"tx {out['hash']}")
    if wait:
        if out.get("height"):
            console.print(f"committed at height {out['height']}")
        else:
            console.print(f"[yellow]{out.get('log')}[/]")


@query_app.command()
def status(node: str = NodeOpt) -> None:
    """Height, app hash, peers and consensus step of a node."""
    console.print_json(data=_get(node, "/status"))


@query_app.command()
def block(height: int = typer.Argument(..., help="Block height."), node: str = NodeOpt) -> None:
    """A committed block with its commit signatures."""
    console.print_json(data=_get(node, f"/blocks/{height}"))


@query_app.command()
def tx(tx_hash: str = typer.Argument(..., help="Hex tx hash."), node: str = NodeOpt) -> None:
    """A committed tx; its Merkle proof is checked here against the block header."""
    data = _get(node, f"/txs/{tx_hash}")
    p = data["proof"]
    proof = MerkleProof(
        p["total"],
        p["index"],
        bytes.fromhex(p["leaf_hash"]),
        [bytes.fromhex(a) for a in p["aunts"]],
    )
    raw = base64.b64decode(data["tx"])
    hdr = _get(node, f"/blocks/{data['height']}")["header"]
    header_ok = hdr["data_hash"] == p["data_hash"]
    fake_header = Header(
        "", 0, 0, b"", b"", bytes.fromhex(p["data_hash"]), b"", b"", b"", b"", b"", b""
    )
    proof_ok = (
        header_ok and verify_tx_proof(fake_header, raw, proof) and sha256(raw).hex() == data["hash"]
    )
    console.print_json(data=data)
    verdict = "[green]verified" if proof_ok else "[red]FAILED"
    console.print(f"{verdict}[/]: Merkle proof against block {data['height']}'s data hash")
    if not proof_ok:
        raise typer.Exit(1)


@query_app.command()
def account(
    address: str = typer.Argument(..., help="cif1... address."), node: str = NodeOpt
) -> None:
    """Balance (ucif), nonce and vesting of an account."""
    console.print_json(data=_get(node, f"/accounts/{address}"))


@query_app.command()
def validators(node: str = NodeOpt) -> None:
    """The validator set for the next height."""
    console.print_json(data=_get(node, "/validators"))

"""``cifer keys``: create, list, show and export account keys.

Keys live in ``<home>/keys/NAME.json`` (home: ``--home``, else ``$CIFER_HOME``, else
``~/.cifer``). A local key file is a passphrase-encrypted keystore
(:mod:`cifer.base.crypto.keystore`); a multisig "key" is a public policy file (threshold
and member public keys) with nothing secret in it, since multisig accounts need no
registration: their address is derived from the policy. The passphrase is prompted for, or
taken from ``$CIFER_PASSPHRASE`` for scripts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cifer.base.crypto.keys import CryptoError, PrivateKey, to_bech32
from cifer.base.crypto.keystore import DEFAULT_SCRYPT_N, KeystoreError, load, save
from cifer.base.crypto.multisig import make_policy

app = typer.Typer(help="Manage account keys.", no_args_is_help=True)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MIN_PASSPHRASE = 8
_MULTISIG_VERSION = 1

_HOME_HELP = "Cifer home directory (keys are in HOME/keys)."
HomeOpt = typer.Option(None, "--home", envvar="CIFER_HOME", help=_HOME_HELP)


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    _console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _keys_dir(home: Path | None) -> Path:
    return (home or Path("~/.cifer")).expanduser() / "keys"


def _key_path(home: Path | None, name: str) -> Path:
    if not _NAME_RE.match(name):
        raise _fail(f"invalid key name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    return _keys_dir(home) / f"{name}.json"


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(f"no key named {path.stem!r} in {path.parent}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(f"{path} is not a key file")
    return doc


def _is_multisig(doc: dict[str, Any]) -> bool:
    return doc.get("type") == "multisig"


def _passphrase(*, new: bool) -> str:
    env = os.environ.get("CIFER_PASSPHRASE")
    if env is not None:
        phrase = env
    else:
        phrase = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=new)
    if new and len(phrase) < _MIN_PASSPHRASE:
        raise _fail(f"passphrase must be at least {_MIN_PASSPHRASE} characters")
    return phrase


def _write_public(path: Path, doc: dict[str, Any]) -> None:
    """Write a public (non-secret) key document durably, never overwriting a key file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if the name was taken since we checked
        except FileExistsError:
            raise _fail(f"a key named {path.stem!r} already exists ({path})") from None
    finally:
        os.unlink(tmp)


def _member_pubkey(home: Path | None, member: str) -> bytes:
    """A member given as a local key name or a 64-hex-digit public key."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", member):
        return bytes.fromhex(member)
    doc = _read_doc(_key_path(home, member))
    if _is_multisig(doc):
        raise _fail(f"member {member!r} is itself a multisig; members must be single keys")
    try:
        return bytes.fromhex(str(doc["pubkey"]))
    except (KeyError, ValueError):
        raise _fail(f"key file for {member!r} has no valid pubkey") from None


@app.command()
def add(
    name: str = typer.Argument(..., help="Name for the new key."),
    multisig: int | None = typer.Option(
        None, "--multisig", min=1, help="Create a K-of-N multisig account (K = this value)."
    ),
    members: str | None = typer.Option(
        None, "--members", help="Comma-separated member key names or hex public keys."
    ),
    home: Path | None = HomeOpt,
    scrypt_n: int = typer.Option(DEFAULT_SCRYPT_N, "--scrypt-n", hidden=True),
) -> None:
    """Create a key (encrypted with a passphrase), or a multisig account from members."""
    path = _key_path(home, name)
    if path.exists():
        raise _fail(f"a key named {name!r} already exists ({path})")
    out = _console()
    if multisig is None:
        if members is not None:
            raise _fail("--members needs --multisig K")
        key = PrivateKey.generate()
        try:
            save(path, key, name, _passphrase(new=True), scrypt_n=scrypt_n)
        except KeystoreError as exc:
            raise _fail(str(exc)) from None
        out.print(f"created key [bold]{name}[/bold]")
        out.print(f"address: {key.public.bech32}")
        out.print(f"pubkey:  {key.public.raw.hex()}")
        return
    if not members:
        raise _fail("--multisig needs --members name1,name2,...")
    names = [m.strip() for m in members.split(",") if m.strip()]
    pubkeys = [_member_pubkey(home, m) for m in names]
    by_key = dict(zip(pubkeys, names, strict=True))
    try:
        policy = make_policy(multisig, pubkeys)
    except CryptoError as exc:
        raise _fail(f"invalid multisig: {exc}") from None
    doc = {
        "version": _MULTISIG_VERSION,
        "type": "multisig",
        "name": name,
        "address": to_bech32(policy.address),
        "threshold": policy.threshold,
        "pubkeys": [k.hex() for k in policy.pubkeys],
        "members": [by_key[k] for k in policy.pubkeys],  # in policy (sorted key) order
    }
    _write_public(path, doc)
    out.print(f"created {policy.threshold}-of-{len(policy.pubkeys)} multisig [bold]{name}[/bold]")
    out.print(f"address: {doc['address']}")


@app.command("list")
def list_keys(home: Path | None = HomeOpt) -> None:
    """List the keys in the home directory."""
    kdir = _keys_dir(home)
    files = sorted(kdir.glob("*.json")) if kdir.is_dir() else []
    if not files:
        _console().print(f"no keys in {kdir}")
        return
    table = Table(title=f"keys in {kdir}")
    table.add_column("name", style="bold")
    table.add_column("type")
    table.add_column("address")
    for path in files:
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            kind = (
                f"multisig {doc['threshold']}-of-{len(doc['pubkeys'])}"
                if _is_multisig(doc)
                else "local"
            )
            table.add_row(path.stem, kind, str(doc["address"]))
        except (OSError, ValueError, KeyError, TypeError):
            table.add_row(path.stem, "[red]unreadable[/red]", "")
    _console().print(table)


@app.command()
def show(
    name: str = typer.Argument(..., help="Key name."),
    address_only: bool = typer.Option(False, "--address", help="Print only the address."),
    home: Path | None = HomeOpt,
) -> None:
    """Show a key's address and public key (or a multisig's policy)."""
    doc = _read_doc(_key_path(home, name))
    out = _console()
    if address_only:
        out.print(str(doc.get("address", "")))
        return
    out.print(f"name:    {name}")
    out.print(f"address: {doc.get('address', '')}")
    if _is_multisig(doc):
        out.print(f"type:    multisig {doc.get('threshold')}-of-{len(doc.get('pubkeys', []))}")
        for member, pk in zip(doc.get("members", []), doc.get("pubkeys", []), strict=False):
            out.print(f"member:  {member} {pk}")
    else:
        out.print("type:    local")
        out.print(f"pubkey:  {doc.get('pubkey', '')}")


@app.command()
def export(
    name: str = typer.Argument(..., help="Key name."),
    unsafe_seed: bool = typer.Option(
        False, "--unsafe-seed", help="Print the raw seed in hex (anyone who sees it owns the key)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Skip the --unsafe-seed confirmation."),
    home: Path | None = HomeOpt,
) -> None:
    """Print the encrypted key file (safe to back up), or with --unsafe-seed the raw seed."""
    path = _key_path(home, name)
    doc = _read_doc(path)
    if not unsafe_seed:
        typer.echo(json.dumps(doc, indent=2))
        return
    if _is_multisig(doc):
        raise _fail("a multisig account has no seed; export its members' keys instead")
    if not yes and not typer.confirm(
        "Print the unencrypted seed? Anyone who sees it controls this account.", default=False
    ):
        raise _fail("aborted")
    try:
        key = load(path, _passphrase(new=False))
    except KeystoreError as exc:
        raise _fail(str(exc)) from None
    typer.echo(key.seed().hex())


def load_local_key(name: str, home: Path | str | None = None) -> PrivateKey:
    """Unlock a local key for signing (passphrase from CIFER_PASSPHRASE or a prompt)."""
    if home is None and os.environ.get("CIFER_HOME"):
        home = os.environ["CIFER_HOME"]
    path = _key_path(Path(home) if home is not None else None, name)
    doc = _read_doc(path)
    if _is_multisig(doc):
        raise _fail(f"{name!r} is a multisig policy; its members sign, not the policy")
    try:
        return load(path, _passphrase(new=False))
    except KeystoreError as exc:
        raise _fail(str(exc)) from None

"""``cifer keys`` through typer's CliRunner (fast scrypt via the hidden --scrypt-n)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifer.app.cli.keys import app
from cifer.base.crypto.keys import PrivateKey, from_bech32
from cifer.base.crypto.keystore import load
from cifer.base.crypto.multisig import make_policy

FAST = ["--scrypt-n", str(2**10)]
PASS = "correct horse battery"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CIFER_HOME", str(tmp_path))
    monkeypatch.setenv("CIFER_PASSPHRASE", PASS)
    return CliRunner()


def add(runner: CliRunner, *args: str) -> str:
    res = runner.invoke(app, ["add", *args, *FAST])
    assert res.exit_code == 0, res.output
    return res.output


def address_of(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("address:"))


def test_add_writes_encrypted_keystore_under_home(runner: CliRunner, tmp_path: Path) -> None:
    out = add(runner, "alice")
    path = tmp_path / "keys" / "alice.json"
    assert path.stat().st_mode & 0o777 == 0o600
    key = load(path, PASS)
    assert address_of(out) == key.public.bech32
    assert key.seed().hex() not in path.read_text()


def test_add_refuses_duplicates_bad_names_and_short_passphrases(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(runner, "alice")
    res = runner.invoke(app, ["add", "alice", *FAST])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(app, ["add", "../evil", *FAST])
    assert res.exit_code == 1 and "invalid key name" in res.output
    monkeypatch.setenv("CIFER_PASSPHRASE", "short")
    res = runner.invoke(app, ["add", "bob", *FAST])
    assert res.exit_code == 1 and "at least 8" in res.output


def test_passphrase_prompt_when_env_unset(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CIFER_PASSPHRASE")
    res = runner.invoke(app, ["add", "carol", *FAST], input=f"{PASS}\n{PASS}\n")
    assert res.exit_code == 0, res.output
    load(tmp_path / "keys" / "carol.json", PASS)


def test_list_show_and_multisig(runner: CliRunner) -> None:
    a = address_of(add(runner, "alice"))
    b = address_of(add(runner, "bob"))
    out = add(runner, "team", "--multisig", "2", "--members", "alice,bob")
    pa = runner.invoke(app, ["show", "alice"]).output
    pb = runner.invoke(app, ["show", "bob"]).output
    pubs = [
        bytes.fromhex(line.split()[1])
        for line in (pa + pb).splitlines()
        if line.startswith("pubkey:")
    ]
    policy = make_policy(2, pubs)
    assert from_bech32(address_of(out)) == policy.address
    listing = runner.invoke(app, ["list"]).output
    assert "alice" in listing and a in listing and b in listing
    assert "multisig 2-of-2" in listing
    shown = runner.invoke(app, ["show", "team"]).output
    # each member is listed next to its own public key
    for name, pk in (("alice", pa), ("bob", pb)):
        hexkey = next(line.split()[1] for line in pk.splitlines() if line.startswith("pubkey:"))
        assert f"member:  {name} {hexkey}" in shown
    res = runner.invoke(app, ["show", "alice", "--address"])
    assert res.output.strip() == a


def test_multisig_validation(runner: CliRunner) -> None:
    add(runner, "alice")
    res = runner.invoke(app, ["add", "m", "--multisig", "3", "--members", "alice"])
    assert res.exit_code == 1 and "threshold 3" in res.output
    res = runner.invoke(app, ["add", "m", "--multisig", "1", "--members", "alice,nobody"])
    assert res.exit_code == 1 and "no key named 'nobody'" in res.output
    res = runner.invoke(app, ["add", "m", "--multisig", "2"])
    assert res.exit_code == 1 and "--members" in res.output


def test_export_prints_keystore_and_seed_only_when_asked(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(runner, "alice")
    path = tmp_path / "keys" / "alice.json"
    res = runner.invoke(app, ["export", "alice"])
    assert res.exit_code == 0 and json.loads(res.output) == json.loads(path.read_text())
    res = runner.invoke(app, ["export", "alice", "--unsafe-seed"], input="n\n")
    assert res.exit_code == 1 and "aborted" in res.output
    res = runner.invoke(app, ["export", "alice", "--unsafe-seed"], input="y\n")
    assert res.exit_code == 0
    seed = bytes.fromhex(res.output.strip().splitlines()[-1])
    assert PrivateKey(seed).address == load(path, PASS).address
    monkeypatch.setenv("CIFER_PASSPHRASE", "wrong passphrase")
    res = runner.invoke(app, ["export", "alice", "--unsafe-seed", "--yes"])
    assert res.exit_code == 1 and "wrong passphrase" in res.output


def test_list_empty_home(runner: CliRunner) -> None:
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "no keys" in res.output

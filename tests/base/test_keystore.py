"""Passphrase-sealed key files (scrypt + ChaCha20-Poly1305)."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from cifer.base.crypto import keystore
from cifer.base.crypto.keys import CryptoError, PrivateKey, to_bech32
from cifer.base.crypto.keystore import KeystoreError, load, save, seal, unseal

N = 2**10  # fast; the smallest cost unseal accepts
PASS = "correct horse battery staple"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.from_secret("keystore-test")


@pytest.fixture(scope="module")
def doc(key: PrivateKey) -> dict[str, Any]:
    return seal(key, "alice", PASS, scrypt_n=N)


def tampered(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return d


def flip_hex(h: str, i: int = 0) -> str:
    b = bytearray(bytes.fromhex(h))
    b[i] ^= 0x01
    return b.hex()


# ---------------------------------------------------------------- seal / unseal


def test_round_trip(key: PrivateKey, doc: dict[str, Any]) -> None:
    got = unseal(doc, PASS)
    assert got.seed() == key.seed()
    assert got.public == key.public


def test_document_contents(key: PrivateKey, doc: dict[str, Any]) -> None:
    assert doc["version"] == keystore.KEYSTORE_VERSION
    assert doc["name"] == "alice"
    assert doc["address"] == to_bech32(key.address)
    assert doc["pubkey"] == key.public.raw.hex()
    assert doc["kdf"]["name"] == "scrypt" and doc["kdf"]["n"] == N
    assert doc["cipher"]["name"] == "chacha20poly1305"
    # The seed appears nowhere in the clear.
    text = json.dumps(doc)
    assert key.seed().hex() not in text
    assert len(bytes.fromhex(doc["cipher"]["ciphertext"])) == 32 + 16  # seed + tag
    json.loads(text)  # plain JSON


def test_sealing_is_randomised(key: PrivateKey, doc: dict[str, Any]) -> None:
    other = seal(key, "alice", PASS, scrypt_n=N)
    assert other["kdf"]["salt"] != doc["kdf"]["salt"]
    assert other["cipher"]["nonce"] != doc["cipher"]["nonce"]
    assert other["cipher"]["ciphertext"] != doc["cipher"]["ciphertext"]
    assert unseal(other, PASS).seed() == key.seed()


def test_other_cost_round_trips(key: PrivateKey) -> None:
    d = seal(key, "k", PASS, scrypt_n=2**11)
    assert unseal(d, PASS).seed() == key.seed()


@pytest.mark.parametrize("wrong", ["", "Correct horse battery staple", PASS + " ", PASS[:-1]])
def test_wrong_passphrase(doc: dict[str, Any], wrong: str) -> None:
    with pytest.raises(KeystoreError, match="wrong passphrase or tampered"):
        unseal(doc, wrong)


def test_unicode_passphrase(key: PrivateKey) -> None:
    d = seal(key, "k", "pässwörd-🔑", scrypt_n=N)
    assert unseal(d, "pässwörd-🔑").seed() == key.seed()
    with pytest.raises(KeystoreError):
        unseal(d, "passwort-🔑")


def test_keystore_error_is_a_crypto_error() -> None:
    assert issubclass(KeystoreError, CryptoError)


# ---------------------------------------------------------------- tampering


def _tamper_cases(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    other_addr = to_bech32(PrivateKey.from_secret("mallory").address)
    ct = doc["cipher"]["ciphertext"]
    return {
        "ciphertext-first-byte": tampered(doc, ("cipher", "ciphertext"), flip_hex(ct, 0)),
        "ciphertext-tag": tampered(doc, ("cipher", "ciphertext"), flip_hex(ct, 47)),
        "ciphertext-truncated": tampered(doc, ("cipher", "ciphertext"), ct[:-2]),
        "ciphertext-extended": tampered(doc, ("cipher", "ciphertext"), ct + "00"),
        "nonce": tampered(doc, ("cipher", "nonce"), flip_hex(doc["cipher"]["nonce"])),
        "name": tampered(doc, ("name",), "bob"),
        "name-empty": tampered(doc, ("name",), ""),
        "address": tampered(doc, ("address",), other_addr),
        "kdf-n": tampered(doc, ("kdf", "n"), 2 * N),
        "kdf-salt": tampered(doc, ("kdf", "salt"), flip_hex(doc["kdf"]["salt"])),
        "kdf-r": tampered(doc, ("kdf", "r"), 1),
        "kdf-p": tampered(doc, ("kdf", "p"), 2),
        "kdf-name": tampered(doc, ("kdf", "name"), "pbkdf2"),
        "cipher-name": tampered(doc, ("cipher", "name"), "aes-256-gcm"),
        "pubkey": tampered(doc, ("pubkey",), PrivateKey.from_secret("mallory").public.raw.hex()),
        "version": tampered(doc, ("version",), 2),
    }


@pytest.mark.parametrize(
    "case",
    [
        "ciphertext-first-byte",
        "ciphertext-tag",
        "ciphertext-truncated",
        "ciphertext-extended",
        "nonce",
        "name",
        "name-empty",
        "address",
        "kdf-n",
        "kdf-salt",
        "kdf-r",
        "kdf-p",
        "kdf-name",
        "cipher-name",
        "pubkey",
        "version",
    ],
)
def test_tampering_is_detected(doc: dict[str, Any], case: str) -> None:
    bad = _tamper_cases(doc)[case]
    with pytest.raises(KeystoreError):
        unseal(bad, PASS)


@pytest.mark.parametrize("n", [2**9, 2**21, 1000, 1500, 0, -(2**10)])
def test_scrypt_cost_out_of_range_rejected(doc: dict[str, Any], n: int) -> None:
    with pytest.raises(KeystoreError, match="outside the accepted range"):
        unseal(tampered(doc, ("kdf", "n"), n), PASS)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("kdf"),
        lambda d: d.pop("cipher"),
        lambda d: d.pop("name"),
        lambda d: d.pop("version"),
        lambda d: d["kdf"].pop("salt"),
        lambda d: d["cipher"].pop("nonce"),
        lambda d: d.__setitem__("kdf", "scrypt"),
        lambda d: d["kdf"].__setitem__("salt", "not hex"),
        lambda d: d["kdf"].__setitem__("salt", 12),
        lambda d: d["kdf"].__setitem__("n", "lots"),
        lambda d: d["cipher"].__setitem__("ciphertext", "zz"),
        lambda d: d["cipher"].__setitem__("nonce", "00"),
    ],
)
def test_malformed_documents_raise_keystore_error(doc: dict[str, Any], mutate: Any) -> None:
    d = copy.deepcopy(doc)
    mutate(d)
    with pytest.raises(KeystoreError):
        unseal(d, PASS)


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "keys" / "alice.json"
    save(path, key, "alice", PASS, scrypt_n=N)
    assert load(path, PASS).seed() == key.seed()
    assert json.loads(path.read_text())["name"] == "alice"
    assert [p.name for p in path.parent.iterdir()] == ["alice.json"]  # no temp file left


def test_saved_file_is_0600_even_with_permissive_umask(tmp_path: Path, key: PrivateKey) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "k.json"
        save(path, key, "k", PASS, scrypt_n=N)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_stale_world_readable_temp_file_does_not_leak_mode(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "k.json"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("stale")
    tmp.chmod(0o644)
    save(path, key, "k", PASS, scrypt_n=N)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path, PASS).seed() == key.seed()


def test_save_never_overwrites(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "k.json"
    save(path, key, "k", PASS, scrypt_n=N)
    before = path.read_bytes()
    other = PrivateKey.from_secret("other")
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        save(path, other, "k", PASS, scrypt_n=N)
    assert path.read_bytes() == before
    assert load(path, PASS).seed() == key.seed()


def test_save_never_overwrites_a_file_created_during_save(
    tmp_path: Path, key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process creates the key file after the existence check but before the
    # rename: the existing file must survive.
    path = tmp_path / "k.json"
    real_seal = keystore.seal

    def racing_seal(*args: Any, **kwargs: Any) -> dict[str, object]:
        path.write_text("precious")
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(keystore, "seal", racing_seal)
    with pytest.raises(KeystoreError):
        save(path, key, "k", PASS, scrypt_n=N)
    assert path.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_save_does_not_overwrite_a_directory(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "k.json"
    path.mkdir()
    with pytest.raises(KeystoreError):
        save(path, key, "k", PASS, scrypt_n=N)
    assert path.is_dir()


def test_load_errors(tmp_path: Path, key: PrivateKey) -> None:
    with pytest.raises(KeystoreError, match="no key file"):
        load(tmp_path / "missing.json", PASS)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KeystoreError, match="not valid JSON"):
        load(bad, PASS)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(KeystoreError, match="not a keystore object"):
        load(arr, PASS)
    path = tmp_path / "k.json"
    save(path, key, "k", PASS, scrypt_n=N)
    with pytest.raises(KeystoreError):
        load(path, "nope")


def test_edited_file_is_rejected(tmp_path: Path, key: PrivateKey) -> None:
    path = tmp_path / "k.json"
    save(path, key, "k", PASS, scrypt_n=N)
    d = json.loads(path.read_text())
    d["name"] = "renamed"
    path.write_text(json.dumps(d))
    with pytest.raises(KeystoreError):
        load(path, PASS)

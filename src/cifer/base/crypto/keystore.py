"""Passphrase-encrypted key files: scrypt derives a key, ChaCha20-Poly1305 seals the seed.

The file is JSON so a user can see what it is; the AEAD's associated data binds the name,
address and KDF parameters, so editing any of them makes decryption fail.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cifer.base.crypto.keys import CryptoError, PrivateKey, to_bech32

KEYSTORE_VERSION = 1
#: scrypt cost; 2**15 takes ~0.1 s here, enough to slow guessing without annoying users.
DEFAULT_SCRYPT_N = 2**15


class KeystoreError(CryptoError):
    """A key file is unreadable, tampered with, or the passphrase is wrong."""


def _kdf(passphrase: str, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode())


def _aad(name: str, address: str, n: int, salt: bytes) -> bytes:
    return json.dumps([KEYSTORE_VERSION, name, address, n, salt.hex()]).encode()


def seal(
    key: PrivateKey, name: str, passphrase: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> dict[str, object]:
    salt, nonce = os.urandom(16), os.urandom(12)
    address = to_bech32(key.address)
    box = ChaCha20Poly1305(_kdf(passphrase, salt, scrypt_n))
    ct = box.encrypt(nonce, key.seed(), _aad(name, address, scrypt_n, salt))
    return {
        "version": KEYSTORE_VERSION,
        "name": name,
        "address": address,
        "pubkey": key.public.raw.hex(),
        "kdf": {"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": salt.hex()},
        "cipher": {"name": "chacha20poly1305", "nonce": nonce.hex(), "ciphertext": ct.hex()},
    }


def unseal(doc: dict[str, object], passphrase: str) -> PrivateKey:
    try:
        if doc["version"] != KEYSTORE_VERSION:
            raise KeystoreError(f"unsupported keystore version {doc['version']!r}")
        kdf = doc["kdf"]
        cipher = doc["cipher"]
        assert isinstance(kdf, dict) and isinstance(cipher, dict)
        name, address = str(doc["name"]), str(doc["address"])
        n, salt = int(kdf["n"]), bytes.fromhex(kdf["salt"])
        nonce, ct = bytes.fromhex(cipher["nonce"]), bytes.fromhex(cipher["ciphertext"])
        pubkey = str(doc["pubkey"])
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise KeystoreError(f"malformed keystore: {exc}") from None
    # Fields the AAD does not cover must hold the only values we support, so an edit to them
    # cannot go unnoticed (r and p are fixed in _kdf; the nonce length is fixed by the cipher).
    if (kdf.get("name"), kdf.get("r"), kdf.get("p")) != ("scrypt", 8, 1):
        raise KeystoreError("unsupported keystore KDF parameters")
    if cipher.get("name") != "chacha20poly1305" or len(nonce) != 12:
        raise KeystoreError("unsupported keystore cipher parameters")
    if n < 2**10 or n > 2**20 or n & (n - 1):
        raise KeystoreError(f"keystore scrypt n={n} is outside the accepted range")
    try:
        seed = ChaCha20Poly1305(_kdf(passphrase, salt, n)).decrypt(
            nonce, ct, _aad(name, address, n, salt)
        )
    except InvalidTag:
        raise KeystoreError("wrong passphrase or tampered keystore") from None
    key = PrivateKey(seed)
    if to_bech32(key.address) != address:
        raise KeystoreError("keystore address does not match its key")
    if pubkey != key.public.raw.hex():
        raise KeystoreError("keystore public key does not match its key")
    return key


def save(
    path: Path, key: PrivateKey, name: str, passphrase: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> None:
    """Write atomically with mode 0600; never overwrite an existing key."""
    if path.exists():
        raise KeystoreError(f"refusing to overwrite existing key file {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp: a fresh file created 0600 with O_EXCL (a stale temp file can't lend its mode).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(seal(key, name, passphrase, scrypt_n=scrypt_n), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # unlike os.replace, fails if path appeared since the check
        except FileExistsError:
            raise KeystoreError(f"refusing to overwrite existing key file {path}") from None
    finally:
        os.unlink(tmp)


def load(path: Path, passphrase: str) -> PrivateKey:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no key file at {path}") from None
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"key file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"key file {path} is not a keystore object")
    return unseal(doc, passphrase)

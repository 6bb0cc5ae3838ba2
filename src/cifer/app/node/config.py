"""A node's home directory: config file, genesis, keys, data.

```
HOME/config/config.toml         listen addresses, peers, limits (edit this)
HOME/config/genesis.json        the chain's genesis (identical on every node)
HOME/config/node_key.json       p2p identity (Ed25519 seed, 0600)
HOME/config/validator_key.json  consensus key, only on validators (0600)
HOME/data/                      blocks, state, chain state, consensus WAL, sign state
```
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cifer.base.crypto.keys import PrivateKey

CONFIG_TEMPLATE = """\
# Cifer node configuration.
moniker = "{moniker}"

[p2p]
# Address peers connect to.
listen = "{p2p_host}:{p2p_port}"
# Peers to keep connected to, as "NODEKEYHEX@host:port".
persistent_peers = [{peers}]
# Largest frame a peer may send, and per-peer rate limits.
max_frame_bytes = {max_frame}
bytes_per_s = {bytes_per_s}
msgs_per_s = {msgs_per_s}

[api]
listen = "{api_host}:{api_port}"
max_body_bytes = {max_body}
# Requests per second allowed per client address (burst of 2 seconds' worth).
rate_limit_per_s = {rate_limit}

[consensus]
gossip_ms = {gossip_ms}

[mempool]
max_txs = {mempool_txs}
max_bytes = {mempool_bytes}

[blobs]
# Largest model or update blob this node stores, serves or fetches (bytes). Blob uploads
# (PUT /blobs/...) are capped by this rather than by api.max_body_bytes.
max_bytes = {blob_max_bytes}
# API base URLs of other nodes ("http://host:port"): missing blobs are fetched from them
# and blobs uploaded here are replicated to them.
peers = [{blob_peers}]
# How long to wait for missing blobs from peers before giving up (seconds).
fetch_timeout_s = {blob_fetch_timeout}

[debug]
# Lets tests cut this node off its peers through POST /debug/isolate. Never in production.
fault_injection = {fault}
"""


class ConfigError(ValueError):
    """The node's home or config file is missing something or holds a bad value."""


@dataclass
class NodeConfig:
    moniker: str = "node"
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 26656
    persistent_peers: list[str] = field(default_factory=list)
    max_frame_bytes: int = 8 * 1024 * 1024 + 1024
    bytes_per_s: int = 64 * 1024 * 1024
    msgs_per_s: int = 50_000
    api_host: str = "127.0.0.1"
    api_port: int = 26657
    max_body_bytes: int = 8 * 1024 * 1024
    rate_limit_per_s: int = 5_000
    gossip_ms: int = 300
    mempool_txs: int = 50_000
    mempool_bytes: int = 256 * 1024 * 1024
    fault_injection: bool = False
    blob_max_bytes: int = 16 * 1024 * 1024
    blob_peers: list[str] = field(default_factory=list)
    blob_fetch_timeout_s: float = 5.0

    def to_toml(self) -> str:
        return CONFIG_TEMPLATE.format(
            moniker=self.moniker,
            p2p_host=self.p2p_host,
            p2p_port=self.p2p_port,
            peers=", ".join(json.dumps(p) for p in self.persistent_peers),
            max_frame=self.max_frame_bytes,
            bytes_per_s=self.bytes_per_s,
            msgs_per_s=self.msgs_per_s,
            api_host=self.api_host,
            api_port=self.api_port,
            max_body=self.max_body_bytes,
            rate_limit=self.rate_limit_per_s,
            gossip_ms=self.gossip_ms,
            mempool_txs=self.mempool_txs,
            mempool_bytes=self.mempool_bytes,
            fault="true" if self.fault_injection else "false",
            blob_max_bytes=self.blob_max_bytes,
            blob_peers=", ".join(json.dumps(p) for p in self.blob_peers),
            blob_fetch_timeout=repr(float(self.blob_fetch_timeout_s)),
        )

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path} (run `cifer init --home ...`)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        try:
            p2p, api = doc.get("p2p", {}), doc.get("api", {})
            blobs = doc.get("blobs", {})
            p2p_host, p2p_port = _hostport(p2p.get("listen", "127.0.0.1:26656"), "p2p.listen")
            api_host, api_port = _hostport(api.get("listen", "127.0.0.1:26657"), "api.listen")
            cfg = cls(
                moniker=str(doc.get("moniker", "node")),
                p2p_host=p2p_host,
                p2p_port=p2p_port,
                persistent_peers=[str(p) for p in p2p.get("persistent_peers", [])],
                max_frame_bytes=_pos(p2p, "max_frame_bytes", cls.max_frame_bytes),
                bytes_per_s=_pos(p2p, "bytes_per_s", cls.bytes_per_s),
                msgs_per_s=_pos(p2p, "msgs_per_s", cls.msgs_per_s),
                api_host=api_host,
                api_port=api_port,
                max_body_bytes=_pos(api, "max_body_bytes", cls.max_body_bytes),
                rate_limit_per_s=_pos(api, "rate_limit_per_s", cls.rate_limit_per_s),
                gossip_ms=_pos(doc.get("consensus", {}), "gossip_ms", cls.gossip_ms),
                mempool_txs=_pos(doc.get("mempool", {}), "max_txs", cls.mempool_txs),
                mempool_bytes=_pos(doc.get("mempool", {}), "max_bytes", cls.mempool_bytes),
                fault_injection=bool(doc.get("debug", {}).get("fault_injection", False)),
                blob_max_bytes=_pos(blobs, "max_bytes", cls.blob_max_bytes),
                blob_peers=_urls(blobs.get("peers", []), "blobs.peers"),
                blob_fetch_timeout_s=_posf(blobs, "fetch_timeout_s", cls.blob_fetch_timeout_s),
            )
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cfg


def _hostport(text: object, name: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise ConfigError(f"{name} must be a string like 127.0.0.1:26656")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name} = {text!r} must look like host:port")
    return host or "127.0.0.1", int(port)


def _pos(section: dict[str, object], key: str, default: int) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _posf(section: dict[str, object], key: str, default: float) -> float:
    value = section.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e6:
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _urls(value: object, name: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(f'{name} must be a list of URLs like "http://127.0.0.1:26657"')
    out = []
    for url in value:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: {url!r} is not an http:// or https:// URL")
        out.append(url.rstrip("/"))
    return out


# ---------------------------------------------------------------------------- home layout


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config" / "config.toml"

    @property
    def genesis_file(self) -> Path:
        return self.root / "config" / "genesis.json"

    @property
    def node_key_file(self) -> Path:
        return self.root / "config" / "node_key.json"

    @property
    def validator_key_file(self) -> Path:
        return self.root / "config" / "validator_key.json"

    @property
    def data(self) -> Path:
        return self.root / "data"


def write_key(path: Path, key: PrivateKey) -> None:
    """Plain seed file with mode 0600, as node operators expect for an unattended node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"pubkey": key.public.raw.hex(), "seed": key.seed().hex()}, fh)


def read_key(path: Path) -> PrivateKey:
    try:
        doc = json.loads(path.read_text())
        return PrivateKey(bytes.fromhex(doc["seed"]))
    except FileNotFoundError:
        raise ConfigError(f"no key file at {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"key file {path} is malformed: {exc}") from None


def init_home(
    home: Path,
    genesis_json: bytes | None,
    config: NodeConfig,
    node_key: PrivateKey,
    validator_key: PrivateKey | None,
) -> Home:
    """Write a node home; refuses to touch an existing one (keys are never overwritten)."""
    h = Home(home)
    if h.config_file.exists() or h.node_key_file.exists():
        raise ConfigError(f"{home} already holds a node; choose another --home")
    h.config_file.parent.mkdir(parents=True, exist_ok=True)
    h.config_file.write_text(config.to_toml())
    write_key(h.node_key_file, node_key)
    if validator_key is not None:
        write_key(h.validator_key_file, validator_key)
    if genesis_json is not None:
        h.genesis_file.write_bytes(genesis_json)
    h.data.mkdir(parents=True, exist_ok=True)
    return h

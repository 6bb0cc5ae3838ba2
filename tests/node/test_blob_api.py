"""The node's blob routes (PUT/GET/HEAD /blobs/{hash}) and [blobs] config, in process.

Nodes are built from real localnet homes but not started: the API app is driven with
FastAPI's TestClient, and a second node's app is served on loopback for replication.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from cifer.app.node.api import build_app
from cifer.app.node.config import ConfigError, Home, NodeConfig
from cifer.app.node.localnet import init_localnet
from cifer.app.node.runtime import Node
from cifer.compute.blobs import REPLICA_HEADER, BlobFetcher, BlobStore, blob_hash

OCTET = {"content-type": "application/octet-stream"}


def make_nodes(tmp_path: Path, n: int = 2, **overrides: object) -> list[Node]:
    spec = init_localnet(tmp_path / "net", n, accounts=1)
    nodes = []
    for ns in spec.nodes:
        cfg_file = Home(Path(ns.home)).config_file
        cfg = NodeConfig.load(cfg_file)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        cfg_file.write_text(cfg.to_toml())
        nodes.append(Node(Path(ns.home)))
    return nodes


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_nodes(tmp_path, 1, max_body_bytes=1000, blob_max_bytes=4000)[0]


@pytest.fixture
def client(node: Node) -> Iterator[TestClient]:
    with TestClient(build_app(node)) as c:
        yield c


def test_node_and_localnet_wiring(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    apis = [f"http://127.0.0.1:{n.config.api_port}" for n in nodes]
    for i, n in enumerate(nodes):
        assert n.blobs.root == n.home.data / "blobs"
        assert n.blobs.max_bytes == n.config.blob_max_bytes == 16 * 1024 * 1024
        assert n.blob_fetcher.peers == [a for j, a in enumerate(apis) if j != i]
        assert n.blob_fetcher.timeout_s == 5.0


def test_blob_config_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    cfg = NodeConfig(
        blob_max_bytes=1234, blob_peers=["http://10.0.0.2:26657/"], blob_fetch_timeout_s=0.25
    )
    path.write_text(cfg.to_toml())
    loaded = NodeConfig.load(path)
    assert (loaded.blob_max_bytes, loaded.blob_peers, loaded.blob_fetch_timeout_s) == (
        1234,
        ["http://10.0.0.2:26657"],
        0.25,
    )
    path.write_text('moniker = "x"\n')  # no [blobs] section: defaults
    assert NodeConfig.load(path).blob_peers == []
    for section, message in [
        ("max_bytes = 0", "max_bytes must be a positive integer"),
        ("fetch_timeout_s = -1", "fetch_timeout_s must be a positive number"),
        ('fetch_timeout_s = "5"', "fetch_timeout_s must be a positive number"),
        ('peers = ["10.0.0.2:26657"]', "is not an http:// or https:// URL"),
        ('peers = "http://a"', "must be a list of URLs"),
    ]:
        path.write_text(f"[blobs]\n{section}\n")
        with pytest.raises(ConfigError, match=message):
            NodeConfig.load(path)


def test_put_get_head(client: TestClient, node: Node) -> None:
    data = b"w" * 3000  # over api.max_body_bytes (1000), within blobs.max_bytes (4000)
    h = blob_hash(data).hex()
    r = client.put(f"/blobs/{h}", content=data, headers={**OCTET, REPLICA_HEADER: "1"})
    assert r.status_code == 201, r.text
    assert r.json() == {"hash": h, "size": 3000, "created": True}
    again = client.put(f"/blobs/{h}", content=data, headers={**OCTET, REPLICA_HEADER: "1"})
    assert again.status_code == 200 and again.json()["created"] is False
    got = client.get(f"/blobs/{h}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["etag"] == f'"{h}"'
    head = client.head(f"/blobs/{h}")
    assert head.status_code == 200 and head.headers["content-length"] == "3000"
    assert node.blobs.get(bytes.fromhex(h)) == data


def test_mismatch_refused_and_nothing_stored(client: TestClient, node: Node) -> None:
    claimed = blob_hash(b"what the client claims")
    r = client.put(f"/blobs/{claimed.hex()}", content=b"what it sends", headers=OCTET)
    assert r.status_code == 400
    assert r.json()["detail"] == (
        f"blob hash mismatch: expected {claimed.hex()}, "
        f"content hashes to {blob_hash(b'what it sends').hex()}"
    )
    assert not node.blobs.has(claimed) and not node.blobs.has(blob_hash(b"what it sends"))
    assert list((node.home.data / "blobs").rglob("*")) == []


def test_oversize_and_bad_hash_refused(client: TestClient, node: Node) -> None:
    big = b"x" * 4001
    r = client.put(f"/blobs/{blob_hash(big).hex()}", content=big, headers=OCTET)
    assert r.status_code == 413 and "4,000 bytes" in r.json()["detail"]
    assert not node.blobs.has(blob_hash(big))
    bad = client.put("/blobs/nothex", content=b"x", headers=OCTET)
    assert bad.status_code == 400 and "not a 32-byte SHA-256 hash" in bad.json()["detail"]
    assert client.get("/blobs/abcd").status_code == 400
    # other routes keep api.max_body_bytes
    assert client.post("/txs", content=b"{" + b" " * 1200 + b"}").status_code == 413


def test_unknown_blob_is_404(client: TestClient) -> None:
    h = blob_hash(b"never uploaded").hex()
    r = client.get(f"/blobs/{h}")
    assert r.status_code == 404 and r.json()["detail"] == f"no blob {h} on this node"
    assert client.head(f"/blobs/{h}").status_code == 404


def test_openapi_documents_blob_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ops = paths["/blobs/{hash_hex}"]
    assert set(ops) == {"put", "get", "head"}
    assert "application/octet-stream" in ops["put"]["requestBody"]["content"]
    assert all(op["summary"] for op in ops.values())


def test_upload_replicates_to_peers_once(tmp_path: Path) -> None:
    a, b = make_nodes(tmp_path, 2)
    server = uvicorn.Server(
        uvicorn.Config(build_app(b), host="127.0.0.1", port=b.config.api_port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started:
            assert time.monotonic() < deadline, "peer API did not start"
            time.sleep(0.02)
        with TestClient(build_app(a)) as client:
            data = b"client update"
            h = blob_hash(data)
            r = client.put(f"/blobs/{h.hex()}", content=data, headers=OCTET)
            assert r.status_code == 201
            # uploaded as a replica: stored here, not pushed on
            data2 = b"replica from a peer"
            h2 = blob_hash(data2)
            r2 = client.put(
                f"/blobs/{h2.hex()}", content=data2, headers={**OCTET, REPLICA_HEADER: "1"}
            )
            assert r2.status_code == 201
            while not b.blobs.has(h):
                assert time.monotonic() < deadline + 5, "blob never reached the peer"
                time.sleep(0.02)
        assert b.blobs.get(h) == data
        assert not b.blobs.has(h2)
        # and the peer serves it to a third party that lacks it
        third = BlobFetcher(BlobStore(None), [f"http://127.0.0.1:{b.config.api_port}"])
        assert third.fetch_missing([h]) == [] and third.store.get(h) == data
    finally:
        server.should_exit = True
        thread.join(5)

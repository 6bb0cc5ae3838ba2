"""Proofs from a real 4-validator localnet, verified by a light client from genesis alone."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import msgspec

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet
from cifer.app.sdk.proofs import fetch_light_blocks, verify_record
from cifer.app.txbuilder import make_tx
from cifer.base import encoding
from cifer.base.chain.genesis import load_genesis
from cifer.base.chain.light import LightClient
from cifer.base.chain.proofs import TxProof


def commit_transfer(api: str, chain_id: str, account: int) -> tuple[str, int, bytes]:
    """Send one transfer and wait for its block; returns (tx hash, height, nonce key)."""
    key = account_key(account)
    nonce = httpx.get(f"{api}/accounts/{key.public.bech32}", timeout=5).json()["pending_nonce"]
    tx = make_tx(key, chain_id, nonce, [send_msg(account_key(account + 1).address, 1)])
    r = httpx.post(
        f"{api}/txs", json={"tx": base64.b64encode(tx).decode(), "mode": "commit"}, timeout=45
    )
    body = r.json()
    assert r.status_code == 200 and body["accepted"] and body["height"] > 0, body
    return body["hash"], body["height"], b"bank/nonce/" + key.address


def test_record_written_on_a_localnet_verifies_from_genesis(
    localnet: Localnet, tmp_path: Path
) -> None:
    nodes = localnet.spec.nodes
    # the root of trust comes from the operator's files, not from the node being checked
    genesis = load_genesis(Path(nodes[0].home) / "config" / "genesis.json")
    served = httpx.get(f"{nodes[2].api}/genesis", timeout=5).json()
    assert served == msgspec.to_builtins(genesis)

    tx_hash, height, key = commit_transfer(nodes[1].api, genesis.chain_id, 0)
    trust = tmp_path / "trust.bin"
    report = verify_record(nodes[0].api, key, height, genesis, trust_file=trust)
    assert report.height == height and report.header_height == height + 1
    assert report.value == encoding.encode(1)  # account 0's nonce after its first tx
    assert report.stats.headers == height + 1 == report.trusted_height
    assert report.stats.signatures >= 3 * (height + 1)  # a quorum of 4 equal validators
    assert "VERIFIED" in report.lines()[-1]

    # another node serves the same chain: same header, same answer
    again = verify_record(nodes[3].api, key, height, genesis)
    assert again.header_hash == report.header_hash and again.value == report.value

    # a later record only needs the headers decided since the trust file was written
    _, later_height, _ = commit_transfer(nodes[2].api, genesis.chain_id, 0)
    later = verify_record(nodes[2].api, key, None, genesis, trust_file=trust)
    assert later.height == later_height and later.value == encoding.encode(2)
    assert later.resumed_from == height + 1
    assert later.stats.headers == later_height + 1 - (height + 1)

    # the tx itself is proven against the data hash of its trusted header
    with httpx.Client(timeout=10) as http:
        body = http.get(f"{nodes[0].api}/proofs/tx", params={"hash": tx_hash}).json()
        proof = encoding.decode(bytes.fromhex(body["proof"]), TxProof)
        lc = LightClient(genesis.chain_id, genesis.validator_set())
        lc.verify_all(fetch_light_blocks(http, nodes[0].api, 1, height))
    assert lc.verify_tx(proof).height == height

"""Helpers for tests that run real node processes on loopback (always stopped afterwards)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.txbuilder import make_tx


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def height(net: Localnet, i: int) -> int:
    return int(net.status(i)["height"])  # type: ignore[call-overload]


def heights(net: Localnet, nodes: list[int]) -> list[int]:
    return [height(net, i) for i in nodes]


def block_hash(net: Localnet, i: int, h: int) -> str:
    r = httpx.get(f"{net.spec.nodes[i].api}/blocks/{h}", timeout=5)
    r.raise_for_status()
    return str(r.json()["hash"])


def assert_same_chain(net: Localnet, nodes: list[int]) -> int:
    """Every height all the nodes have is the same block on each; returns that height."""
    top = min(heights(net, nodes))
    for h in range(1, top + 1):
        hashes = {block_hash(net, i, h) for i in nodes}
        assert len(hashes) == 1, f"fork at height {h}: {hashes}"
    # the app hash after top-1 is in block top's header, identical by the check above
    return top


class TxSender:
    """Signed transfers from localnet test accounts, remembering what was accepted."""

    def __init__(self, net: Localnet, chain_id: str) -> None:
        self.net = net
        self.chain_id = chain_id
        self.nonces: dict[int, int] = {}
        self.accepted: list[str] = []

    def send(self, node: int, count: int, account: int = 0) -> None:
        key = account_key(account)
        to = account_key(account + 50).address
        if account not in self.nonces:
            r = httpx.get(
                f"{self.net.spec.nodes[node].api}/accounts/{key.public.bech32}", timeout=5
            )
            self.nonces[account] = int(r.json()["pending_nonce"])
        for _ in range(count):
            tx = make_tx(key, self.chain_id, self.nonces[account], [send_msg(to, 1)])
            r = httpx.post(
                f"{self.net.spec.nodes[node].api}/txs",
                json={"tx": base64.b64encode(tx).decode()},
                timeout=5,
            )
            body = r.json()
            assert r.status_code == 200 and body["accepted"], body
            self.nonces[account] += 1
            self.accepted.append(body["hash"])

    def assert_all_committed(self, nodes: list[int], timeout: float = 30) -> None:
        for i in nodes:
            for h in self.accepted:
                wait_for(
                    lambda i=i, h=h: (
                        httpx.get(f"{self.net.spec.nodes[i].api}/txs/{h}", timeout=5).status_code
                        == 200
                    ),
                    timeout,
                    f"tx {h[:12]} on node{i}",
                )


@pytest.fixture
def localnet(tmp_path: Path) -> Iterator[Localnet]:
    init_localnet(tmp_path / "net", 4, fault_injection=True, accounts=60)
    net = Localnet.open(tmp_path / "net")
    try:
        net.start(60)
        wait_for(lambda: min(heights(net, [0, 1, 2, 3])) >= 2, 60, "first blocks")
        yield net
    finally:
        net.stop()

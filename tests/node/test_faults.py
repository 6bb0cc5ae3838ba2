"""Fault tests on a real 4-validator localnet (processes on 127.0.0.1).

Each scenario checks an invariant: all nodes hold the same blocks, no accepted tx is lost,
heights advance once the fault ends, and no block is committed without a quorum.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import time
from pathlib import Path

import httpx

from cifer.app.node.config import Home, NodeConfig, write_key
from cifer.app.node.localnet import Localnet, free_ports, init_localnet
from cifer.base.crypto.keys import PrivateKey
from tests.node.conftest import (
    TxSender,
    assert_same_chain,
    height,
    heights,
    wait_for,
)

ALL = [0, 1, 2, 3]


def test_sigkill_one_validator_then_it_catches_up_and_rejoins(localnet: Localnet) -> None:
    net = localnet
    txs = TxSender(net, net.spec.chain_id)
    txs.send(0, 10)
    net.signal(3, signal.SIGKILL)
    assert not net.alive(3)
    base = max(heights(net, [0, 1, 2]))
    txs.send(1, 10, account=1)
    wait_for(lambda: min(heights(net, [0, 1, 2])) >= base + 5, 60, "3 validators to go on")
    net.start_node(3)
    net.wait_ready(60, [3])
    target = max(heights(net, [0, 1, 2]))
    wait_for(lambda: height(net, 3) >= target, 60, "node3 to block-sync")
    # rejoined consensus: node3's signature shows up in commits after it caught up
    me = net.spec.nodes[3].validator
    caught_up = height(net, 3)

    def signs() -> bool:
        top = height(net, 0)
        for h in range(caught_up + 1, top + 1):
            r = httpx.get(f"{net.spec.nodes[0].api}/blocks/{h}", timeout=5).json()
            if any(s["validator"] == me for s in r["commit"]["signatures"]):
                return True
        return False

    wait_for(signs, 60, "node3's precommits in a commit")
    txs.assert_all_committed(ALL)
    assert_same_chain(net, ALL)


def test_paused_validator_resumes_and_catches_up(localnet: Localnet) -> None:
    net = localnet
    net.signal(2, signal.SIGSTOP)
    try:
        base = max(heights(net, [0, 1, 3]))
        time.sleep(10)
        assert min(heights(net, [0, 1, 3])) >= base + 3, "others stalled while node2 paused"
    finally:
        net.signal(2, signal.SIGCONT)
    target = max(heights(net, [0, 1, 3]))
    wait_for(lambda: height(net, 2) >= target, 60, "node2 to catch up")
    assert_same_chain(net, ALL)


def test_isolated_proposer_then_heal(localnet: Localnet) -> None:
    net = localnet
    st = net.status(0)
    proposer = st["consensus"]["proposer"]  # type: ignore[index]
    victim = next(n.index for n in net.spec.nodes if n.validator == proposer)
    others = [i for i in ALL if i != victim]
    r = httpx.post(f"{net.spec.nodes[victim].api}/debug/isolate", params={"seconds": 8}, timeout=5)
    assert r.status_code == 200
    base = max(heights(net, others))
    wait_for(lambda: min(heights(net, others)) >= base + 3, 30, "the other 3 to move on")
    time.sleep(8)  # isolation ends
    target = max(heights(net, others))
    wait_for(lambda: height(net, victim) >= target, 60, "the isolated node to catch up")
    assert_same_chain(net, ALL)


def test_two_of_four_stopped_means_no_blocks_then_progress(localnet: Localnet) -> None:
    net = localnet
    for i in (2, 3):
        net.signal(i, signal.SIGSTOP)
    try:
        time.sleep(2)  # let an in-flight block finish
        frozen = heights(net, [0, 1])
        time.sleep(6)
        assert heights(net, [0, 1]) == frozen, "a block was committed without a quorum"
        net.signal(2, signal.SIGCONT)
        wait_for(lambda: min(heights(net, [0, 1, 2])) >= max(frozen) + 3, 60, "progress with 3")
    finally:
        net.signal(2, signal.SIGCONT)
        net.signal(3, signal.SIGCONT)
    target = max(heights(net, [0, 1, 2]))
    wait_for(lambda: height(net, 3) >= target, 60, "node3 to catch up")
    assert_same_chain(net, ALL)


def test_garbage_on_p2p_and_api_is_refused_without_crashing(localnet: Localnet) -> None:
    net = localnet
    node = net.spec.nodes[0]

    async def attack() -> None:
        # 1) raw garbage instead of a handshake
        _r, w = await asyncio.open_connection("127.0.0.1", node.p2p_port)
        w.write(os.urandom(4096))
        await w.drain()
        w.close()
        # 2) a correct protocol prefix, then an absurd frame length
        _r, w = await asyncio.open_connection("127.0.0.1", node.p2p_port)
        w.write(b"cifer/p2p/v1" + os.urandom(32) + struct.pack(">I", 0xFFFFFFF0) + b"x" * 64)
        await w.drain()
        w.close()
        # 3) many half-open connections that never finish the handshake
        conns = [await asyncio.open_connection("127.0.0.1", node.p2p_port) for _ in range(30)]
        await asyncio.sleep(0.5)
        for _, w in conns:
            w.close()

    asyncio.run(attack())
    api = node.api
    bad = [
        httpx.post(
            f"{api}/txs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        httpx.post(f"{api}/txs", json={"tx": "%%%"}),
        httpx.post(f"{api}/txs", json={"tx": "AAAA", "mode": "eventually"}),
        httpx.post(f"{api}/txs", json={"nope": 1}),
        httpx.post(f"{api}/txs", content=b"x" * (9 * 1024 * 1024)),
        httpx.get(f"{api}/txs/not-a-hash"),
        httpx.get(f"{api}/accounts/cif1notanaddress"),
        httpx.get(f"{api}/blocks/-5"),
        httpx.get(f"{api}/blocks/abc"),
    ]
    for r in bad:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        assert r.json().get("detail") or r.json().get("log"), r.text
    ok = httpx.post(f"{api}/txs", json={"tx": "AAAA"})
    assert ok.status_code == 422 and "malformed tx" in ok.json()["log"]
    base = height(net, 0)
    wait_for(lambda: height(net, 0) >= base + 3, 30, "node0 to keep committing")
    assert net.alive(0)
    assert len(net.status(0)["peers"]) == 3  # type: ignore[arg-type]


def test_double_signing_validator_is_caught_and_loses_its_power(tmp_path: Path) -> None:
    init_localnet(tmp_path / "net", 4, accounts=4)
    net = Localnet.open(tmp_path / "net")
    twin_home = tmp_path / "twin"
    twin_proc = None
    try:
        net.start(60)
        # a second process with node3's validator key: a twin that will equivocate
        src = Home(Path(net.spec.nodes[3].home))
        home = Home(twin_home)
        home.config_file.parent.mkdir(parents=True)
        shutil.copy(src.genesis_file, home.genesis_file)
        shutil.copy(src.validator_key_file, home.validator_key_file)
        write_key(home.node_key_file, PrivateKey.generate())
        p2p, api = free_ports(2)
        peers = [f"{n.node_id}@127.0.0.1:{n.p2p_port}" for n in net.spec.nodes[:3]]
        home.config_file.write_text(
            NodeConfig(moniker="twin", p2p_port=p2p, api_port=api, persistent_peers=peers).to_toml()
        )
        import subprocess
        import sys

        log = open(twin_home / "node.log", "wb")  # noqa: SIM115
        twin_proc = subprocess.Popen(
            [sys.executable, "-m", "cifer", "node", "start", "--home", str(twin_home)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cheat = net.spec.nodes[3].validator

        def punished() -> bool:
            vals = httpx.get(f"{net.spec.nodes[0].api}/validators", timeout=5).json()
            return cheat not in {v["address"] for v in vals["validators"]}

        wait_for(punished, 90, "the double signer to lose its power")
        vals = httpx.get(f"{net.spec.nodes[0].api}/validators", timeout=5).json()
        assert len(vals["validators"]) == 3
        top = height(net, 0)
        evidence = []
        for h in range(1, top + 1):
            b = httpx.get(f"{net.spec.nodes[0].api}/blocks/{h}", timeout=5).json()
            evidence += [e for e in b["evidence"] if e["validator"] == cheat]
        assert evidence, "the equivocation was not committed as evidence"
        base = height(net, 0)
        wait_for(lambda: min(heights(net, [0, 1, 2])) >= base + 3, 60, "the honest 3 to go on")
        assert_same_chain(net, [0, 1, 2])
    finally:
        if twin_proc is not None:
            twin_proc.send_signal(signal.SIGKILL)
            twin_proc.wait(10)
        net.stop()


def test_p2p_port_refuses_a_node_of_another_chain(tmp_path: Path) -> None:
    init_localnet(tmp_path / "a", 1, accounts=1)
    net = Localnet.open(tmp_path / "a")
    try:
        net.start(60)
        from cifer.base.p2p.network import PeerAddress, PeerNetwork

        async def probe() -> int:
            other = PeerNetwork(
                PrivateKey.generate(),
                "some-other-chain",
                ("127.0.0.1", 0),
                [PeerAddress("127.0.0.1", net.spec.nodes[0].p2p_port)],
                lambda k, d: True,
            )
            await other.start()
            await asyncio.sleep(1.0)
            n = len(other.peers())
            await other.stop()
            return n

        assert asyncio.run(probe()) == 0
        s = socket.create_connection(("127.0.0.1", net.spec.nodes[0].p2p_port))
        s.close()
        assert net.alive(0)
    finally:
        net.stop()

"""On-chain FL jobs on a real 4-validator localnet (loopback processes, always stopped).

Clients here are driven by hand (blob PUT, signed txs) with synthetic updates, so what
is tested is the chain's side: rounds, proof of aggregation, reputation, restarts.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cifer.app.contracts.fl import create_job_msg, join_job_msg, submit_update_msg
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.txbuilder import make_tx
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey
from cifer.compute.fl.params import from_bytes, to_bytes

from .conftest import heights, wait_for

D = 40


def params_of(vec: np.ndarray) -> dict[str, np.ndarray]:
    return {"w": vec[:32].reshape(8, 4).astype(np.float32), "b": vec[32:].astype(np.float32)}


class Driver:
    def __init__(self, net: Localnet) -> None:
        self.net = net
        self.chain_id = net.spec.chain_id

    def api(self, i: int) -> str:
        return self.net.spec.nodes[i].api

    def put(self, i: int, data: bytes) -> bytes:
        h = hashlib.sha256(data).digest()
        r = httpx.put(f"{self.api(i)}/blobs/{h.hex()}", content=data, timeout=10)
        assert r.status_code in (200, 201), r.text
        return h

    def send(self, i: int, key: PrivateKey, msg: AnyMsg, mode: str = "sync") -> dict[str, Any]:
        addr = key.public.bech32
        nonce = httpx.get(f"{self.api(i)}/accounts/{addr}", timeout=5).json()["pending_nonce"]
        tx = make_tx(key, self.chain_id, int(nonce), [msg])
        r = httpx.post(
            f"{self.api(i)}/txs",
            json={"tx": base64.b64encode(tx).decode(), "mode": mode},
            timeout=30,
        )
        return dict(r.json())

    def job(self, i: int, job_id: int) -> dict[str, Any]:
        r = httpx.get(f"{self.api(i)}/fl/jobs/{job_id}", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def get(self, i: int, path: str) -> Any:
        r = httpx.get(f"{self.api(i)}{path}", timeout=5)
        r.raise_for_status()
        return r.json()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Localnet]:
    init_localnet(tmp_path / "net", 4, fault_injection=True, accounts=20)
    n = Localnet.open(tmp_path / "net")
    try:
        n.start(60)
        wait_for(lambda: min(heights(n, [0, 1, 2, 3])) >= 2, 60, "first blocks")
        yield n
    finally:
        n.stop()


def create(d: Driver, rounds: int, clients: int, round_blocks: int, **over: Any) -> int:
    init = d.put(0, to_bytes(params_of(np.zeros(D, np.float32))))
    fields: dict[str, Any] = dict(
        name="onchain-test",
        model="logreg",
        input_shape=[8],
        num_classes=4,
        initial_model=init,
        rule="multi_krum",
        rule_params={"m": str(clients - 2)},
        byzantine=0,
        privacy="plain",
        rounds=rounds,
        min_clients=clients,
        max_clients=clients,
        round_blocks=round_blocks,
        reward=10_000_000,
    )
    fields.update(over)
    res = d.send(0, account_key(0), create_job_msg(**fields), mode="commit")
    assert res["accepted"], res
    jobs = d.get(0, "/fl/jobs")["jobs"]
    return int(jobs[-1]["id"])


def run_rounds(
    d: Driver,
    job_id: int,
    keys: list[PrivateKey],
    byzantine: set[int],
    straggler: int | None,
    on_round: Any = None,
    nodes: tuple[int, ...] = (0, 1, 2, 3),
) -> None:
    """Submit every round until the job is done (each client through its own node)."""
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + 150
    done_round = -1
    while time.monotonic() < deadline:
        job = d.job(0, job_id)
        if job["status"] == "done":
            return
        r = job["round"]
        if job["status"] == "running" and r > done_round:
            if on_round is not None:
                on_round(r)
            for c, key in enumerate(keys):
                if c == straggler:
                    continue
                vec = (
                    -30 * np.ones(D, np.float32)
                    if c in byzantine
                    else np.ones(D, np.float32) + 0.05 * rng.standard_normal(D).astype(np.float32)
                )
                node = nodes[c % len(nodes)]
                h = d.put(node, to_bytes(params_of(vec)))
                res = d.send(node, key, submit_update_msg(job_id, r, h, 100))
                assert res["accepted"], res
            done_round = r
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {d.job(0, job_id)}")


def test_job_completes_with_byzantine_proposers_clients_and_a_straggler(net: Localnet) -> None:
    d = Driver(net)
    # three validators propose tampered aggregates; they still vote honestly, so only
    # node0's proposals of an aggregate block can get a quorum
    for i in (1, 2, 3):
        assert httpx.post(f"{d.api(i)}/debug/tamper_aggregates", timeout=5).status_code == 200
    keys = [account_key(i) for i in range(1, 7)]  # 4 honest, 1 Byzantine, 1 straggler
    job_id = create(d, rounds=3, clients=6, round_blocks=12, rule_params={"m": "4"})
    for c, key in enumerate(keys):
        assert d.send(c % 4, key, join_job_msg(job_id))["accepted"]
    run_rounds(d, job_id, keys, byzantine={4}, straggler=5)

    finals = {d.job(i, job_id)["model_hash"] for i in range(4)}
    assert len(finals) == 1
    final = finals.pop()
    wait_for(
        lambda: all(
            httpx.head(f"{d.api(i)}/blobs/{final}", timeout=5).status_code == 200 for i in range(4)
        ),
        30,
        "the final model on every node",
    )
    w = from_bytes(httpx.get(f"{d.api(2)}/blobs/{final}", timeout=5).content)["w"]
    assert np.allclose(w, 3.0, atol=0.3)  # three honest rounds of +1; not pulled to -30
    byz, strag = keys[4].public.bech32, keys[5].public.bech32
    for r in range(3):
        rec = d.get(1, f"/fl/jobs/{job_id}/rounds/{r}")
        assert rec["stragglers"] == [strag]
        verdict = dict(zip(rec["clients"], rec["accepted"], strict=True))
        assert verdict[byz] is False and sum(verdict.values()) == 4
        block = d.get(0, f"/blocks/{rec['height']}")
        assert block["header"]["proposer"] == net.spec.nodes[0].validator
    status = d.get(0, "/status")
    assert status["proposals_rejected"] >= 1, "no tampered aggregate was ever proposed"
    assert "differs from this validator's recomputation" in status["last_rejection"]
    # the refused proposals cost their proposers reputation on chain, the same on every node
    failed = {
        v: [
            e["height"]
            for e in d.get(3, f"/reputation/{v}")["history"]
            if e["event"] == "validator_failed_proposal"
        ]
        for v in (net.spec.nodes[i].validator for i in (1, 2, 3))
    }
    assert sum(map(len, failed.values())) >= 1, failed
    assert failed == {
        v: [
            e["height"]
            for e in d.get(0, f"/reputation/{v}")["history"]
            if e["event"] == "validator_failed_proposal"
        ]
        for v in failed
    }
    rep = {k.public.bech32: d.get(3, f"/reputation/{k.public.bech32}")["state"] for k in keys}
    assert rep[byz] == "Unreliable"
    assert all(rep[k.public.bech32] == "Trusted" for k in keys[:4])
    prov = d.get(0, f"/fl/jobs/{job_id}/provenance")
    assert prov["model"] == final and len(prov["round_models"]) == 3
    assert sorted(prov["contributors"]) == sorted(k.public.bech32 for k in keys[:4])
    # the Unreliable client is now excluded from new jobs
    job2 = create(d, rounds=1, clients=4, round_blocks=10)
    res = d.send(0, keys[4], join_job_msg(job2))
    assert not res["accepted"] and "Unreliable" in res["log"]


def test_validator_killed_mid_job_and_restarted_then_the_job_finishes(net: Localnet) -> None:
    d = Driver(net)
    keys = [account_key(i) for i in range(1, 5)]
    job_id = create(d, rounds=4, clients=4, round_blocks=30, rule="fedavg", rule_params={})
    for c, key in enumerate(keys):
        assert d.send(c % 3, key, join_job_msg(job_id))["accepted"]

    def chaos(r: int) -> None:
        if r == 1:
            net.signal(3, signal.SIGKILL)
        if r == 3:
            net.start_node(3)

    # clients talk to nodes 0-2 only while node3 is down
    run_rounds(d, job_id, keys, byzantine=set(), straggler=None, on_round=chaos, nodes=(0, 1, 2))
    net.wait_ready(60, [3])
    wait_for(lambda: d.job(3, job_id)["status"] == "done", 60, "node3 to catch up")
    finals = {d.job(i, job_id)["model_hash"] for i in range(4)}
    assert len(finals) == 1
    final = finals.pop()
    wait_for(
        lambda: httpx.head(f"{d.api(3)}/blobs/{final}", timeout=5).status_code == 200,
        30,
        "node3 to fetch the final model",
    )


def test_bad_blobs_and_updates_are_refused_and_the_job_goes_on(net: Localnet) -> None:
    d = Driver(net)
    data = to_bytes(params_of(np.ones(D, np.float32)))
    wrong = hashlib.sha256(b"other").hexdigest()
    r = httpx.put(f"{d.api(1)}/blobs/{wrong}", content=data, timeout=5)
    assert r.status_code == 400 and "mismatch" in r.json()["detail"]
    assert httpx.head(f"{d.api(1)}/blobs/{wrong}", timeout=5).status_code == 404
    keys = [account_key(i) for i in range(1, 4)]
    job_id = create(d, rounds=1, clients=3, round_blocks=40, rule="fedavg", rule_params={})
    for key in keys:
        assert d.send(0, key, join_job_msg(job_id))["accepted"]
    wait_for(lambda: d.job(0, job_id)["status"] == "running", 30, "round 0")
    bad_shape = d.put(0, to_bytes({"w": np.zeros((3, 3), np.float32)}))
    res = d.send(0, keys[0], submit_update_msg(job_id, 0, bad_shape, 5))
    assert not res["accepted"] and "job 1's model has" in res["log"], res
    res = d.send(0, keys[0], submit_update_msg(job_id, 0, bytes(range(32)), 5))
    assert not res["accepted"] and "no blob" in res["log"], res
    res = d.send(
        0,
        account_key(9),
        create_job_msg(
            name="x",
            model="logreg",
            input_shape=[8],
            num_classes=4,
            initial_model=bytes(32),
            rule="fedavg",
            rule_params={},
            byzantine=0,
            privacy="plain",
            rounds=1,
            min_clients=1,
            max_clients=1,
            round_blocks=5,
            reward=10**15,
        ),
    )
    assert not res["accepted"] and "insufficient funds" in res["log"], res
    run_rounds(d, job_id, keys, byzantine=set(), straggler=None)
    assert d.job(2, job_id)["status"] == "done"

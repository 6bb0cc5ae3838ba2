"""The SDK client (cifer.Client) and ``cifer client``: a fake node over httpx's
MockTransport for the client's own logic, and one job on a real 4-validator localnet."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cifer.app.cli import fl_client
from cifer.app.contracts.fl import CreateJob, JoinJob, SubmitUpdate
from cifer.app.genesis_builder import account_key
from cifer.app.sdk import Client, ClientError, NodeUnreachable, RoundReport, TrainHints
from cifer.base import encoding
from cifer.base.chain.types import SignedTx
from cifer.base.crypto.keys import PrivateKey, to_bech32
from cifer.compute.fl.params import ParamSpec, from_bytes, to_bytes

ME = account_key(1)
INIT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


class AddOne:
    """A trainer whose training adds 1 to every parameter: the delta it should send is
    exactly ones, whatever the global model, if the client loads that model first."""

    def __init__(self) -> None:
        self.params = {k: v.copy() for k, v in INIT.items()}
        self.fits = 0

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        self.params = {k: np.array(v, np.float32) for k, v in params.items()}

    def fit(self, x: Any, y: Any, **kw: Any) -> dict[str, float]:
        self.fits += 1
        self.params = {k: v + 1 for k, v in self.params.items()}
        return {"loss": 0.5, "steps": 1}

    def gradient(self, x: Any, y: Any, **kw: Any) -> np.ndarray:
        raise NotImplementedError

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        return {"loss": 0.0, "accuracy": 1.0, "n": float(len(y))}


def blob_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeNode:
    """Just enough of a node: blobs, accounts, txs, one FedAvg job that aggregates as soon
    as every member has submitted (one block per GET of the job)."""

    def __init__(self, *, rounds: int = 2, members: list[str] | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.height = 10
        self.nonces: dict[str, int] = {}
        self.txs: dict[str, dict[str, Any]] = {}
        self.updates: dict[int, dict[str, tuple[str, int]]] = {}
        self.records: dict[int, dict[str, Any]] = {}
        self.submitted_blobs: list[bytes] = []
        self.refuse: Callable[[SubmitUpdate], str] | None = None
        self.block_fails: dict[str, str] = {}  # msg type -> log of a failure in the block
        self.down = 0  # connection errors to raise before answering
        self.corrupt_blobs = False
        self.list_events = False
        init = to_bytes(INIT)
        self.blobs[blob_hash(init)] = init
        self.job: dict[str, Any] = {
            "id": 1,
            "creator": account_key(0).public.bech32,
            "name": "fake",
            "model": "fake",
            "input_shape": [2],
            "num_classes": 3,
            "initial_model": blob_hash(init),
            "rule": "fedavg",
            "rounds": rounds,
            "min_clients": 1,
            "train": {"epochs": "1", "lr": "0.1", "batch": "4"},
            "status": "open",
            "round": 0,
            "round_start": 0,
            "deadline": None,
            "model_hash": blob_hash(init),
            "members": 0,
            "member_list": [],
            "submitted": [],
            "created": 5,
            "height": self.height,
        }
        for m in members or []:
            self._add_member(m)

    # ---------------------------------------------------------------- chain logic

    def _add_member(self, addr: str) -> None:
        self.job["member_list"].append(addr)
        self.job["members"] += 1
        if self.job["members"] >= self.job["min_clients"] and self.job["status"] == "open":
            self._open_round(0)

    def _open_round(self, r: int) -> None:
        self.job.update(
            status="running", round=r, round_start=self.height + 1, deadline=self.height + 20
        )
        self.updates[r] = {}

    def close_round(self) -> None:
        """Aggregate (mean of deltas) what arrived and move on, as at a deadline."""
        r = self.job["round"]
        ups = self.updates.get(r, {})
        model = from_bytes(self.blobs[self.job["model_hash"]])
        if ups:
            deltas = [from_bytes(self.blobs[h]) for h, _ in ups.values()]
            model = {k: v + np.mean([d[k] for d in deltas], axis=0) for k, v in model.items()}
        data = to_bytes(model)
        self.blobs[blob_hash(data)] = data
        clients = sorted(ups)
        self.records[r] = {
            "round": r,
            "model": blob_hash(data),
            "clients": clients,
            "accepted": [True] * len(clients),
            "agreement_ppm": [1_000_000] * len(clients),
            "stragglers": [m for m in self.job["member_list"] if m not in ups],
            "paid": [7] * len(clients),
            "height": self.height,
        }
        self.job["model_hash"] = blob_hash(data)
        if r + 1 < self.job["rounds"]:
            self._open_round(r + 1)
        else:
            self.job.update(status="done", submitted=[])

    def _deliver(self, raw: bytes) -> tuple[bool, str]:
        tx = encoding.decode(raw, SignedTx)
        sender = to_bech32(tx.body.signer)
        assert tx.body.nonce == self.nonces.get(sender, 0), "client used a stale nonce"
        msg = tx.body.msgs[0]
        if msg.type == "fl/SubmitUpdate":
            up = encoding.decode(msg.value, SubmitUpdate)
            if self.refuse is not None and (why := self.refuse(up)):
                return False, why
            assert up.update.hex() in self.blobs, "update sent before its blob"
            assert up.round == self.job["round"]
            self.updates[up.round][sender] = (up.update.hex(), up.samples)
            self.submitted_blobs.append(self.blobs[up.update.hex()])
        elif msg.type == "fl/JoinJob":
            assert encoding.decode(msg.value, JoinJob).job_id == 1
            if msg.type not in self.block_fails:
                self._add_member(sender)
        elif msg.type == "fl/CreateJob":
            job = encoding.decode(msg.value, CreateJob)
            assert job.initial_model.hex() in self.blobs
            self.job.update(name=job.name, creator=sender, created=self.height + 1)
            self.job["initial_model"] = job.initial_model.hex()
        self.nonces[sender] = tx.body.nonce + 1
        return True, ""

    # ---------------------------------------------------------------- HTTP

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down > 0:
            self.down -= 1
            raise httpx.ConnectError("connection refused", request=request)
        path, method = request.url.path, request.method
        if path == "/status":
            return httpx.Response(200, json={"chain_id": "fake", "height": self.height})
        if path.startswith("/accounts/"):
            addr = path.rsplit("/", 1)[1]
            return httpx.Response(200, json={"pending_nonce": self.nonces.get(addr, 0)})
        if path.startswith("/blobs/"):
            h = path.rsplit("/", 1)[1]
            if method == "PUT":
                assert blob_hash(request.content) == h
                self.blobs[h] = request.content
                return httpx.Response(201, json={"hash": h})
            if h not in self.blobs:
                return httpx.Response(404, json={"detail": f"no blob {h} on this node"})
            data = self.blobs[h] + (b"x" if self.corrupt_blobs else b"")
            return httpx.Response(200, content=data)
        if path == "/txs" and method == "POST":
            doc = json.loads(request.content)
            raw = base64.b64decode(doc["tx"])
            h = blob_hash(raw)
            ok, why = self._deliver(raw)
            if not ok:
                return httpx.Response(422, json={"hash": h, "accepted": False, "log": why})
            self.height += 1
            msg_type = encoding.decode(raw, SignedTx).body.msgs[0].type
            fail = self.block_fails.get(msg_type, "")
            result: dict[str, Any] = {"code": 5 if fail else 0, "log": fail}
            if self.list_events and msg_type == "fl/CreateJob":
                result["events"] = [
                    {"type": "fl_job_created", "attrs": [{"key": "job_id", "value": "42"}]}
                ]
            self.txs[h] = {"hash": h, "height": self.height, "result": result}
            out = {"hash": h, "accepted": True, "log": ""}
            if doc["mode"] == "commit":
                out["height"] = self.height
            return httpx.Response(200, json=out)
        if path.startswith("/txs/"):
            return httpx.Response(200, json=self.txs[path.rsplit("/", 1)[1]])
        if path == "/fl/jobs":
            return httpx.Response(200, json={"jobs": [self.job]})
        if path.startswith("/fl/jobs/"):
            parts = path.split("/")
            if parts[3] != "1":
                return httpx.Response(404, json={"detail": f"no job {parts[3]}"})
            if len(parts) == 4:
                return httpx.Response(200, json=self._poll())
            r = int(parts[5])
            if r not in self.records:
                return httpx.Response(404, json={"detail": f"round {r} has not closed"})
            return httpx.Response(200, json=self.records[r])
        return httpx.Response(404, json={"detail": "Not Found"})

    def _poll(self) -> dict[str, Any]:
        """Each poll is a block: a round closes once every member has submitted."""
        self.height += 1
        if self.job["status"] == "running":
            r = self.job["round"]
            if len(self.updates[r]) >= self.job["members"]:
                self.close_round()
        self.job["height"] = self.height
        if self.job["status"] == "running":
            self.job["submitted"] = sorted(self.updates[self.job["round"]])
        return dict(self.job)

    def client(self, key: PrivateKey = ME, **kw: Any) -> Client:
        kw.setdefault("retry_s", 2.0)
        kw.setdefault("replicate_wait_s", 0.0)
        return Client("http://fake", key, transport=httpx.MockTransport(self.handler), **kw)


XY = (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0]))


def run(node: FakeNode, **kw: Any) -> Any:
    with node.client() as c:
        return c.run(1, AddOne(), *XY, progress=False, poll_s=0.0, timeout_s=10, **kw)


# ------------------------------------------------------------------ unit tests


def test_train_hints_come_from_the_job_unless_given() -> None:
    assert TrainHints.from_job({}) == TrainHints(1, 0.1, 32, None)
    hints = TrainHints.from_job({"local_epochs": "3", "lr": "0.05", "batch_size": "16"})
    assert hints == TrainHints(3, 0.05, 16, None)
    assert TrainHints.from_job({"lr": "0.05", "future_key": "x"}, lr=0.5).lr == 0.5
    with pytest.raises(ClientError, match=r"hint lr='fast' is not a valid float"):
        TrainHints.from_job({"lr": "fast"})
    with pytest.raises(ClientError, match="epochs must be >= 1"):
        TrainHints.from_job({"epochs": "0"})


def test_run_joins_trains_from_the_global_model_and_submits_the_delta() -> None:
    node = FakeNode(rounds=2)
    reports: list[RoundReport] = []
    res = run(node, on_round=reports.append)
    # joined (JoinJob), then one update per round: trained - global = +1 everywhere,
    # which holds only if the client loaded each round's new global model first
    assert node.job["member_list"] == [ME.public.bech32]
    assert len(node.submitted_blobs) == 2
    for blob in node.submitted_blobs:
        delta = from_bytes(blob)
        assert list(delta) == ["w", "b"]
        assert all(np.array_equal(v, np.ones_like(v)) for v in delta.values())
    final = from_bytes(node.blobs[res.final_model])
    assert np.array_equal(final["w"], np.full((2, 3), 2.0, np.float32))
    assert res.status == "done" and not res.stopped
    assert (res.rounds_submitted, res.rounds_skipped) == (2, 0)
    assert [r.round for r in reports] == [0, 1] and reports == res.rounds
    assert all(r.accepted and r.paid == 7 and r.samples == 4 for r in res.rounds)
    assert res.rounds[-1].model == res.final_model
    assert [set(t) for t in res.timings()] == [{"round", "download_s", "train_s", "submit_s"}] * 2


def test_transform_update_rewrites_the_flat_delta_before_upload() -> None:
    node = FakeNode(rounds=1, members=[ME.public.bech32])
    seen: list[tuple[int, int]] = []

    def byzantine(delta: np.ndarray, r: int) -> np.ndarray:
        seen.append((r, delta.size))
        return -3 * delta

    run(node, transform_update=byzantine)
    assert seen == [(0, 9)]
    assert np.array_equal(from_bytes(node.submitted_blobs[0])["b"], np.full(3, -3, np.float32))


def test_a_round_that_closes_first_is_skipped_and_the_client_goes_on() -> None:
    node = FakeNode(rounds=2, members=[ME.public.bech32])

    def too_late(up: SubmitUpdate) -> str:
        if up.round == 0:
            node.close_round()  # the deadline passed while we trained
            return "round 0 of job 1 closed at height 30"
        return ""

    node.refuse = too_late
    res = run(node)
    assert (res.rounds_submitted, res.rounds_skipped) == (1, 1)
    assert res.rounds[0].submitted is False and res.rounds[0].accepted is None
    assert res.rounds[1].submitted and res.status == "done"


def test_a_real_refusal_ends_the_run_with_the_nodes_reason() -> None:
    node = FakeNode(rounds=2, members=[ME.public.bech32])
    node.refuse = lambda up: "insufficient fee: 10 < 1000 ucif"
    with pytest.raises(ClientError, match="refused our update: insufficient fee: 10 < 1000"):
        run(node)


def test_client_errors_carry_the_nodes_reason() -> None:
    node = FakeNode(members=[ME.public.bech32])
    with node.client() as c:
        with pytest.raises(ClientError, match="no job 7") as info:
            c.job(7)
        assert info.value.status == 404
        node.job["status"] = "done"
        with pytest.raises(ClientError, match="job 1 has already finished"):
            c.run(1, AddOne(), *XY, progress=False)
    node = FakeNode()
    node.block_fails["fl/JoinJob"] = "cannot join job 1: reputation too low"
    with node.client() as c, pytest.raises(ClientError, match=r"failed in block \d+: .*too low"):
        c.join(1)


def test_a_node_that_is_down_briefly_is_retried_and_for_long_is_reported() -> None:
    node = FakeNode(rounds=1, members=[ME.public.bech32])
    node.down = 3
    assert run(node).status == "done"
    node.down = 10**9
    with node.client(retry_s=0.3) as c, pytest.raises(NodeUnreachable) as info:
        c.job(1)
    assert "http://fake did not answer GET /fl/jobs/1 for 0.3 s" in str(info.value)
    assert "ConnectError" in str(info.value)


def test_models_are_checked_against_their_hash() -> None:
    node = FakeNode(members=[ME.public.bech32])
    with node.client() as c:
        model = c.global_model(1)
        assert ParamSpec.of(model) == ParamSpec.of(INIT)
        c._model_cache = None
        node.corrupt_blobs = True
        with pytest.raises(ClientError, match="corrupt or forged"):
            c.global_model(1)


@pytest.mark.parametrize("events", [False, True])
def test_create_job_uploads_the_weights_and_returns_the_id(events: bool) -> None:
    node = FakeNode()
    node.blobs.clear()
    node.list_events = events
    with node.client(account_key(0)) as c:
        job_id = c.create_job(
            name="fake",
            model="fake",
            input_shape=[2],
            num_classes=3,
            initial_params=INIT,
            rule="fedavg",
            min_clients=1,
            reward=10,
        )
    assert job_id == (42 if events else 1)
    assert node.job["initial_model"] == blob_hash(to_bytes(INIT)) in node.blobs


def test_import_cifer_stays_light_and_exports_client_lazily() -> None:
    code = (
        "import sys, cifer\n"
        "assert 'httpx' not in sys.modules and 'numpy' not in sys.modules\n"
        "from cifer import Client\n"
        "assert Client.__module__ == 'cifer.app.sdk.client'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_partition_unknown_job_and_unreachable_node(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    base = ["run", "--key", "test:1", "--job", "1", "--dataset", "digits"]
    for bad in ("3/3", "x", "-1/2"):
        res = runner.invoke(fl_client.app, [*base, "--partition", bad])
        assert res.exit_code == 2
        assert "expected i/n with 0 <= i < n" in res.output
    res = runner.invoke(
        fl_client.app,
        [*base, "--partition", "0/3", "--node", "http://127.0.0.1:9", "--retry", "0.2"],
    )
    assert res.exit_code == 1 and "cannot reach node http://127.0.0.1:9" in res.output

    node = FakeNode()
    monkeypatch.setattr(fl_client, "Client", lambda url, key, **kw: node.client(key))
    res = runner.invoke(fl_client.app, [*base[:4], "7", *base[5:], "--partition", "0/3"])
    assert res.exit_code == 1 and "no job 7 on http://fake" in res.output


# ------------------------------------------------------------------ on a real chain


@pytest.fixture
def localnet(tmp_path: Path) -> Iterator[Any]:
    from cifer.app.node.localnet import Localnet, init_localnet

    init_localnet(tmp_path / "net", 4, accounts=8)
    net = Localnet.open(tmp_path / "net")
    try:
        net.start(60)
        yield net
    finally:
        net.stop()


def test_three_clients_train_a_job_to_done_on_a_localnet(localnet: Any) -> None:
    from cifer.compute.fl.data import load_dataset, partition
    from cifer.compute.fl.trainers import make_trainer

    t0 = time.monotonic()
    apis = [n.api for n in localnet.spec.nodes]
    train, test = load_dataset("digits")
    shape = train.input_shape
    initial = make_trainer("logreg", shape, 10, seed=0)
    with Client(apis[0], account_key(0), retry_s=20) as creator:
        job_id = creator.create_job(
            name="digits-sdk",
            model="logreg",
            input_shape=shape,
            num_classes=10,
            initial_params=initial.get_params(),
            rule="fedavg",
            rounds=2,
            min_clients=3,
            round_blocks=30,
            reward=3_000_000,
            train={"epochs": 2, "lr": 0.1, "batch": 32},
        )
        parts = partition(train.y, 3, "iid", 0)
        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def client(i: int) -> None:
            # each client through its own node; only its own slice of the data
            try:
                with Client(apis[i], account_key(1 + i), retry_s=20) as c:
                    trainer = make_trainer("logreg", shape, 10, seed=0)
                    x, y = train.x[parts[i]], train.y[parts[i]]
                    results[i] = c.run(job_id, trainer, x, y, progress=False, timeout_s=40)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(results) == [0, 1, 2]

        job = creator.job(job_id)
        assert job["status"] == "done"
        addrs = sorted(account_key(1 + i).public.bech32 for i in range(3))
        for r in range(2):
            assert sorted(creator.round(job_id, r)["clients"]) == addrs
        assert all(
            res.rounds_submitted == 2 and res.rounds_skipped == 0 for res in results.values()
        )
        assert {res.final_model for res in results.values()} == {job["model_hash"]}
        assert sorted(creator.provenance(job_id)["contributors"]) == addrs

        before = initial.evaluate(test.x, test.y)["accuracy"]
        initial.set_params(creator.global_model(job_id))
        after = initial.evaluate(test.x, test.y)["accuracy"]
    assert after > before + 0.3, (before, after)
    assert time.monotonic() - t0 < 60

"""Private jobs end to end on a real 4-validator localnet: secagg, ckks and secagg + dp.

Clients are ``cifer.Client.run`` in threads, each through its own node with its own slice
of scikit-learn's digits; one validator proposes tampered aggregates, so every mode also
shows the validators recomputing (and refusing) aggregates they did not compute.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.sdk import Client, ClientError
from cifer.compute.fl.data import load_dataset, partition
from cifer.compute.fl.params import to_bytes
from cifer.compute.fl.trainers import make_trainer
from cifer.compute.privacy.dp import DpConfig, JobAccountant
from cifer.compute.privacy.secagg import SecAggParams

from .conftest import heights, wait_for

N = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Localnet]:
    home = tmp_path_factory.mktemp("private") / "net"
    init_localnet(home, 4, fault_injection=True, accounts=16)
    n = Localnet.open(home)
    try:
        n.start(60)
        wait_for(lambda: min(heights(n, [0, 1, 2, 3])) >= 2, 60, "first blocks")
        # nodes 1-3 propose tampered aggregates throughout (but vote honestly): only node
        # 0's aggregate blocks can get a quorum, so every round shows a refusal
        for node in n.spec.nodes[1:]:
            r = httpx.post(f"{node.api}/debug/tamper_aggregates", timeout=5)
            assert r.status_code == 200
        yield n
    finally:
        n.stop()


def run_job(net: Localnet, first_key: int, **job: Any) -> tuple[int, dict[int, Any], Any]:
    """Create a digits job with ``job``'s privacy settings and run N clients to the end."""
    apis = [n.api for n in net.spec.nodes]
    train, test = load_dataset("digits")
    shape = train.input_shape
    initial = make_trainer("logreg", shape, 10, seed=0)
    keys = [account_key(first_key + i) for i in range(N)]
    with Client(apis[0], account_key(0), retry_s=20) as creator:
        job_id = creator.create_job(
            name="digits-private",
            model="logreg",
            input_shape=shape,
            num_classes=10,
            initial_params=initial.get_params(),
            rule="fedavg",
            rounds=2,
            min_clients=N,
            round_blocks=40,
            reward=4_000_000,
            train={"epochs": 2, "lr": 0.1, "batch": 32},
            **job,
        )
    parts = partition(train.y, N, "iid", 0)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with Client(apis[i % 3], keys[i], retry_s=20) as c:
                trainer = make_trainer("logreg", shape, 10, seed=0)
                x, y = train.x[parts[i]], train.y[parts[i]]
                results[i] = c.run(
                    job_id,
                    trainer,
                    x,
                    y,
                    progress=False,
                    timeout_s=150,
                    require_privacy=job["privacy"],
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert sorted(results) == list(range(N))
    return job_id, results, (initial, test)


def job_on_every_node(net: Localnet, job_id: int) -> dict[str, Any]:
    jobs = [httpx.get(f"{n.api}/fl/jobs/{job_id}", timeout=5).json() for n in net.spec.nodes]
    wait_for(
        lambda: (
            len(
                {
                    httpx.get(f"{n.api}/fl/jobs/{job_id}", timeout=5).json()["model_hash"]
                    for n in net.spec.nodes
                }
            )
            == 1
        ),
        20,
        "the same final model on every node",
    )
    assert all(j["status"] == "done" for j in jobs)
    return dict(jobs[0])


def rounds_of(net: Localnet, job_id: int) -> list[dict[str, Any]]:
    api = net.spec.nodes[1].api
    return [httpx.get(f"{api}/fl/jobs/{job_id}/rounds/{r}", timeout=5).json() for r in range(2)]


def accuracy(trainer_test: Any, params: dict[str, np.ndarray] | None) -> float:
    """Test accuracy of ``params``; the untrained model scores about 0.1 on digits."""
    trainer, test = trainer_test
    if params is not None:
        trainer.set_params(params)
    return float(trainer.evaluate(test.x, test.y)["accuracy"])


#: Two rounds of 2 local epochs: the plaintext SDK test reaches about the same.
MIN_ACCURACY = 0.7


def test_secagg_job_runs_end_to_end_and_validators_recompute_the_unmasked_sum(
    net: Localnet,
) -> None:
    t0 = time.monotonic()
    params = SecAggParams(threshold=2, degree=3, clip_micros=2_000_000)
    job_id, results, tt = run_job(net, 1, privacy="secagg", secagg=params)
    job = job_on_every_node(net, job_id)
    assert job["privacy_mode"] == "secagg"
    for rec in rounds_of(net, job_id):
        assert len(rec["clients"]) == N and all(rec["accepted"]) and not rec["failure"]
        assert sum(rec["paid"]) > 0
    # the chain never held an update in the clear: every update blob is a masked vector
    api = net.spec.nodes[0].api
    with Client(api, account_key(0)) as c:
        final = c.model(job["model_hash"])
    assert all(res.rounds_submitted == 2 for res in results.values())
    assert accuracy(tt, None) < 0.3 and accuracy(tt, final) > MIN_ACCURACY
    # tampered aggregates were refused by node 0's recomputation, and the committed ones
    # all come from node 0
    for rec in rounds_of(net, job_id):
        assert (
            rec["proposer"]
            == next(
                b["header"]["proposer"]
                for b in [httpx.get(f"{api}/blocks/{rec['height']}", timeout=5).json()]
            )
            == net.spec.nodes[0].validator
        )
    status = httpx.get(f"{net.spec.nodes[0].api}/status", timeout=5).json()
    assert "differs from this validator's recomputation" in (status["last_rejection"] or ""), status
    assert time.monotonic() - t0 < 200


def test_ckks_job_runs_end_to_end_and_only_clients_can_read_the_model(net: Localnet) -> None:
    job_id, results, tt = run_job(net, 5, privacy="ckks")
    job = job_on_every_node(net, job_id)
    assert job["ckks_context"] and job["privacy_mode"] == "ckks"
    finals = {res.final_model for res in results.values()}
    assert len(finals) == 1 and finals != {job["model_hash"]}  # decrypted locally, same bytes
    params = next(iter(results.values())).final_params
    assert accuracy(tt, params) > MIN_ACCURACY
    # what the chain holds as the model is the encrypted aggregate, not a model blob
    with Client(net.spec.nodes[0].api, account_key(0)) as c, pytest.raises(ClientError):
        c.model(job["model_hash"])


def test_secagg_with_dp_records_epsilon_on_chain(net: Localnet) -> None:
    dp = DpConfig.of(
        mode="distributed",
        noise_multiplier=0.5,
        clip_norm=1.0,
        sampling_rate=1.0,
        delta=1e-5,
        min_clients=N,
        rounds=2,
    )
    params = SecAggParams(threshold=2, degree=3, clip_micros=4_000_000)
    job_id, _, _ = run_job(net, 9, privacy="secagg", secagg=params, dp=dp)
    job = job_on_every_node(net, job_id)
    acc = JobAccountant(dp)
    want = [acc.record_round(r, survivors=N).epsilon_total_micro for r in range(2)]
    got = [rec["epsilon_micro"] for rec in rounds_of(net, job_id)]
    assert all(abs(g - w) <= 1 for g, w in zip(got, want, strict=True)), (got, want)
    assert job["epsilon_micro"] == got[-1] > got[0] > 0


def test_plaintext_update_to_a_private_job_is_refused_by_client_and_node(net: Localnet) -> None:
    from typer.testing import CliRunner

    from cifer.app.cli import fl_client

    api = net.spec.nodes[0].api
    train, _ = load_dataset("digits")
    initial = make_trainer("logreg", train.input_shape, 10, seed=0).get_params()
    args = ["create", "--node", api, "--key", "test:13", "--name", "refusals", "--rounds", "1"]
    args += ["--min-clients", "3", "--reward", "1cif", "--round-blocks", "10"]
    res = CliRunner().invoke(fl_client.app, [*args, "--privacy", "ckks", "--rule", "median"])
    assert res.exit_code != 0 and "rule 'median' needs plaintext updates" in res.output
    res = CliRunner().invoke(fl_client.app, [*args, "--privacy", "ckks", "--dp-noise", "1.0"])
    assert res.exit_code == 0, res.output
    job_id = int(json.loads(res.output.strip().splitlines()[-1])["job_id"])
    with Client(api, account_key(13)) as c:
        job = c.job(job_id)
        assert job["privacy_mode"] == "ckks+dp" and job["rule"] == "fedavg"
        with pytest.raises(ClientError, match="refusing to send a plaintext update"):
            c.submit_blob(job_id, 0, to_bytes(initial), 10)
        with pytest.raises(ClientError, match="enc_key"):
            c.join(job_id)
    # a client that demands a private mode does not join a plain job
    res = CliRunner().invoke(fl_client.app, [*args, "--privacy", "plain"])
    assert res.exit_code == 0, res.output
    plain_job = int(json.loads(res.output.strip().splitlines()[-1])["job_id"])
    with Client(api, account_key(14)) as c:
        trainer = make_trainer("logreg", train.input_shape, 10)
        with pytest.raises(ClientError, match="requires ckks"):
            c.run(plain_job, trainer, train.x, train.y, progress=False, require_privacy="ckks")
        assert c.address not in c.job(plain_job)["member_list"]

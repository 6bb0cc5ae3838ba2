"""fl jobs over registered assets: licences and consent checked at creation and join, usage
recorded and royalties paid, and the final model registered with its provenance edges.

Driven over the four-validator :class:`Net` of test_fl_contract (prepare/process proposal
on every validator, real aggregation over blobs)."""

from __future__ import annotations

import numpy as np
import pytest

from cifer.app.contracts.bank import BankModule
from cifer.app.contracts.consent import grant_consent_msg, revoke_consent_msg
from cifer.app.contracts.fl import (
    ESCROW,
    FlModule,
    JobStatus,
    create_job_msg,
    join_job_msg,
    submit_update_msg,
)
from cifer.app.contracts.licensing import LicensingModule, Terms, buy_licence_msg, offer_licence_msg
from cifer.app.contracts.registry import (
    BPS,
    AssetMeta,
    AssetStatus,
    AuthorShare,
    EdgeKind,
    RegistryModule,
    asset_id_for,
    register_asset_msg,
    sign_authorship,
)
from cifer.app.module import Code
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import PrivateKey

from .helpers import CHAIN_ID, KEYS
from .test_fl_contract import Net, honest_update, job_fields
from .test_registry import content, module_state, register_msg

CREATOR, OWNER, COAUTHOR, FAN, REVOKED = KEYS
ROYALTY = 100
PRICE = 1_000


def ok(net: Net, key: PrivateKey, msg: AnyMsg) -> None:
    code, log = net.submit(key, msg)
    assert code == 0, log
    net.step()


def force(net: Net, key: PrivateKey, msg: AnyMsg) -> None:
    """Put a tx in the next block without the mempool's check (as a Byzantine proposer
    could), so its failure is what block execution does."""
    net.mempool.append(net.tx(key, msg))
    net.step()


def _works(net: Net) -> list[bytes]:
    """Three works by OWNER (60%) and COAUTHOR (40%), each offered for 'train' (not
    'synthesize:likeness'); CREATOR buys licences 1, 2, 3."""
    authors = [(OWNER, 6_000), (COAUTHOR, 4_000)]
    works = []
    for i in range(3):
        ok(net, OWNER, register_msg(f"work{i}", authors))
        works.append(asset_id_for(CHAIN_ID, content(f"work{i}")))
    terms = Terms(
        allowed=["train"], denied=["synthesize:likeness"], price=PRICE, royalty_per_use=ROYALTY
    )
    for w in works:
        ok(net, OWNER, offer_licence_msg(w, terms))
    for oid in (1, 2, 3):
        ok(net, CREATOR, buy_licence_msg(oid, max_price=PRICE))
    return works


def _job(net: Net, works: list[bytes], purpose: str, **over: object) -> AnyMsg:
    fields = job_fields(
        net,
        rule="fedavg",
        rule_params={},
        rounds=1,
        min_clients=3,
        max_clients=4,
        purpose=purpose,
        assets=works,
        licences=[1, 2, 3],
    )
    fields.update(over)
    return create_job_msg(**fields)


def test_job_over_licensed_works_records_usage_pays_royalties_and_registers_the_model() -> None:
    net = Net()
    works = _works(net)
    # the initial model is a registered asset of the creator: the final one derives from it
    init = job_fields(net)["initial_model"]
    assert isinstance(init, bytes)
    who = [AuthorShare(CREATOR.address, BPS)]
    sig = sign_authorship(CREATOR, CHAIN_ID, init, "model", who, owner=CREATOR.address)
    ok(
        net,
        CREATOR,
        register_asset_msg(
            kind="model",
            content_hash=init,
            meta=AssetMeta(name="init"),
            authors=who,
            signatures=[sig],
        ),
    )
    initial_asset = asset_id_for(CHAIN_ID, init)

    # purpose denied by the licences: refused with the reason, nothing escrowed or used
    before = module_state(net.app)
    code, log = net.submit(CREATOR, _job(net, works, "synthesize:likeness"))
    assert code == Code.UNAUTHORIZED
    assert "licence 1: purpose 'synthesize:likeness' is denied ('synthesize:likeness')" in log
    force(net, CREATOR, _job(net, works, "synthesize:likeness"))
    assert module_state(net.app) == before
    assert BankModule.balance(net.state(), ESCROW) == 0 and FlModule.jobs(net.state()) == []

    # purpose allowed: usage recorded on each licence and the royalty paid by share
    owner0 = BankModule.balance(net.state(), OWNER.address)
    coauthor0 = BankModule.balance(net.state(), COAUTHOR.address)
    ok(net, CREATOR, _job(net, works, "train:style"))
    st = net.state()
    created = FlModule.jobs(st)[-1]
    assert created.id == 1 and created.spec.assets == works
    assert BankModule.balance(st, ESCROW) == created.spec.reward
    assert BankModule.balance(st, OWNER.address) == owner0 + 3 * ROYALTY * 6 // 10
    assert BankModule.balance(st, COAUTHOR.address) == coauthor0 + 3 * ROYALTY * 4 // 10
    usages = [LicensingModule.usage(st, u) for u in (1, 2, 3)]
    assert [(u.licence_id, u.asset_id, u.purpose, u.reference) for u in usages if u] == [
        (i + 1, w, "train:style", "fl/job/1") for i, w in enumerate(works)
    ]
    for lid in (1, 2, 3):
        lic = LicensingModule.licence(st, lid)
        assert lic is not None and lic.uses == 1
    assert RegistryModule.history(st, works[0])[-1].action == "used"

    # consent: FAN by address on work 0, anyone in job 1 on work 1, REVOKED's grant revoked
    ok(net, OWNER, grant_consent_msg(asset_id=works[0], purposes=["train"], grantee=FAN.address))
    ok(net, OWNER, grant_consent_msg(asset_id=works[1], purposes=["train:style"], job_id=1))
    ok(
        net,
        OWNER,
        grant_consent_msg(asset_id=works[2], purposes=["train"], grantee=REVOKED.address),
    )
    ok(net, OWNER, revoke_consent_msg(3))
    revoked_at = net.app.height

    code, log = net.submit(REVOKED, join_job_msg(1, works[2]))
    assert code == Code.UNAUTHORIZED
    assert f"consent 3 was revoked at height {revoked_at}" in log
    code, log = net.submit(COAUTHOR, join_job_msg(1, content("my own photos")))
    assert code == Code.UNAUTHORIZED
    assert f"declares dataset {content('my own photos').hex()}, which is not one of them" in log
    code, log = net.submit(COAUTHOR, join_job_msg(1))
    assert code == Code.UNAUTHORIZED and "declares no dataset" in log
    code, log = net.submit(COAUTHOR, join_job_msg(1, works[0]))  # FAN's grant, not theirs
    assert code == Code.UNAUTHORIZED and "no consent covers purpose 'train:style'" in log
    force(net, REVOKED, join_job_msg(1, works[2]))
    assert FlModule.member(net.state(), 1, REVOKED.address) is None

    assert net.submit(OWNER, join_job_msg(1, content("work0")))[0] == 0  # its own, by hash
    assert net.submit(FAN, join_job_msg(1, works[0]))[0] == 0
    assert net.submit(COAUTHOR, join_job_msg(1, works[1]))[0] == 0
    net.step()
    net.step()
    clients = [OWNER, FAN, COAUTHOR]
    running = FlModule.job(net.state(), 1)
    assert running is not None and running.status == JobStatus.RUNNING and running.members == 3

    rng = np.random.default_rng(5)
    for k, samples in zip(clients, (10, 20, 30), strict=True):
        h = net.upload(honest_update(rng))
        assert net.submit(k, submit_update_msg(1, 0, h, samples))[0] == 0
    net.step()
    net.step()
    st = net.state()
    job = FlModule.job(st, 1)
    assert job is not None and job.status == JobStatus.DONE

    # the final model is an asset with its lineage
    prov = FlModule.provenance(st, 1)
    assert prov is not None
    model_id = asset_id_for(CHAIN_ID, job.model)
    assert prov.asset_id == model_id
    model = RegistryModule.asset(st, model_id)
    assert model is not None
    assert model.kind == "model" and model.origin == "fl/job/1"
    assert model.status == AssetStatus.REGISTERED and model.content_hash == job.model
    assert model.owner == CREATOR.address and model.authors == [AuthorShare(CREATOR.address, BPS)]
    assert model.parents == [initial_asset]
    rec = RegistryModule.record(st, model_id)
    assert rec is not None and rec.origin == "fl/job/1" and rec.height == job.finished
    trained = RegistryModule.edges_out(st, model_id, EdgeKind.TRAINED_ON)
    assert sorted(e.dst for e in trained) == sorted(works)
    round0 = FlModule.round_record(st, 1, 0)
    assert round0 is not None and all(round0.accepted)
    paid = dict(zip(round0.clients, round0.paid, strict=True))
    assert len(set(paid.values())) > 1  # unequal samples: unequal rewards, unequal weights
    contributed = RegistryModule.edges_out(st, model_id, EdgeKind.CONTRIBUTED_BY)
    assert {e.dst: e.weight for e in contributed} == {
        c: paid[c] * BPS // sum(paid.values()) for c in paid
    }
    assert set(paid) == {k.address for k in clients}
    authors, edges = RegistryModule.contributors(st, model_id)
    assert authors == model.authors and {e.dst for e in edges} == set(paid)
    lineage = {(e.kind, e.dst, depth) for e, depth in RegistryModule.ancestors(st, model_id)}
    assert lineage == {(EdgeKind.TRAINED_ON, w, 0) for w in works} | {
        (EdgeKind.DERIVED_FROM, initial_asset, 0)
    }
    assert model_id in {e.src for e, _ in RegistryModule.descendants(st, works[1])}
    assert RegistryModule.owned_by(st, CREATOR.address) == sorted([initial_asset, model_id])
    for a in net.apps:
        a.check_invariants()


def test_creator_needs_ownership_a_licence_or_consent() -> None:
    net = Net()
    works = _works(net)
    before = module_state(net.app)
    # FAN holds no licence and no consent
    code, log = net.submit(FAN, _job(net, works, "train", licences=[]))
    assert code == Code.UNAUTHORIZED
    assert "neither owns it nor lists a licence for it, and no consent covers" in log
    # a licence held by someone else is not FAN's to use
    code, log = net.submit(FAN, _job(net, works, "train"))
    assert code == Code.UNAUTHORIZED and "licence 1 is held by" in log
    # a licence for an asset the job does not declare
    code, log = net.submit(CREATOR, _job(net, works[1:], "train"))
    assert code != 0 and f"licence 1 is for asset {works[0].hex()}" in log
    force(net, FAN, _job(net, works, "train", licences=[]))
    assert module_state(net.app) == before
    # the owner needs nothing, and consent to the creator suffices
    ok(net, OWNER, grant_consent_msg(asset_id=works[2], purposes=["train"], grantee=FAN.address))
    ok(net, OWNER, _job(net, works[:2], "train", licences=[], min_clients=1))
    ok(net, FAN, _job(net, works[2:], "train", licences=[], min_clients=1))
    assert [j.creator for j in FlModule.jobs(net.state())] == [OWNER.address, FAN.address]
    assert LicensingModule.usage(net.state(), 1) is None  # no licence was used


def _finish_without_updates(net: Net, **over: object) -> int:
    """A one-round job FAN joins and nobody trains: the model does not move."""
    fields = job_fields(
        net, rule="fedavg", rule_params={}, rounds=1, min_clients=1, round_blocks=2, **over
    )
    ok(net, CREATOR, create_job_msg(**fields))
    job_id = FlModule.jobs(net.state())[-1].id
    ok(net, FAN, join_job_msg(job_id))
    for _ in range(4):
        net.step()
    job = FlModule.job(net.state(), job_id)
    assert job is not None and job.status == JobStatus.DONE
    assert job.model == job.spec.initial_model
    return job_id


@pytest.mark.parametrize("registrant", ["creator", "other"])
def test_a_model_that_did_not_move_keeps_its_existing_asset(registrant: str) -> None:
    """The creator's own asset is linked; another party's registration of the same bytes
    is not (a client could register the aggregate before it is applied)."""
    OWNER = CREATOR if registrant == "creator" else globals()["OWNER"]
    net = Net()
    init = job_fields(net)["initial_model"]
    assert isinstance(init, bytes)
    who = [AuthorShare(OWNER.address, BPS)]
    msg = register_asset_msg(
        kind="model",
        content_hash=init,
        meta=AssetMeta(name="init"),
        authors=who,
        signatures=[sign_authorship(OWNER, CHAIN_ID, init, "model", who, owner=OWNER.address)],
    )
    ok(net, OWNER, msg)
    init_id = asset_id_for(CHAIN_ID, init)
    before = RegistryModule.asset(net.state(), init_id)
    count = RegistryModule.count(net.state())
    job_id = _finish_without_updates(net)
    st = net.state()
    prov = FlModule.provenance(st, job_id)
    assert prov is not None
    assert prov.asset_id == (init_id if registrant == "creator" else b"")
    assert RegistryModule.asset(st, init_id) == before  # not re-registered to the creator
    assert RegistryModule.count(st) == count


def test_a_pending_initial_model_is_not_made_a_parent() -> None:
    """Only registered assets may be parents: a pending one can still expire."""
    net = Net()
    # the job's model moves, so its initial model hash is only a parent candidate
    init = job_fields(net)["initial_model"]
    assert isinstance(init, bytes)
    who = [AuthorShare(OWNER.address, 5_000), AuthorShare(COAUTHOR.address, 5_000)]
    msg = register_asset_msg(
        kind="model",
        content_hash=init,
        meta=AssetMeta(name="init"),
        authors=who,
        signatures=[sign_authorship(OWNER, CHAIN_ID, init, "model", who, owner=OWNER.address)],
        pending_blocks=30,
    )
    ok(net, OWNER, msg)
    init_id = asset_id_for(CHAIN_ID, init)
    ok(net, CREATOR, _job(net, [], "train", licences=[], min_clients=1, max_clients=1))
    ok(net, FAN, join_job_msg(1))
    net.step()
    h = net.upload(honest_update(np.random.default_rng(9)))
    assert net.submit(FAN, submit_update_msg(1, 0, h, 10))[0] == 0
    net.step()
    net.step()
    st = net.state()
    job = FlModule.job(st, 1)
    assert job is not None and job.status == JobStatus.DONE and job.model != init
    model = RegistryModule.asset(st, asset_id_for(CHAIN_ID, job.model))
    assert model is not None and model.parents == []
    assert RegistryModule.edges_out(st, model.id, EdgeKind.DERIVED_FROM) == []
    pending = RegistryModule.asset(st, init_id)
    assert pending is not None and pending.status == AssetStatus.PENDING

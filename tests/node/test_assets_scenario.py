"""Issue 6's scenario on a real 4-validator localnet: artists, a studio, an FL job over
licensed works, royalties, revoked consent, provenance and a light-client verification.

Everything goes through the public surfaces a user has: :class:`cifer.Client` for txs and
queries, the ``cifer asset verify`` command for the light client.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifer.app.cli.main import app as cli
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet
from cifer.app.sdk.client import Client, ClientError

from .test_fl_onchain import D, Driver, net, params_of, run_rounds  # noqa: F401

PRICE = 5_000_000  # 5 CIF
ROYALTY = 1_000_000  # 1 CIF per recorded use


def balance(c: Client, who: Client) -> int:
    return int(c.account(who.address)["balance"])


def test_artists_studio_job_royalties_consent_provenance_and_light_client(
    net: Localnet,  # noqa: F811
) -> None:
    d = Driver(net)
    node = d.api(0)
    a1, a2, a3, studio = (Client(d.api(i % 4), account_key(i)) for i in (1, 2, 3, 4))
    clients = [Client(d.api(i % 4), account_key(i)) for i in (5, 6, 7)]
    late = Client(node, account_key(8))

    # three artists register works; the third is co-authored 60/40 and pending until
    # the co-author signs
    w1 = a1.register_asset(kind="content", name="Dawn", content=b"dawn", tags=["painting"])
    w2 = a2.register_asset(kind="content", name="Dusk", content=b"dusk", tags=["painting"])
    w3 = a3.register_asset(
        kind="content",
        name="Duet",
        content=b"duet",
        authors=[(a3.address, 6000), (a2.address, 4000)],
    )
    assert a3.asset(w3)["status"] == "pending"
    a2.sign_asset(w3)
    assert a3.asset(w3)["status"] == "registered"

    # each offers a licence allowing train:style and denying synthesize:likeness
    offers = [
        owner.offer_licence(
            w,
            allowed=["train:style"],
            denied=["synthesize:likeness"],
            price=PRICE,
            royalty_per_use=ROYALTY,
        )
        for owner, w in ((a1, w1), (a2, w2), (a3, w3))
    ]
    # and consents to training on it in style (by anyone)
    consents = [
        owner.grant_consent(w, ["train:style"]) for owner, w in ((a1, w1), (a2, w2), (a3, w3))
    ]

    before = {c.address: balance(studio, c) for c in (a1, a2, a3)}
    licences = [studio.buy_licence(o) for o in offers]

    # a job declaring synthesize:likeness over the works is refused by the licences
    init = {k: v for k, v in params_of(np.zeros(D, np.float32)).items()}
    job_fields = dict(
        name="style-transfer",
        model="logreg",
        input_shape=[8],
        num_classes=4,
        initial_params=init,
        rule="fedavg",
        rounds=2,
        min_clients=3,
        max_clients=4,
        round_blocks=12,
        reward=9_000_000,
        assets=[w1, w2, w3],
        licences=licences,
    )
    with pytest.raises(ClientError, match=r"synthesize:likeness.*denied"):
        studio.create_job(purpose="synthesize:likeness", **job_fields)  # type: ignore[arg-type]

    # the train:style job runs; creating it records one use per licence (royalties)
    job_id = studio.create_job(purpose="train:style", **job_fields)  # type: ignore[arg-type]
    paid = {
        a1.address: PRICE + ROYALTY,  # sole author of w1
        a2.address: PRICE + ROYALTY + (PRICE + ROYALTY) * 4000 // 10_000,  # w2 + 40% of w3
        a3.address: (PRICE + ROYALTY) * 6000 // 10_000,  # 60% of w3
    }
    for c in (a1, a2, a3):
        assert balance(studio, c) - before[c.address] == paid[c.address], c.address
    for lid in licences:
        lic = studio.licence(lid)
        assert lic["uses"] == 1

    for c, w in zip(clients, (w1, w2, w3), strict=True):
        c.join(job_id, bytes.fromhex(w))
    # an artist revokes consent: the next join declaring that work is refused
    a1.revoke_consent(consents[0])
    with pytest.raises(ClientError, match=f"consent {consents[0]} was revoked"):
        late.join(job_id, bytes.fromhex(w1))

    run_rounds(d, job_id, [c.key for c in clients], byzantine=set(), straggler=None)

    prov = studio.provenance(job_id)
    tree = studio.asset_provenance(prov["asset_id"])
    assert tree["asset"]["kind"] == "model"
    assert tree["asset"]["origin"] == f"fl/job/{job_id}"
    trained_on = {e["to"] for e in tree["ancestors"] if e["kind"] == "trained-on"}
    assert trained_on == {w1, w2, w3}
    contributors = {x["address"]: x["share_bps"] for x in tree["contributors"]}
    assert set(contributors) == {c.address for c in clients}
    assert sum(contributors.values()) <= 10_000 and min(contributors.values()) > 0
    # the works see the model among their descendants
    down = studio.asset_provenance(w1)["descendants"]
    assert any(e["from"] == prov["asset_id"] for e in down)

    # cifer asset verify checks the co-authored registration with the light client
    genesis = Path(net.spec.nodes[0].home) / "config" / "genesis.json"
    res = CliRunner().invoke(
        cli, ["asset", "verify", w3, "--node", d.api(1), "--genesis", str(genesis)]
    )
    assert res.exit_code == 0, res.output
    assert "verified" in res.output
    assert f"author {a2.address} (40%) signed" in res.output
    # and a usage record
    res = CliRunner().invoke(cli, ["asset", "verify", "--usage", "1", "--node", node])
    assert res.exit_code == 0, res.output
    assert "purpose 'train:style'" in res.output

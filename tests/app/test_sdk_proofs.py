"""verify_record over HTTP against the proof routes of an in-process chain (honest or lying)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key, make_genesis, validator_key
from cifer.app.inproc_chain import InprocChain
from cifer.app.node.api_proofs import add_chain_proof_routes
from cifer.app.sdk.proofs import VerificationError, verify_record
from cifer.app.txbuilder import make_tx
from cifer.base import encoding
from cifer.base.chain.light import LightClient
from cifer.base.chain.proofs import StateProof, TxProof
from cifer.base.chain.provider import MAX_PAGE, ChainReader
from cifer.base.chain.types import PRECOMMIT, Header, make_evidence, sha256
from cifer.base.consensus.privval import unguarded_signer

CHAIN = "sdk-proofs"
URL = "http://testserver"
ALICE, BOB = account_key(0), account_key(1)
NONCE_KEY = b"bank/nonce/" + ALICE.address


def build(extra_blocks: int = 0) -> InprocChain:
    """Txs at heights 1, 3, 5, ..., 11; evidence in block 6 (the set changes at 8)."""
    chain = InprocChain(make_genesis(CHAIN, 4, [ALICE.address, BOB.address]))
    sign = unguarded_signer(validator_key(3), CHAIN)
    ev = make_evidence(sign(PRECOMMIT, 2, 0, b"\x01" * 32), sign(PRECOMMIT, 2, 0, b"\x02" * 32))
    for h in range(1, 13):
        txs = [make_tx(ALICE, CHAIN, h // 2, [send_msg(BOB.address, h)])] if h % 2 else []
        chain.commit_block(txs, [ev] if h == 6 else [])
    for _ in range(extra_blocks):
        chain.commit_block()
    return chain


def serve(chain: InprocChain, reader: ChainReader | None = None) -> TestClient:
    api = FastAPI()
    add_chain_proof_routes(api, reader or chain.reader(), chain.genesis)
    return TestClient(api, base_url=URL)


@pytest.fixture(scope="module")
def chain() -> InprocChain:
    return build()


@pytest.fixture(scope="module")
def http(chain: InprocChain) -> TestClient:
    return serve(chain)


def test_verifies_a_record_from_genesis_and_reports_the_checks(
    chain: InprocChain, http: TestClient
) -> None:
    r = verify_record(URL, NONCE_KEY, 9, chain.genesis, http=http)
    assert (r.height, r.header_height, r.value) == (9, 10, encoding.encode(5))
    assert (r.stats.headers, r.stats.commits, r.stats.validator_set_changes) == (10, 10, 1)
    assert r.stats.signatures == 30
    assert r.resumed_from == 0 and r.trusted_height == 10
    assert r.header_hash == chain.blocks.block_hash(10)
    assert r.changeset_entries >= 2 and r.proof_depth >= 1
    text = "\n".join(r.lines())
    assert "10 headers (1..10)" in text and "30 signatures" in text
    assert "1 validator-set changes" in text and "VERIFIED" in text
    assert r.to_json()["checked"]["headers"] == 10


def test_latest_write_is_the_default(chain: InprocChain, http: TestClient) -> None:
    r = verify_record(URL, NONCE_KEY, None, chain.genesis, http=http)
    assert r.height == 11 and r.value == encoding.encode(6)


def test_trust_file_makes_later_checks_incremental(
    tmp_path: Path, chain: InprocChain, http: TestClient
) -> None:
    trust = tmp_path / "trust.bin"
    first = verify_record(URL, NONCE_KEY, 3, chain.genesis, http=http, trust_file=trust)
    assert (first.resumed_from, first.stats.headers) == (0, 4)
    later = verify_record(URL, NONCE_KEY, 9, chain.genesis, http=http, trust_file=trust)
    assert (later.resumed_from, later.stats.headers, later.trusted_height) == (4, 6, 10)
    assert later.stats.validator_set_changes == 1  # header 7 was among the new ones
    older = verify_record(URL, NONCE_KEY, 1, chain.genesis, http=http, trust_file=trust)
    assert older.stats.headers == 0 and older.header_height == 2
    assert "no new headers" in "\n".join(older.lines())


def test_missing_or_not_yet_provable_records(chain: InprocChain, http: TestClient) -> None:
    with pytest.raises(VerificationError, match="never written"):
        verify_record(URL, b"no/such/key", None, chain.genesis, http=http)
    with pytest.raises(VerificationError, match="was not written at height 4"):
        verify_record(URL, NONCE_KEY, 4, chain.genesis, http=http)
    top = chain.height
    with pytest.raises(VerificationError, match=f"needs header {top + 1}"):
        verify_record(URL, NONCE_KEY, top, chain.genesis, http=http, wait_s=0)


def test_latest_write_waits_for_the_header_that_commits_to_it() -> None:
    fresh = InprocChain(make_genesis(CHAIN, 4, [ALICE.address, BOB.address]))
    fresh.commit_block()
    fresh.commit_block([make_tx(ALICE, CHAIN, 0, [send_msg(BOB.address, 1)])])
    http = serve(fresh)
    with pytest.raises(VerificationError, match="last written at height 2; its proof needs"):
        verify_record(URL, NONCE_KEY, None, fresh.genesis, http=http, wait_s=0)
    fresh.commit_block()
    r = verify_record(URL, NONCE_KEY, None, fresh.genesis, http=http, wait_s=0)
    assert (r.height, r.stats.headers) == (2, 3)


def test_reader_rebuilds_validator_sets_from_results(chain: InprocChain) -> None:
    # Without the chain state's recent sets, the set announced by header 7 is rebuilt
    # from block 6's validator updates, and it is the same list.
    cold = ChainReader(
        CHAIN,
        chain.genesis_validators(),
        chain.blocks,
        chain.state_store,
        chain.executor.results_at,
    )
    assert cold.next_validators(7) == chain.reader().next_validators(7)
    assert cold.next_validators(7) is not None and len(cold.next_validators(7) or []) == 3
    assert cold.next_validators(6) is None and cold.indexed_height == 7
    r = verify_record(URL, NONCE_KEY, 11, chain.genesis, http=serve(chain, cold))
    assert r.stats.validator_set_changes == 1


def test_routes_answer_bad_requests_with_reasons(chain: InprocChain, http: TestClient) -> None:
    assert http.get("/genesis").json()["chain_id"] == CHAIN
    page = http.get("/light/headers", params={"from": 11}).json()
    assert (page["from"], page["to"], page["height"]) == (11, 12, 12)
    assert len(page["headers"]) == 2
    assert http.get("/light/headers", params={"from": 13}).status_code == 404
    assert http.get("/light/headers", params={"from": 5, "to": 4}).status_code == 400
    assert http.get("/light/headers", params={"from": 0}).status_code == 422
    assert http.get("/proofs/state", params={"key": "zz"}).status_code == 400
    assert http.get("/proofs/state", params={"key": "00" * 2000}).status_code == 400
    hist = http.get("/proofs/history", params={"key": NONCE_KEY.hex()}).json()
    assert hist["heights"] == [11, 9, 7, 5, 3, 1]


def test_tx_proof_route_verifies_against_a_light_client(
    chain: InprocChain, http: TestClient
) -> None:
    block = chain.blocks.load_block(5)
    assert block is not None
    tx_hash = sha256(block.txs[0])
    body = http.get("/proofs/tx", params={"hash": tx_hash.hex()}).json()
    proof = encoding.decode(bytes.fromhex(body["proof"]), TxProof)
    lc = LightClient(CHAIN, chain.genesis_validators())
    lc.verify_all(chain.light_blocks(1, 5))
    assert lc.verify_tx(proof).height == 5 == body["height"]
    assert http.get("/proofs/tx", params={"hash": "00" * 32}).status_code == 404
    assert http.get("/proofs/tx", params={"hash": "00" * 31}).status_code == 400


def test_headers_come_in_pages() -> None:
    long = build(extra_blocks=MAX_PAGE)
    long.commit_block([make_tx(ALICE, CHAIN, 6, [send_msg(BOB.address, 1)])])
    long.commit_block()
    http = serve(long)
    first = http.get("/light/headers", params={"from": 1, "to": 5000}).json()
    assert (first["from"], first["to"]) == (1, MAX_PAGE) and len(first["headers"]) == MAX_PAGE
    r = verify_record(URL, NONCE_KEY, None, long.genesis, http=http)
    assert r.height == long.height - 1 > MAX_PAGE
    assert r.stats.headers == long.height and r.value == encoding.encode(7)


# ---------------------------------------------------------------- a lying node


Edit = Callable[[str, dict[str, Any]], dict[str, Any]]


def lying(http: TestClient, edit: Edit) -> httpx.Client:
    """A client whose node answers honestly, then ``edit`` rewrites the JSON."""

    def handler(request: httpx.Request) -> httpx.Response:
        r = http.get(request.url.path, params=request.url.params)
        return httpx.Response(r.status_code, json=edit(request.url.path, r.json()))

    return httpx.Client(transport=httpx.MockTransport(handler))


def _edit_header(n: int, **changes: Any) -> Edit:
    def edit(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/light/headers":
            for item in body["headers"]:
                if item["height"] == n:
                    h = encoding.decode(bytes.fromhex(item["header"]), Header)
                    fields = {f: getattr(h, f) for f in Header.__struct_fields__}
                    item["header"] = encoding.encode(Header(**(fields | changes))).hex()
        return body

    return edit


def _edit_proof(**changes: Any) -> Edit:
    def edit(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/proofs/state":
            p = encoding.decode(bytes.fromhex(body["proof"]), StateProof)
            fields = {f: getattr(p, f) for f in StateProof.__struct_fields__}
            body["proof"] = encoding.encode(StateProof(**(fields | changes))).hex()
        return body

    return edit


def _drop_validators(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == "/light/headers":
        for item in body["headers"]:
            item["next_validators"] = None
    return body


@pytest.mark.parametrize(
    "edit,error,checked",
    [
        (_edit_header(4, app_hash=bytes(32)), "commit for header 4 is for a different block", 3),
        (_edit_proof(value=encoding.encode(99)), "altered", 10),
        (_edit_proof(height=7), "not the one asked for", 0),
        (_drop_validators, "header 7 announces a new validator set", 6),
    ],
    ids=["header", "value", "height", "validators"],
)
def test_a_lying_node_is_caught(
    chain: InprocChain, http: TestClient, edit: Edit, error: str, checked: int
) -> None:
    with pytest.raises(VerificationError, match=error) as info:
        verify_record(URL, NONCE_KEY, 9, chain.genesis, http=lying(http, edit))
    assert info.value.stats.headers == checked


def test_a_node_of_another_chain_is_caught(chain: InprocChain, http: TestClient) -> None:
    other = make_genesis("other-chain", 4, [ALICE.address])
    with pytest.raises(VerificationError, match="is for chain 'sdk-proofs'"):
        verify_record(URL, NONCE_KEY, 9, other, http=http)

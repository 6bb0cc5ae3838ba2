"""The light client against real chains (in-process, real headers and signed commits)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key, make_genesis, validator_key
from cifer.app.inproc_chain import ChainDriverError, InprocChain
from cifer.app.txbuilder import make_tx
from cifer.base import encoding
from cifer.base.chain.light import LightBlock, LightClient, LightClientError
from cifer.base.chain.proofs import ProofError, build_tx_proof
from cifer.base.chain.types import (
    PRECOMMIT,
    Commit,
    CommitSig,
    Header,
    ValidatorSet,
    make_evidence,
    vote_sign_bytes,
)
from cifer.base.consensus.privval import unguarded_signer

CHAIN = "light-test"
ALICE, BOB = account_key(0), account_key(1)
NONCE_KEY = b"bank/nonce/" + ALICE.address
BALANCE_KEY = b"bank/bal/" + BOB.address
CHEAT = validator_key(3)
#: Block 6 carries evidence against validator 3: the set changes at height 8, which
#: header 7 announces.
EVIDENCE_HEIGHT = 6
TOP = 12


def transfer(nonce: int) -> bytes:
    return make_tx(ALICE, CHAIN, nonce, [send_msg(BOB.address, 5)])


def build_chain(fork_at: int | None = None) -> InprocChain:
    """Blocks 1..TOP; a fork (``fork_at``) sends a different amount from that height on."""
    g = make_genesis(CHAIN, 4, [ALICE.address, BOB.address])
    chain = InprocChain(g)
    nonce = 0
    for h in range(1, TOP + 1):
        evidence = []
        if h == EVIDENCE_HEIGHT:
            sign = unguarded_signer(CHEAT, CHAIN)
            evidence = [
                make_evidence(
                    sign(PRECOMMIT, 2, 0, b"\x01" * 32), sign(PRECOMMIT, 2, 0, b"\x02" * 32)
                )
            ]
        txs = []
        if h % 2 == 1:
            amount = 7 if fork_at is not None and h >= fork_at else 5
            txs = [make_tx(ALICE, CHAIN, nonce, [send_msg(BOB.address, amount)])]
            nonce += 1
        cb = chain.commit_block(txs, evidence)
        assert len(cb.block.txs) == len(txs) and cb.block.evidence == evidence
    return chain


@pytest.fixture(scope="module")
def chain() -> InprocChain:
    return build_chain()


@pytest.fixture(scope="module")
def blocks(chain: InprocChain) -> list[LightBlock]:
    return chain.light_blocks()


def client(chain: InprocChain) -> LightClient:
    return LightClient(CHAIN, chain.genesis_validators())


def resign(chain: InprocChain, header: Header, *, signers: int = 4) -> LightBlock:
    """``header`` with a commit genuinely signed by the first ``signers`` validators."""
    msg = vote_sign_bytes(CHAIN, PRECOMMIT, header.height, 0, header.hash())
    keys = sorted((validator_key(i) for i in range(signers)), key=lambda k: k.address)
    sigs = [CommitSig(k.address, k.sign(msg)) for k in keys]
    return LightBlock(header, Commit(header.height, 0, header.hash(), sigs))


# ---------------------------------------------------------------- the honest chain


def test_verifies_the_whole_chain_and_says_what_it_checked(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    lc = client(chain)
    assert lc.verify_all(blocks) == TOP == lc.height
    s = lc.stats
    assert (s.headers, s.commits, s.validator_set_changes) == (TOP, TOP, 1)
    # 4 x 10 power: 3 signatures make a quorum (27); after the change 3 x 10 needs all 3
    assert s.signatures == 3 * TOP
    assert CHEAT.address not in lc.validators and len(lc.validators) == 3
    assert lc.header_hash(TOP) == chain.blocks.block_hash(TOP)


def test_validator_set_change_is_announced_once_with_its_list(blocks: list[LightBlock]) -> None:
    announced = [b.header.height for b in blocks if b.next_validators is not None]
    assert announced == [EVIDENCE_HEIGHT + 1]
    h7 = blocks[EVIDENCE_HEIGHT]
    assert h7.next_validators is not None
    assert ValidatorSet(h7.next_validators).hash == h7.header.next_validators_hash


def test_state_proofs_verify_against_the_next_header(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    lc = client(chain)
    lc.verify_all(blocks)
    heights = chain.state_store.change_heights(NONCE_KEY)
    assert heights == [11, 9, 7, 5, 3, 1]
    for h in heights:
        check = lc.verify_state(chain.state_proof(NONCE_KEY, h))
        assert check.height == h and check.header_height == h + 1
        assert check.value == encoding.encode((h + 1) // 2)  # the nonce after the tx
        assert check.app_hash == blocks[h].header.app_hash
    # genesis state (height 0) is proven by header 1
    g = lc.verify_state(chain.state_proof(BALANCE_KEY, 0))
    assert g.header_height == 1 and g.value is not None


def test_tampered_or_misplaced_state_proofs_fail(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    lc = client(chain)
    lc.verify_all(blocks)
    p = chain.state_proof(NONCE_KEY, 5)
    with pytest.raises(ProofError, match="altered"):
        lc.verify_state(msgspec.structs.replace(p, value=encoding.encode(99)))
    with pytest.raises(ProofError, match="implies app hash"):
        lc.verify_state(msgspec.structs.replace(p, height=7))  # wrong height
    with pytest.raises(ProofError, match="implies app hash"):
        lc.verify_state(msgspec.structs.replace(p, prev_app_hash=blocks[3].header.app_hash))
    with pytest.raises(LightClientError, match="trusted headers end at 12"):
        lc.verify_state(msgspec.structs.replace(p, height=TOP))
    # a client that has not verified header 6 yet cannot accept the proof
    short = client(chain)
    short.verify_all(blocks[:5])
    with pytest.raises(LightClientError, match="needs header 6"):
        short.verify_state(p)


def test_tx_proofs_verify_against_trusted_headers(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    lc = client(chain)
    lc.verify_all(blocks)
    block = chain.blocks.load_block(3)
    assert block is not None
    proof = build_tx_proof(block, 0)
    assert lc.verify_tx(proof).height == 3
    with pytest.raises(ProofError, match="not in block 3"):
        lc.verify_tx(msgspec.structs.replace(proof, tx=transfer(9)))


# ---------------------------------------------------------------- a lying node


def test_forged_commit_signature_is_rejected(chain: InprocChain, blocks: list[LightBlock]) -> None:
    b = blocks[0]
    sigs = list(b.commit.signatures)
    sigs[0] = CommitSig(sigs[0].validator, bytes(64))
    forged = LightBlock(b.header, msgspec.structs.replace(b.commit, signatures=sigs))
    with pytest.raises(LightClientError, match="invalid signature"):
        client(chain).verify(forged)


def test_commit_signed_by_outsiders_or_twice_is_rejected(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    b = blocks[0]
    h = b.header
    outsider = account_key(7)
    msg = vote_sign_bytes(CHAIN, PRECOMMIT, 1, 0, h.hash())
    extra = [*b.commit.signatures, CommitSig(outsider.address, outsider.sign(msg))]
    with pytest.raises(LightClientError, match="not a validator"):
        client(chain).verify(LightBlock(h, msgspec.structs.replace(b.commit, signatures=extra)))
    twice = [b.commit.signatures[0]] * 3
    with pytest.raises(LightClientError, match="two signatures"):
        client(chain).verify(LightBlock(h, msgspec.structs.replace(b.commit, signatures=twice)))


def test_too_little_power_is_rejected(chain: InprocChain, blocks: list[LightBlock]) -> None:
    header = blocks[0].header
    with pytest.raises(LightClientError, match="20 of 40 voting power, needs more than 2/3"):
        client(chain).verify(resign(chain, header, signers=2))
    client(chain).verify(resign(chain, header, signers=3))  # 30 of 40 is enough


def test_commit_for_another_block_or_height_is_rejected(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    b1, b2 = blocks[0], blocks[1]
    with pytest.raises(LightClientError, match="for height 2"):
        client(chain).verify(LightBlock(b1.header, b2.commit))
    other = msgspec.structs.replace(b1.commit, block_hash=b2.header.hash())
    with pytest.raises(LightClientError, match="different block"):
        client(chain).verify(LightBlock(b1.header, other))
    # an altered header no longer matches the block its commit signed
    altered = msgspec.structs.replace(b1.header, app_hash=bytes(32))
    with pytest.raises(LightClientError, match="different block"):
        client(chain).verify(LightBlock(altered, b1.commit))


def test_wrong_chain_id_is_rejected(chain: InprocChain, blocks: list[LightBlock]) -> None:
    lc = LightClient("another-chain", chain.genesis_validators())
    with pytest.raises(LightClientError, match="is for chain 'light-test'"):
        lc.verify(blocks[0])


def test_commit_signed_for_another_chain_is_rejected(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    h = blocks[0].header
    msg = vote_sign_bytes("another-chain", PRECOMMIT, 1, 0, h.hash())
    keys = sorted((validator_key(i) for i in range(4)), key=lambda k: k.address)
    commit = Commit(1, 0, h.hash(), [CommitSig(k.address, k.sign(msg)) for k in keys])
    with pytest.raises(LightClientError, match="invalid signature"):
        client(chain).verify(LightBlock(h, commit))


def test_wrong_genesis_validators_are_detected_at_header_1(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    three = ValidatorSet(chain.genesis_validators().validators[:3])
    with pytest.raises(LightClientError, match="names validator set"):
        LightClient(CHAIN, three).verify(blocks[0])


def test_headers_must_come_in_order(chain: InprocChain, blocks: list[LightBlock]) -> None:
    with pytest.raises(LightClientError, match="expected header 1, got header 2"):
        client(chain).verify(blocks[1])
    lc = client(chain)
    lc.verify(blocks[0])
    with pytest.raises(LightClientError, match="expected header 2, got header 1"):
        lc.verify(blocks[0])


def test_a_validly_signed_fork_does_not_link(chain: InprocChain, blocks: list[LightBlock]) -> None:
    # Same genesis and validators, different txs from height 3: every header and commit
    # of the fork is genuine, but its header 4 links to its own header 3.
    fork = build_chain(fork_at=3).light_blocks()
    assert fork[1].header == blocks[1].header and fork[2].header != blocks[2].header
    lc = client(chain)
    lc.verify_all(blocks[:3])
    with pytest.raises(LightClientError, match="header 4 does not link to trusted header 3"):
        lc.verify(fork[3])
    # the fork on its own verifies from genesis: only linkage tells the two apart
    assert client(chain).verify_all(fork) == TOP


def test_signed_header_with_bad_linkage_or_time_is_rejected(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    lc = client(chain)
    lc.verify_all(blocks[:2])
    h3 = blocks[2].header
    unlinked = msgspec.structs.replace(h3, last_block_hash=bytes(32))
    with pytest.raises(LightClientError, match="does not link"):
        lc.verify(resign(chain, unlinked))
    early = msgspec.structs.replace(h3, time_ms=blocks[1].header.time_ms)
    with pytest.raises(LightClientError, match="time is not after"):
        lc.verify(resign(chain, early))
    lc.verify(blocks[2])  # the failures left the client where it was


def test_validator_set_change_needs_the_right_list(
    chain: InprocChain, blocks: list[LightBlock]
) -> None:
    k = EVIDENCE_HEIGHT  # index of header 7, which announces the change
    lc = client(chain)
    lc.verify_all(blocks[:k])
    announcing = blocks[k]
    assert announcing.next_validators is not None
    with pytest.raises(LightClientError, match="were not supplied"):
        lc.verify(msgspec.structs.replace(announcing, next_validators=None))
    wrong = list(chain.genesis_validators().validators)  # the old set, cheater included
    with pytest.raises(LightClientError, match="hash to"):
        lc.verify(msgspec.structs.replace(announcing, next_validators=wrong))
    lc.verify(announcing)
    assert lc.stats.validator_set_changes == 1
    # header 8 is signed by the new set; its commit from the old set would not do
    forged = resign(chain, blocks[k + 1].header)  # includes the jailed validator
    with pytest.raises(LightClientError, match="not a validator"):
        lc.verify(forged)
    lc.verify_all(blocks[k + 1 :])


def test_the_driver_refuses_to_sign_without_a_quorum_of_keys() -> None:
    g = make_genesis(CHAIN, 4)
    weak = InprocChain(g, keys=[validator_key(0), validator_key(1)])
    with pytest.raises(ChainDriverError, match="holds keys for 20 of 40 power"):
        weak.commit_block()


# ---------------------------------------------------------------- the trust file


def test_trust_file_resumes_where_it_stopped(
    tmp_path: Path, chain: InprocChain, blocks: list[LightBlock]
) -> None:
    path = tmp_path / "trust.bin"
    vset = chain.genesis_validators()
    lc = LightClient.load(path, CHAIN, vset)  # no file yet: from genesis
    assert lc.height == 0
    lc.verify_all(blocks[:8])  # through the validator-set change
    lc.save(path)
    again = LightClient.load(path, CHAIN, vset)
    assert again.height == 8 and again.validators.hash == lc.validators.hash
    assert again.verify_all(blocks[8:]) == TOP - 8 and again.stats.headers == TOP - 8
    # a header trusted only by hash must be supplied, and must be the trusted one
    p = chain.state_proof(NONCE_KEY, 5)
    with pytest.raises(LightClientError, match="by hash only"):
        again.verify_state(p)
    assert again.verify_state(p, blocks[5].header).header_height == 6
    with pytest.raises(LightClientError, match="not the trusted one"):
        again.verify_state(p, blocks[4].header)


def test_trust_file_of_another_chain_or_genesis_is_refused(
    tmp_path: Path, chain: InprocChain, blocks: list[LightBlock]
) -> None:
    path = tmp_path / "trust.bin"
    lc = client(chain)
    lc.verify_all(blocks[:3])
    lc.save(path)
    with pytest.raises(LightClientError, match="for chain 'light-test'"):
        LightClient.load(path, "other", chain.genesis_validators())
    three = ValidatorSet(chain.genesis_validators().validators[:3])
    with pytest.raises(LightClientError, match="another genesis validator set"):
        LightClient.load(path, CHAIN, three)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(LightClientError, match="unreadable"):
        LightClient.load(path, CHAIN, chain.genesis_validators())


def test_inconsistent_trust_file_is_refused(chain: InprocChain, blocks: list[LightBlock]) -> None:
    lc = client(chain)
    lc.verify_all(blocks[:3])
    state = lc.trust_state()
    bad = msgspec.structs.replace(state, header_hashes=state.header_hashes[:2])
    with pytest.raises(LightClientError, match="inconsistent"):
        LightClient.from_trust_state(bad, CHAIN, chain.genesis_validators())

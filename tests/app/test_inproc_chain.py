"""The in-process chain driver: real, deterministic, reopenable chains."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key, make_genesis
from cifer.app.inproc_chain import ChainDriverError, InprocChain
from cifer.app.txbuilder import make_tx
from cifer.base.chain.light import LightClient
from cifer.base.chain.types import ValidatorSet

CHAIN = "inproc"
KEYS = [account_key(i) for i in range(3)]


def transfers(n: int, start_nonce: int = 0) -> list[bytes]:
    return [
        make_tx(KEYS[i % 3], CHAIN, start_nonce + i // 3, [send_msg(KEYS[(i + 1) % 3].address, 1)])
        for i in range(n)
    ]


def test_same_inputs_give_the_same_chain_byte_for_byte(tmp_path: Path) -> None:
    g = make_genesis(CHAIN, 4, [k.address for k in KEYS], genesis_time_ms=5_000)
    a, b = InprocChain(g), InprocChain(g, tmp_path / "b")
    for c in (a, b):
        c.commit_txs(transfers(30), per_block=7)
        c.commit_block()
    assert a.height == b.height == 6
    for h in range(1, a.height + 1):
        assert a.blocks.load_block_bytes(h) == b.blocks.load_block_bytes(h)
        assert a.blocks.load_commit(h) == b.blocks.load_commit(h)
    headers = [lb.header for lb in a.light_blocks()]
    assert [h.time_ms for h in headers] == [5_000 + 1_000 * h for h in range(1, 7)]
    # the proposer rotates through the validators, as a live network's would
    assert len({h.proposer for h in headers}) == 4
    # and the headers are the real thing: a light client accepts them from genesis
    lc = LightClient(CHAIN, g.validator_set())
    assert lc.verify_all(a.light_blocks()) == 6


def test_a_chain_on_disk_reopens_where_it_stopped(tmp_path: Path) -> None:
    g = make_genesis(CHAIN, 4, [k.address for k in KEYS])
    first = InprocChain(g, tmp_path)
    first.commit_txs(transfers(6), per_block=3)
    top_hash = first.blocks.block_hash(2)
    first.close()
    again = InprocChain(g, tmp_path)
    assert again.height == 2 and again.blocks.block_hash(2) == top_hash
    again.commit_txs(transfers(3, start_nonce=2))
    again.commit_block()
    lc = LightClient(CHAIN, ValidatorSet(g.validator_set().validators))
    lc.verify_all(again.light_blocks())
    check = lc.verify_state(again.state_proof(b"bank/nonce/" + KEYS[0].address))
    assert check.height == 3


def test_a_tx_the_proposer_leaves_out_is_an_error() -> None:
    g = make_genesis(CHAIN, 4, [k.address for k in KEYS])
    chain = InprocChain(g)
    bad_nonce = make_tx(KEYS[0], CHAIN, 5, [send_msg(KEYS[1].address, 1)])
    with pytest.raises(ChainDriverError, match="left out 1 of 2 txs"):
        chain.commit_txs([transfers(1)[0], bad_nonce])
    with pytest.raises(ValueError, match="per_block"):
        chain.commit_txs([], per_block=0)

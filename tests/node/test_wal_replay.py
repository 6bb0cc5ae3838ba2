"""A validator that crashed after locking resumes with the same lock (consensus WAL replay)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cifer.app.node.config import Home, read_key
from cifer.app.node.localnet import init_localnet
from cifer.app.node.runtime import Node
from cifer.base.chain.types import PREVOTE, Vote, vote_sign_bytes
from cifer.base.consensus.messages import ProposalMsg, VoteMsg, encode_message
from cifer.base.consensus.privval import Signer

PEER = b"\x01" * 32


@pytest.mark.parametrize("crashed_node_proposes", [True, False])
def test_lock_survives_a_crash(tmp_path: Path, crashed_node_proposes: bool) -> None:
    spec = init_localnet(tmp_path / "net", 4, accounts=1)
    homes = [Home(Path(n.home)) for n in spec.nodes]
    keys = {k.address: k for k in (read_key(h.validator_key_file) for h in homes)}
    first_proposer = Node(homes[0].root).executor.proposer_rotation()(0)
    is_first = [read_key(h.validator_key_file).address == first_proposer for h in homes]
    home = homes[is_first.index(crashed_node_proposes)]
    me = read_key(home.validator_key_file).address

    async def first_life() -> tuple[int, bytes | None]:
        node = Node(home.root)
        node.resume()  # what Node.run() does before serving
        proposer = node.executor.proposer_rotation()(0)
        if proposer == me:  # node0 proposed at start; take its block from its own state
            h = node.replica.machine.h
            assert h is not None
            block_hash = h.proposals[0].block_hash
        else:
            block = node.executor.create_block(proposer, [], None, [], 1_000)
            block_hash = block.hash()
            prop = Signer(keys[proposer], spec.chain_id).sign_proposal(1, 0, -1, block_hash)
            assert node._on_frame(PEER, encode_message(ProposalMsg(prop, block)))
        others = [a for a in keys if a != me][:2]
        for addr in others:
            sig = keys[addr].sign(vote_sign_bytes(spec.chain_id, PREVOTE, 1, 0, block_hash))
            msg = VoteMsg(Vote(PREVOTE, 1, 0, block_hash, addr, sig))
            assert node._on_frame(PEER, encode_message(msg))
        locked = node.replica.machine.locked()
        assert locked == (0, block_hash), (locked, node.replica.rejections)
        node.wal.flush()  # then the process dies: no shutdown, nothing else written
        return locked

    locked = asyncio.run(first_life())

    async def second_life() -> tuple[int, bytes | None]:
        node = Node(home.root)
        node.resume()
        return node.replica.machine.locked()

    assert asyncio.run(second_life()) == locked

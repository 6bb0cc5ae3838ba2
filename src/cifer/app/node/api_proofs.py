"""Node API routes for light clients: genesis, header pages and Merkle proofs.

Everything a light client needs to check a record without trusting this node: the headers
with the commits that decided them (canonical encodings, hex, so the client hashes exactly
the bytes that were signed), the validator sets where they change, and state or tx proofs.
The node's answers are data to verify, not claims to believe (:mod:`cifer.app.sdk.proofs`).

Reads run on the node's event loop like the other routes; a header page is bounded in
headers and block bytes, and the one-off validator-set scan yields to the loop every
:data:`INDEX_CHUNK` headers, so a light client syncing from genesis cannot stall consensus.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import msgspec
from fastapi import FastAPI, HTTPException, Query

from cifer.base import encoding
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.light import LightBlock
from cifer.base.chain.proofs import NotYetProvable, ProofError
from cifer.base.chain.provider import MAX_PAGE, ChainReader

if TYPE_CHECKING:
    from cifer.app.node.runtime import Node

#: Headers scanned for validator-set changes between two yields to the event loop.
INDEX_CHUNK: Final = 200
#: Longest state key a proof request may name.
MAX_KEY_BYTES: Final = 1024


def node_reader(node: Node) -> ChainReader:
    """A reader over a running node's stores (state through the app's view)."""
    state, _ = node.app.view()
    return ChainReader(
        node.genesis.chain_id,
        node.genesis.validator_set(),
        node.blocks,
        state.store,
        node.executor.results_at,
        node.executor.validators_at,
    )


def add_proof_routes(api: FastAPI, node: Node) -> None:
    add_chain_proof_routes(api, node_reader(node), node.genesis)


def light_block_json(lb: LightBlock) -> dict[str, Any]:
    return {
        "height": lb.header.height,
        "hash": lb.header.hash().hex(),
        "header": encoding.encode(lb.header).hex(),
        "commit": encoding.encode(lb.commit).hex(),
        "next_validators": None
        if lb.next_validators is None
        else [{"pubkey": v.pubkey.hex(), "power": v.power} for v in lb.next_validators],
    }


def _hex_or_400(text: str, what: str, limit: int) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise HTTPException(400, f"{what} must be hex") from None
    if len(raw) > limit:
        raise HTTPException(400, f"{what} is {len(raw)} bytes, limit is {limit}")
    return raw


def add_chain_proof_routes(api: FastAPI, reader: ChainReader, genesis: Genesis) -> None:
    """The light-client routes over any :class:`ChainReader` (a node's, or an in-process
    chain's in tests and benchmarks)."""

    async def index_to(height: int) -> None:
        try:
            while reader.indexed_height < min(height, reader.height):
                reader.index_validators(reader.indexed_height + INDEX_CHUNK)
                await asyncio.sleep(0)
        except RuntimeError as exc:
            raise HTTPException(500, f"cannot serve validator sets: {exc}") from None

    @api.get(
        "/genesis",
        summary="The chain's genesis document",
        description="What this node runs from. A light client should get it out of band "
        "(it is the root of trust); this copy lets it compare.",
    )
    async def get_genesis() -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(genesis)
        return out

    @api.get(
        "/light/headers",
        summary=f"Headers with their commits, up to {MAX_PAGE} per page, for light clients",
        description="Headers `from..to` (clipped to the chain, to "
        f"{MAX_PAGE} headers and to a block-bytes budget: continue from the last returned "
        "height + 1). `header` and `commit` are canonical encodings in hex; "
        "`next_validators` is set when the header announces a different validator set for "
        "the next height (the client checks it against the header's next_validators_hash).",
    )
    async def light_headers(
        start: int = Query(1, alias="from", ge=1, description="First height"),
        end: int | None = Query(None, alias="to", ge=1, description="Last height"),
    ) -> dict[str, Any]:
        if end is not None and end < start:
            raise HTTPException(400, "to must be >= from")
        top = reader.height
        if start > top:
            raise HTTPException(404, f"no header {start} yet (chain is at {top})")
        last = min(top if end is None else end, start + MAX_PAGE - 1, top)
        await index_to(last)
        page = reader.light_blocks(start, last)
        return {
            "chain_id": reader.chain_id,
            "height": top,
            "from": start,
            "to": page[-1].header.height,
            "headers": [light_block_json(lb) for lb in page],
        }

    @api.get(
        "/proofs/state",
        summary="Merkle proof of a state record against the header after its block",
        description="Proves what the block at `height` wrote to state key `key` (hex); "
        "without `height`, its latest write. `proof` is a canonical "
        "StateProof in hex; check it against the app hash of header `header_height`. "
        "404: no such write; 409: written, but header height + 1 is not decided yet.",
    )
    async def state_proof(
        key: str = Query(description="State key, hex"),
        height: int | None = Query(None, ge=0, description="Height of the write"),
    ) -> dict[str, Any]:
        k = _hex_or_400(key, "key", MAX_KEY_BYTES)
        try:
            p = reader.state_proof(k, height)
        except NotYetProvable as exc:
            raise HTTPException(409, str(exc)) from None
        except ProofError as exc:
            raise HTTPException(404, str(exc)) from None
        return {
            "key": k.hex(),
            "height": p.height,
            "value": None if p.deleted else p.value.hex(),
            "deleted": p.deleted,
            "header_height": p.header_height,
            "proof": encoding.encode(p).hex(),
        }

    @api.get(
        "/proofs/history",
        summary="Heights at which a state key changed, newest first",
        description="Each listed height can be proven with `/proofs/state`.",
    )
    async def state_history(
        key: str = Query(description="State key, hex"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        k = _hex_or_400(key, "key", MAX_KEY_BYTES)
        return {"key": k.hex(), "heights": reader.state.change_heights(k, limit=limit)}

    @api.get(
        "/proofs/tx",
        summary="Merkle proof that a tx is in a block",
        description="`proof` is a canonical TxProof in hex; check it against the data hash "
        "of the header at `height`.",
    )
    async def tx_proof(
        tx_hash: str = Query(alias="hash", description="SHA-256 of the tx, hex"),
    ) -> dict[str, Any]:
        h = _hex_or_400(tx_hash, "hash", 32)
        if len(h) != 32:
            raise HTTPException(400, "a tx hash is 32 bytes (64 hex characters)")
        try:
            p = reader.tx_proof(h)
        except ProofError as exc:
            raise HTTPException(404, str(exc)) from None
        return {
            "hash": h.hex(),
            "height": p.height,
            "index": p.proof.index,
            "proof": encoding.encode(p).hex(),
        }

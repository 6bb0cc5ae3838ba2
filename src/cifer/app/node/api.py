"""The node's HTTP JSON API (FastAPI), served in the node's own event loop.

Every malformed request gets a 4xx with a reason: bodies are size-capped before they are
read, each client address has a token bucket, and handlers validate every field (hashes,
addresses, base64) themselves so nothing malformed reaches the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cifer import __version__
from cifer.base.chain.types import Block, Commit, prove_tx, sha256
from cifer.base.crypto.keys import CryptoError, from_bech32, to_bech32
from cifer.compute.blobs import REPLICA_HEADER, BlobError, parse_blob_hash

if TYPE_CHECKING:
    from cifer.app.node.runtime import BlockEvent, Node

MAX_BATCH = 5_000
COMMIT_WAIT_S = 30.0


class TxIn(BaseModel):
    tx: str = Field(description="The signed transaction, base64 (or hex with a 0x prefix).")
    mode: Literal["sync", "commit"] = Field(
        "sync", description="sync: return after check_tx; commit: after the block is final."
    )


class TxBatchIn(BaseModel):
    txs: list[str] = Field(description=f"Up to {MAX_BATCH} signed transactions, base64.")


class _Buckets:
    """Per-client token buckets (requests per second, burst of two seconds)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.state: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, cost: float = 1.0) -> bool:
        now = time.monotonic()
        tokens, last = self.state.get(client, (2 * self.rate, now))
        tokens = min(2 * self.rate, tokens + (now - last) * self.rate)
        if tokens < cost:
            self.state[client] = (tokens, now)
            return False
        self.state[client] = (tokens - cost, now)
        if len(self.state) > 10_000:  # forget idle clients
            self.state = {k: v for k, v in self.state.items() if now - v[1] < 60}
        return True


def _hex(b: bytes) -> str:
    return b.hex()


def _decode_tx(text: str) -> bytes:
    try:
        if text.startswith("0x"):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise HTTPException(400, "tx must be base64 (or hex prefixed with 0x)") from None


def _parse_hash(text: str) -> bytes:
    try:
        h = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise HTTPException(400, f"{text[:80]!r} is not a hex hash") from None
    if len(h) != 32:
        raise HTTPException(400, "a hash is 32 bytes (64 hex characters)")
    return h


def _parse_address(text: str) -> bytes:
    try:
        return from_bech32(text)
    except CryptoError as exc:
        raise HTTPException(400, str(exc)) from None


def block_json(block: Block, commit: Commit | None) -> dict[str, Any]:
    h = block.header
    return {
        "hash": _hex(block.hash()),
        "header": {
            "chain_id": h.chain_id,
            "height": h.height,
            "time_ms": h.time_ms,
            "last_block_hash": _hex(h.last_block_hash),
            "last_commit_hash": _hex(h.last_commit_hash),
            "data_hash": _hex(h.data_hash),
            "app_hash": _hex(h.app_hash),
            "last_results_hash": _hex(h.last_results_hash),
            "validators_hash": _hex(h.validators_hash),
            "next_validators_hash": _hex(h.next_validators_hash),
            "evidence_hash": _hex(h.evidence_hash),
            "proposer": to_bech32(h.proposer) if len(h.proposer) == 20 else _hex(h.proposer),
        },
        "txs": [_hex(sha256(t)) for t in block.txs],
        "evidence": [
            {"validator": to_bech32(e.validator), "height": e.height} for e in block.evidence
        ],
        "commit": None
        if commit is None
        else {
            "round": commit.round,
            "signatures": [
                {"validator": to_bech32(s.validator), "signature": _hex(s.signature)}
                for s in commit.signatures
            ],
        },
    }


def event_json(ev: BlockEvent) -> dict[str, Any]:
    return {
        "height": ev.height,
        "hash": _hex(ev.hash),
        "round": ev.round,
        "time_ms": ev.time_ms,
        "app_hash": _hex(ev.app_hash),
        "txs": [_hex(h) for h in ev.tx_hashes],
    }


def build_app(node: Node) -> FastAPI:
    cfg = node.config
    api = FastAPI(
        title="Cifer node API",
        version=__version__,
        description="Status, blocks, transactions with Merkle proofs, accounts, validators, "
        "and the content-addressed blob store for model weights and updates.",
    )
    buckets = _Buckets(cfg.rate_limit_per_s)

    @api.middleware("http")
    async def limits(request: Request, call_next: Any) -> Any:
        client = request.client.host if request.client else "?"
        if not buckets.allow(client):
            return JSONResponse({"detail": "rate limit exceeded; slow down"}, status_code=429)
        if request.method in ("POST", "PUT"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "Content-Length is required"}, status_code=411)
            # Blob uploads (model weights) have their own, larger cap; the route re-checks it.
            blob = request.method == "PUT" and request.url.path.startswith("/blobs/")
            limit = cfg.blob_max_bytes if blob else cfg.max_body_bytes
            if not length.isdigit() or int(length) > limit:
                what = "blob" if blob else "body"
                return JSONResponse(
                    {"detail": f"{what} exceeds the limit of {limit:,} bytes"}, status_code=413
                )
        return await call_next(request)

    @api.get("/status", summary="Height, app hash, peers and this node's validator info")
    async def status() -> dict[str, Any]:
        s = node.executor.state
        vset = node.executor.validator_set()
        me = node.validator_key.address if node.validator_key else None
        return {
            "chain_id": s.chain_id,
            "moniker": cfg.moniker,
            "version": __version__,
            "node_id": _hex(node.node_key.public.raw),
            "height": s.last_height,
            "last_block_hash": _hex(s.last_block_hash),
            "last_block_time_ms": s.last_block_time_ms,
            "app_hash": _hex(s.app_hash),
            "consensus": {
                "height": node.replica.machine.height,
                "round": node.replica.machine.round,
                "step": node.replica.machine.step.name.lower(),
                "proposer": to_bech32(node.replica.machine.proposer_of(node.replica.machine.round))
                if node.replica.machine.h is not None
                else None,
            },
            "validator": None
            if me is None
            else {"address": to_bech32(me), "power": vset.power(me), "active": me in vset},
            "peers": [
                {"node_id": _hex(p.key), "address": p.address, "outbound": p.outbound}
                for p in node.network.peers()
            ],
            "mempool": {"txs": len(node.replica.mempool), "bytes": node.replica.mempool.size_bytes},
            "proposals_rejected": node.app.rejected_proposals,
            "last_rejection": node.app.last_rejection,
            "halted": node.halted,
        }

    @api.get("/blocks/{height}", summary="A committed block and the commit that decided it")
    async def block(height: int) -> dict[str, Any]:
        if height < 1:
            raise HTTPException(400, "height must be >= 1")
        b = node.blocks.load_block(height)
        if b is None:
            raise HTTPException(
                404, f"no block at height {height} (chain is at {node.blocks.height})"
            )
        return block_json(b, node.blocks.load_commit(height))

    @api.get("/txs/{tx_hash}", summary="A committed tx, its result and its Merkle inclusion proof")
    async def tx(tx_hash: str) -> dict[str, Any]:
        h = _parse_hash(tx_hash)
        loc = node.blocks.tx_location(h)
        if loc is None:
            raise HTTPException(404, "no committed tx with that hash")
        height, index = loc
        b = node.blocks.load_block(height)
        assert b is not None
        proof = prove_tx(b, index)
        results = node.executor.results_at(height)
        res = results.tx_results[index] if results and index < len(results.tx_results) else None
        return {
            "hash": _hex(h),
            "height": height,
            "index": index,
            "tx": base64.b64encode(b.txs[index]).decode(),
            "result": None
            if res is None
            else {
                "code": res.code,
                "log": res.log,
                "events": [
                    {"type": e.type, "attrs": [{"key": a.key, "value": a.value} for a in e.attrs]}
                    for e in res.events
                ],
            },
            "proof": {
                "data_hash": _hex(b.header.data_hash),
                "block_hash": _hex(b.hash()),
                "total": proof.total,
                "index": proof.index,
                "leaf_hash": _hex(proof.leaf_hash),
                "aunts": [_hex(a) for a in proof.aunts],
            },
        }

    @api.get("/accounts/{address}", summary="Balance, nonce and vesting of an account")
    async def account(address: str) -> dict[str, Any]:
        addr = _parse_address(address)
        info = node.app.account(addr)
        out: dict[str, Any] = msgspec.to_builtins(info)
        out["pending_nonce"] = node.app.pending_nonce(addr)
        return out

    @api.get("/validators", summary="The validator set for the next height")
    async def validators() -> dict[str, Any]:
        vset = node.executor.validator_set()
        return {
            "height": node.executor.state.last_height + 1,
            "total_power": vset.total_power,
            "validators": [
                {"address": to_bech32(v.address), "pubkey": _hex(v.pubkey), "power": v.power}
                for v in vset.validators
            ],
        }

    @api.post("/txs", summary="Broadcast a signed tx (sync: after check_tx; commit: when final)")
    async def broadcast(body: TxIn) -> JSONResponse:
        raw = _decode_tx(body.tx)
        if node.halted:
            raise HTTPException(503, f"node halted: {node.halted}")
        wait = COMMIT_WAIT_S if body.mode == "commit" else None
        ok, reason, height = await node.submit_tx(raw, wait_commit=wait)
        payload = {"hash": _hex(sha256(raw)), "accepted": ok, "log": reason}
        if body.mode == "commit":
            payload["height"] = height
        return JSONResponse(payload, status_code=200 if ok else 422)

    @api.post("/txs/batch", summary=f"Broadcast up to {MAX_BATCH} signed txs after check_tx")
    async def broadcast_batch(body: TxBatchIn) -> dict[str, Any]:
        if len(body.txs) > MAX_BATCH:
            raise HTTPException(400, f"at most {MAX_BATCH} txs per batch")
        raws = [_decode_tx(t) for t in body.txs]
        checked = node.submit_txs(raws)
        return {
            "results": [
                {"hash": _hex(sha256(raw)), "accepted": ok, "log": reason}
                for raw, (ok, reason) in zip(raws, checked, strict=True)
            ]
        }

    @api.websocket("/ws/blocks")
    async def ws_blocks(ws: WebSocket) -> None:
        await ws.accept()
        q: asyncio.Queue[BlockEvent] = asyncio.Queue(maxsize=1000)
        node.subscribers.add(q)
        try:
            while True:
                ev = await q.get()
                await ws.send_json(event_json(ev))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            node.subscribers.discard(q)

    _add_blob_routes(api, node)

    from cifer.app.node.api_assets import add_asset_routes
    from cifer.app.node.api_fl import add_fl_routes
    from cifer.app.node.api_proofs import add_proof_routes

    add_fl_routes(api, node)
    add_proof_routes(api, node)
    add_asset_routes(api, node)

    if cfg.fault_injection:

        @api.post("/debug/isolate", summary="TEST ONLY: drop all peers for some seconds")
        async def isolate(seconds: float = 10.0) -> dict[str, Any]:
            if not 0 < seconds <= 600:
                raise HTTPException(400, "seconds must be in (0, 600]")
            node.network.isolate(seconds)
            return {"isolated_for_s": seconds}

    return api


_BLOB_DOC = (
    "Blobs are named by the SHA-256 of their bytes (64 hex characters); only these hashes "
    "go on chain. A blob is stored only if its bytes hash to the name in the URL."
)


def _blob_hash_or_400(hash_hex: str) -> bytes:
    try:
        return parse_blob_hash(hash_hex)
    except BlobError as exc:
        raise HTTPException(400, str(exc)) from None


def _add_blob_routes(api: FastAPI, node: Node) -> None:
    """PUT/GET/HEAD /blobs/{hash}: the node's share of the blob store, served to clients
    and peers. New uploads are pushed to the configured blob peers in the background."""
    store, fetcher = node.blobs, node.blob_fetcher
    limit = store.max_bytes
    background: set[asyncio.Task[None]] = set()  # strong refs until each push finishes

    @api.put(
        "/blobs/{hash_hex}",
        summary="Upload a blob (raw bytes) under its SHA-256",
        description=_BLOB_DOC
        + f" The body is the raw blob (application/octet-stream), at most {limit:,} bytes."
        " Answers 201 if the blob is new here, 200 if it was already stored, 400 if the hash "
        "is malformed or does not match the body (nothing is stored), 413 if it is too large. "
        f"A new blob is then replicated to this node's blob peers, unless the request carries "
        f"`{REPLICA_HEADER}: 1` (a peer's own replication, which is not forwarded again).",
        status_code=201,
        responses={
            200: {"description": "Already stored"},
            400: {"description": "Malformed hash, or the body does not hash to it"},
            413: {"description": "Blob larger than this node's limit"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def put_blob(hash_hex: str, request: Request) -> JSONResponse:
        h = _blob_hash_or_400(hash_hex)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"blob exceeds the limit of {limit:,} bytes")
        data = bytes(body)
        try:
            _, created = await asyncio.to_thread(store.insert, data, h)
        except BlobError as exc:
            raise HTTPException(400, str(exc)) from None
        if created and request.headers.get(REPLICA_HEADER) != "1":
            task = asyncio.create_task(fetcher.replicate(h, data))
            background.add(task)
            task.add_done_callback(background.discard)
        return JSONResponse(
            {"hash": h.hex(), "size": len(data), "created": created},
            status_code=201 if created else 200,
        )

    @api.get(
        "/blobs/{hash_hex}",
        summary="Download a blob by its SHA-256",
        description=_BLOB_DOC + " The bytes are re-verified against the hash before they are "
        "served; 404 if this node does not have the blob.",
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The blob"},
            404: {"description": "This node does not have the blob"},
        },
    )
    async def get_blob(hash_hex: str) -> Response:
        h = _blob_hash_or_400(hash_hex)
        data = await asyncio.to_thread(store.get, h)
        if data is None:
            raise HTTPException(404, f"no blob {h.hex()} on this node")
        return Response(data, media_type="application/octet-stream", headers=_blob_headers(h))

    @api.head(
        "/blobs/{hash_hex}",
        summary="Whether this node has a blob, and its size (Content-Length)",
        description=_BLOB_DOC + " 200 with Content-Length if present, 404 otherwise.",
        response_class=Response,
    )
    async def head_blob(hash_hex: str) -> Response:
        h = _blob_hash_or_400(hash_hex)
        size = store.size(h)
        if size is None:
            return Response(status_code=404)
        headers = {**_blob_headers(h), "content-length": str(size)}
        return Response(media_type="application/octet-stream", headers=headers)


def _blob_headers(h: bytes) -> dict[str, str]:
    # Content-addressed, so a blob never changes: caches may keep it for good.
    return {"etag": f'"{h.hex()}"', "cache-control": "public, max-age=31536000, immutable"}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(node: Node, stop: asyncio.Event) -> None:
    config = uvicorn.Config(
        build_app(node),
        host=node.config.api_host,
        port=node.config.api_port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task

"""``cifer bench ledger``: a real localnet under a fixed offered load, as CometBFT's QA does.

Four (or N) validator processes on loopback; one load generator offers pre-signed ~1 KiB
transfers at a fixed rate through the nodes' HTTP API (batched every 50 ms, each account
always through the same node so nonces arrive in order), and listens to node 0's block
stream. Latency of a tx = time its block was seen minus the time its batch was sent. The
generator shares the machine's 2 cores with the validators.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import websockets

from cifer.app.bench.consensus import TX_BYTES
from cifer.app.contracts.bank import send_msg
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet
from cifer.app.txbuilder import make_tx
from cifer.base.chain.types import sha256

TICK_S = 0.05


@dataclass
class LedgerBenchResult:
    validators: int
    rate: int
    duration_s: float
    offered: int
    accepted: int
    committed: int
    tx_per_s: float
    latencies_s: list[float]
    blocks: int
    rounds: list[int]
    window_s: float
    rejected_logs: dict[str, int] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    @property
    def blocks_per_min(self) -> float:
        return self.blocks * 60 / self.window_s if self.window_s else 0.0


def presign(n: int, accounts: int, chain_id: str) -> list[tuple[int, bytes]]:
    """(account, tx) pairs, round-robin over accounts with consecutive nonces."""
    keys = [account_key(i) for i in range(accounts)]
    nonces = [0] * accounts
    out = []
    for i in range(n):
        a = i % accounts
        to = keys[(a + 1) % accounts].address
        msgs = [send_msg(to, 1)]
        base = make_tx(keys[a], chain_id, nonces[a], msgs)
        memo = "x" * max(0, TX_BYTES - len(base) - 3)
        out.append((a, make_tx(keys[a], chain_id, nonces[a], msgs, memo=memo)))
        nonces[a] += 1
    return out


async def _drive(
    net: Localnet,
    txs: list[tuple[int, bytes]],
    rate: int,
    duration_s: float,
    drain_s: float,
    progress: Callable[[str], None] | None,
) -> LedgerBenchResult:
    n_nodes = len(net.spec.nodes)
    sent_at: dict[bytes, float] = {}
    committed_at: dict[bytes, float] = {}
    rounds: list[int] = []
    blocks_seen: list[float] = []
    rejected: dict[str, int] = {}
    accepted = 0
    stop_listen = asyncio.Event()

    async def listen() -> None:
        url = net.spec.nodes[0].api.replace("http://", "ws://") + "/ws/blocks"
        async with websockets.connect(url, max_size=None) as ws:
            while not stop_listen.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                ev = json.loads(raw)
                now = time.monotonic()
                blocks_seen.append(now)
                rounds.append(int(ev["round"]))
                for h in ev["txs"]:
                    committed_at.setdefault(bytes.fromhex(h), now)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.5)
    clients = [httpx.AsyncClient(base_url=n.api, timeout=30) for n in net.spec.nodes]

    async def post(node: int, batch: list[bytes], t: float) -> None:
        nonlocal accepted
        for tx in batch:
            sent_at[sha256(tx)] = t
        body = {"txs": [base64.b64encode(tx).decode() for tx in batch]}
        try:
            r = await clients[node].post("/txs/batch", json=body)
            for res in r.json()["results"]:
                if res["accepted"]:
                    accepted += 1
                else:
                    key = res["log"].split(":")[0][:60]
                    rejected[key] = rejected.get(key, 0) + 1
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            rejected[type(exc).__name__] = rejected.get(type(exc).__name__, 0) + len(batch)

    # one request in flight per node: a client must not reorder its own nonces
    queues: list[asyncio.Queue[tuple[list[bytes], float] | None]] = [
        asyncio.Queue() for _ in range(n_nodes)
    ]

    async def sender(node: int) -> None:
        while (item := await queues[node].get()) is not None:
            batch, t = item
            while not queues[node].empty():  # fold a backlog into one request
                nxt = queues[node].get_nowait()
                if nxt is None:
                    await post(node, batch, t)
                    return
                batch = batch + nxt[0]
            await post(node, batch, t)

    senders = [asyncio.create_task(sender(k)) for k in range(n_nodes)]
    t0 = time.monotonic()
    per_tick = rate * TICK_S
    owed, i, tick = 0.0, 0, 0
    while time.monotonic() - t0 < duration_s and i < len(txs):
        owed += per_tick
        k = int(owed)
        owed -= k
        batches: list[list[bytes]] = [[] for _ in range(n_nodes)]
        for a, tx in txs[i : i + k]:
            batches[a % n_nodes].append(tx)
        i += k
        now = time.monotonic()
        for node, b in enumerate(batches):
            if b:
                queues[node].put_nowait((b, now))
        tick += 1
        if progress and tick % 20 == 0:
            progress(
                f"{time.monotonic() - t0:.0f}/{duration_s:.0f} s: offered {i}, "
                f"committed {len(committed_at)}"
            )
        await asyncio.sleep(max(0.0, t0 + tick * TICK_S - time.monotonic()))
    offered_until = time.monotonic()
    for q in queues:
        q.put_nowait(None)
    await asyncio.gather(*senders)
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and len(committed_at) < accepted:
        await asyncio.sleep(0.2)
    stop_listen.set()
    await listener
    for c in clients:
        await c.aclose()
    lat = [committed_at[h] - s for h, s in sent_at.items() if h in committed_at]
    # throughput over the offered window: what the chain absorbed while load was applied
    window = offered_until - t0
    in_window = sum(1 for h, t in committed_at.items() if h in sent_at and t <= offered_until)
    blocks_in = [b for b in blocks_seen if t0 <= b <= offered_until]
    return LedgerBenchResult(
        validators=n_nodes,
        rate=rate,
        duration_s=duration_s,
        offered=i,
        accepted=accepted,
        committed=sum(1 for h in sent_at if h in committed_at),
        tx_per_s=in_window / window if window else 0.0,
        latencies_s=lat,
        blocks=len(blocks_in),
        rounds=rounds,
        window_s=window,
        rejected_logs=rejected,
    )


def run_ledger_bench(
    rate: int,
    duration_s: float,
    validators: int = 4,
    accounts: int = 1000,
    drain_s: float = 20.0,
    progress: Callable[[str], None] | None = None,
    workdir: Path | None = None,
) -> LedgerBenchResult:
    with TemporaryDirectory(prefix="cifer-bench-ledger-", dir=workdir) as tmp:
        d = Path(tmp) / "net"
        spec = init_localnet(d, validators, accounts=accounts, chain_id="cifer-bench")
        n = int(rate * duration_s) + rate
        if progress:
            progress(f"signing {n} transfers")
        txs = presign(n, accounts, spec.chain_id)
        with Localnet.open(d) as net:
            net.start(60)
            time.sleep(1.0)
            return asyncio.run(_drive(net, txs, rate, duration_s, drain_s, progress))


def summarize(r: LedgerBenchResult) -> dict[str, float]:
    return {
        "offered_tx_s": r.offered / r.window_s if r.window_s else 0.0,
        "committed_tx_s": r.tx_per_s,
        "p50_s": r.pct(0.50),
        "p95_s": r.pct(0.95),
        "max_s": max(r.latencies_s) if r.latencies_s else float("nan"),
        "blocks_per_min": r.blocks_per_min,
        "rounds_per_height": statistics.mean(x + 1 for x in r.rounds) if r.rounds else 0.0,
    }

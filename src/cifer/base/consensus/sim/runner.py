"""Deterministic multi-validator simulation with invariant checks.

N validators run in one process over a :class:`VirtualNetwork`. A chaos phase (drops,
duplicates, reordering, partitions) is followed by a calm phase (the "global stabilisation
time" of partial synchrony), after which heights must advance. Checked after every commit:

- agreement: no two honest validators commit different blocks at one height;
- state: honest validators at the same height have the same app hash;
- liveness: after the calm phase begins, every honest validator reaches the target height.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cifer.base.chain.abci import Application
from cifer.base.chain.executor import BlockExecutor
from cifer.base.chain.genesis import ConsensusParams, Genesis, GenesisValidator
from cifer.base.chain.kvstore import KVStoreApp
from cifer.base.consensus.privval import Signer
from cifer.base.consensus.replica import Committed, Output, Replica, Schedule, Send, Timer
from cifer.base.consensus.sim.byzantine import BEHAVIOURS, GARBAGE_TX, Rewriter
from cifer.base.consensus.sim.network import LinkModel, VirtualNetwork
from cifer.base.crypto.keys import PrivateKey
from cifer.base.store.blocks import BlockStore

SIM_TIMEOUTS = ConsensusParams(
    timeout_propose_ms=1000,
    timeout_propose_delta_ms=250,
    timeout_prevote_ms=500,
    timeout_prevote_delta_ms=250,
    timeout_precommit_ms=500,
    timeout_precommit_delta_ms=250,
    timeout_commit_ms=0,
)


@dataclass
class SimConfig:
    validators: int = 4
    byzantine: int = 1
    behaviours: tuple[str, ...] = ()  # empty: chosen from the seed
    heights: int = 10
    seed: int = 0
    chaos_ms: int = 10_000
    drop: float = 0.1
    duplicate: float = 0.05
    max_delay_ms: int = 300
    partitions: bool = True
    gossip_ms: int = 400
    tx_per_sec: int = 20  # kv txs injected per virtual second
    liveness_budget_ms: int = 0  # 0: derived from heights
    #: Negative control: split the honest validators into two sides, each with a twin of
    #: every Byzantine key, for the whole chaos phase. With >= 1/3 Byzantine power it forks.
    split_brain: bool = False
    app_factory: Callable[[], Application] | None = None
    genesis_factory: Callable[[list[PrivateKey]], Genesis] | None = None
    tx_factory: Callable[[random.Random, int], bytes] | None = None
    #: Which honest node receives tx number i (1-based); default: a random one per batch.
    #: Clients with nonces must stick to one node, or a later nonce can arrive first.
    tx_router: Callable[[int], int] | None = None
    tx_limit: int = 0  # stop injecting after this many txs (0: no limit)
    until_txs: int = 0  # also stop once honest node 0 committed this many txs (benchmarks)
    #: Called with the lowest honest committed height whenever it rises.
    on_progress: Callable[[int], None] | None = None


@dataclass
class SimResult:
    seed: int
    validators: int
    byzantine: list[str]
    heights: list[int]  # last committed height per honest node
    committed_txs: int  # txs in honest node 0's chain
    rounds: list[int]  # decided round per height, from honest node 0
    evidence: int  # evidence pieces committed (honest node 0's chain)
    txs: int
    virtual_ms: int
    messages: int
    dropped: int
    violations: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not any(v.startswith(("agreement", "app hash")) for v in self.violations)

    @property
    def live(self) -> bool:
        return not any(v.startswith("liveness") for v in self.violations)

    @property
    def ok(self) -> bool:
        return not self.violations


class _Node:
    def __init__(
        self, index: int, replica: Replica | None, rewriter: Rewriter | None, honest: bool
    ):
        self.index = index
        self.replica = replica
        self.rewriter = rewriter
        self.honest = honest

    def outputs(self, out: list[Output]) -> list[Output]:
        return self.rewriter.rewrite(out) if self.rewriter else out


def peer_id(i: int) -> bytes:
    return i.to_bytes(2, "big")


def _default_genesis(keys: list[PrivateKey]) -> Genesis:
    return Genesis(
        chain_id="cifer-sim",
        genesis_time_ms=0,
        validators=[GenesisValidator(k.public.raw.hex(), 10) for k in keys],
        consensus=SIM_TIMEOUTS,
    )


def _kv_tx(rng: random.Random, i: int) -> bytes:
    return b"k%d=v%d" % (rng.randrange(1000), i)


def run(cfg: SimConfig) -> SimResult:
    rng = random.Random(cfg.seed)
    n, f = cfg.validators, cfg.byzantine
    keys = [PrivateKey.from_secret(f"sim-validator-{i}") for i in range(n)]
    genesis = (cfg.genesis_factory or _default_genesis)(keys)
    byz_idx = sorted(rng.sample(range(n), f)) if f else []
    behaviours = list(cfg.behaviours) or [rng.choice(BEHAVIOURS) for _ in byz_idx]
    if cfg.split_brain:
        behaviours = ["twins"] * f
    if len(behaviours) < f:
        behaviours = (behaviours * f)[:f]

    # node list: one per validator, plus one extra node per twinned Byzantine key
    specs: list[tuple[int, str | None]] = [(i, None) for i in range(n)]
    for j, i in enumerate(byz_idx):
        specs[i] = (i, behaviours[j])
    specs += [(i, "twins") for j, i in enumerate(byz_idx) if behaviours[j] == "twins"]
    total = len(specs)
    net = VirtualNetwork(
        total,
        cfg.seed,
        chaos=LinkModel(cfg.drop, cfg.duplicate, 1, cfg.max_delay_ms),
        calm=LinkModel(0.0, cfg.duplicate, 1, min(cfg.max_delay_ms, 100)),
    )
    nodes: list[_Node] = []
    for idx, (key_i, beh) in enumerate(specs):
        honest = beh is None
        if beh == "silent":
            nodes.append(_Node(idx, None, None, False))
            continue
        app = cfg.app_factory() if cfg.app_factory else KVStoreApp()
        ex = BlockExecutor(genesis, app, BlockStore(":memory:"))
        signer = Signer(keys[key_i], genesis.chain_id)
        replica = Replica(ex, signer)
        rewriter = None
        if beh in ("equivocate", "double_vote", "random_votes", "invalid_block"):
            peers = [peer_id(j) for j in range(total) if j != idx]
            rewriter = Rewriter(
                beh, keys[key_i], genesis.chain_id, peers, random.Random(rng.random())
            )
        nodes.append(_Node(idx, replica, rewriter, honest))

    honest_nodes = [nd for nd in nodes if nd.honest]
    if cfg.split_brain:
        honest_ids = [nd.index for nd in honest_nodes]
        side_a = set(honest_ids[: len(honest_ids) // 2] + byz_idx)
        net.partition([side_a, set(range(total)) - side_a])

    committed: dict[int, dict[int, tuple[bytes, bytes]]] = {}
    violations: list[str] = []
    tx_count = 0
    make_tx = cfg.tx_factory or _kv_tx

    def emit(nd: _Node, outs: list[Output]) -> None:
        for o in nd.outputs(outs):
            if isinstance(o, Send):
                if o.to is None:
                    for j in range(total):
                        if j != nd.index:
                            net.send(nd.index, j, o.msg)
                else:
                    net.send(nd.index, int.from_bytes(o.to, "big"), o.msg)
            elif isinstance(o, Schedule):
                net.push(net.now + o.delay_ms, "timer", nd.index, o.timer)
            elif isinstance(o, Committed) and nd.honest:
                _check_commit(committed, nd.index, o, violations)
                if nd is honest_nodes[0]:
                    committed_txs[0] += o.n_txs
                if cfg.on_progress is not None and len(committed[o.height]) == len(honest_nodes):
                    cfg.on_progress(o.height)

    for nd in nodes:
        if nd.replica is not None:
            start = rng.randint(0, 200)
            net.push(start, "start", nd.index, None)
            net.push(start + rng.randint(1, cfg.gossip_ms), "gossip", nd.index, None)
    if cfg.partitions and not cfg.split_brain:
        t = rng.randint(0, cfg.chaos_ms // 2)
        while t < cfg.chaos_ms:
            net.push(t, "partition", -1, net.random_partition())
            t += rng.randint(500, 4000)
            net.push(min(t, cfg.chaos_ms), "heal", -1, None)
            t += rng.randint(500, 4000)
    net.push(cfg.chaos_ms, "calm", -1, None)
    if cfg.tx_per_sec > 0:
        net.push(rng.randint(0, 1000), "tx", -1, None)

    budget = cfg.liveness_budget_ms or (30_000 + cfg.heights * 5_000)
    deadline = cfg.chaos_ms + budget
    target = cfg.heights

    committed_txs = [0]

    def done() -> bool:
        if cfg.until_txs and committed_txs[0] >= cfg.until_txs:
            return True
        return all(nd.replica is not None and nd.replica.height > target for nd in honest_nodes)

    while not done():
        ev = net.pop()
        if ev is None or ev.time > deadline:
            break
        node: _Node | None = nodes[ev.node] if ev.node >= 0 else None
        if ev.kind == "deliver" and node is not None and node.replica is not None:
            src, msg = ev.payload
            emit(node, node.replica.on_message(peer_id(src), msg, net.now))
        elif ev.kind == "timer" and node is not None and node.replica is not None:
            timer: Timer = ev.payload
            emit(node, node.replica.on_timer(timer, net.now))
        elif ev.kind == "gossip" and node is not None and node.replica is not None:
            emit(node, node.replica.gossip(net.now))
            net.push(net.now + cfg.gossip_ms, "gossip", node.index, None)
        elif ev.kind == "start" and node is not None and node.replica is not None:
            emit(node, node.replica.start(net.now))
        elif ev.kind == "partition":
            net.partition(ev.payload)
        elif ev.kind == "heal":
            if not cfg.split_brain:
                net.heal()
        elif ev.kind == "calm":
            net.chaotic = False
            net.heal()
        elif ev.kind == "tx":
            target_node = rng.choice(honest_nodes)
            batch = max(1, cfg.tx_per_sec // 1000)  # one event per ms at most
            for _ in range(batch):
                if cfg.tx_limit and tx_count >= cfg.tx_limit:
                    break
                if cfg.tx_router is not None:
                    target_node = honest_nodes[cfg.tx_router(tx_count + 1) % len(honest_nodes)]
                if target_node.replica is None:
                    break
                tx_count += 1
                _, _, outs = target_node.replica.submit_tx(make_tx(rng, tx_count), net.now)
                emit(target_node, outs)
            if not cfg.tx_limit or tx_count < cfg.tx_limit:
                net.push(net.now + max(1, 1000 // cfg.tx_per_sec), "tx", -1, None)
        if violations and any(v.startswith("agreement") for v in violations):
            break  # safety is broken; nothing after this is meaningful

    heights = [nd.replica.executor.state.last_height for nd in honest_nodes if nd.replica]
    reached = min(heights, default=0) >= target or (
        cfg.until_txs > 0 and committed_txs[0] >= cfg.until_txs
    )
    if not any(v.startswith("agreement") for v in violations) and not reached:
        violations.append(
            f"liveness: honest heights {heights} below target {target} "
            f"at t={net.now}ms ({budget}ms after calm)"
        )
    ref = honest_nodes[0].replica if honest_nodes else None
    rounds, evidence = [], 0
    if ref is not None:
        for h in range(1, ref.executor.state.last_height + 1):
            rounds.append(ref.decided_round.get(h, 0))
            block = ref.executor.blocks.load_block(h)
            evidence += len(block.evidence) if block else 0
            if block is not None and GARBAGE_TX in block.txs:
                violations.append(f"validity: height {h} committed a malformed tx")
    return SimResult(
        seed=cfg.seed,
        validators=n,
        byzantine=[f"{i}:{b}" for i, b in zip(byz_idx, behaviours, strict=False)],
        heights=heights,
        committed_txs=committed_txs[0],
        rounds=rounds,
        evidence=evidence,
        txs=tx_count,
        virtual_ms=net.now,
        messages=net.sent,
        dropped=net.dropped,
        violations=violations,
    )


def _check_commit(
    committed: dict[int, dict[int, tuple[bytes, bytes]]],
    node: int,
    c: Committed,
    violations: list[str],
) -> None:
    at = committed.setdefault(c.height, {})
    at[node] = (c.block_hash, c.app_hash)
    hashes = {bh for bh, _ in at.values()}
    if len(hashes) > 1:
        violations.append(f"agreement: height {c.height} has {len(hashes)} different blocks")
        return
    apps = {ah for _, ah in at.values()}
    if len(apps) > 1:
        violations.append(f"app hash: height {c.height} has {len(apps)} different app hashes")

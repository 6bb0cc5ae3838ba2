"""``cifer bench assets``: provenance queries and light-client proofs on a chain of N assets.

A chain is generated in process with real headers and signed commits
(:class:`~cifer.app.inproc_chain.InprocChain`, on disk): N ``RegisterAsset`` txs from 50
creators, ``per_block`` to a block, every author's signature checked on chain. Lineage is
shaped so queries have work to do: assets come in derived-from chains of ``depth`` (each
derives from the one before) and one in five also derives from a random earlier asset, so
early assets have many descendants; one in ten is co-authored 60/40.

Then, on the committed state, it times (medians over ``samples`` assets each):

* provenance: ancestors of the last asset of a chain (deepest lineage), descendants of a
  first asset, contributors and history; and all four together, as ``GET
  /assets/{id}/provenance`` runs them;
* proofs: building the Merkle proof of a registration record, and a light client from
  genesis verifying every header and commit up to the record and then the proof; and the
  proof alone for a light client that already trusts the headers.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from cifer.app.contracts.registry import (
    AssetMeta,
    AuthorShare,
    RegistryModule,
    asset_id_for,
    register_asset_msg,
    sign_authorship,
)
from cifer.app.genesis_builder import account_key, make_genesis
from cifer.app.inproc_chain import InprocChain
from cifer.app.state import StateOverlay
from cifer.app.txbuilder import make_tx
from cifer.base.chain.light import LightClient

CREATORS = 50


@dataclass
class AssetsBenchResult:
    assets: int
    blocks: int
    per_block: int
    depth: int
    build_s: float
    samples: int
    query_ms: dict[str, float] = field(default_factory=dict)
    ancestors_found: int = 0
    descendants_found: int = 0
    proof_build_ms: float = 0.0
    proof_only_ms: float = 0.0
    light_from_genesis_s: float = 0.0
    light_headers: int = 0
    light_signatures: int = 0

    @property
    def per_header_us(self) -> float:
        return 1e6 * self.light_from_genesis_s / max(1, self.light_headers)


def _txs(chain_id: str, n: int, depth: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Signed registrations and the asset ids they create, in order."""
    rng = np.random.default_rng(seed)
    keys = [account_key(i) for i in range(CREATORS)]
    nonces = [0] * CREATORS
    ids: list[bytes] = []
    txs: list[bytes] = []
    for i in range(n):
        c = i % CREATORS
        key = keys[c]
        content = i.to_bytes(8, "big") + b"cifer-bench-asset"
        digest = hashlib.sha256(content).digest()
        co = keys[(c + 1) % CREATORS]
        authors = (
            [AuthorShare(key.address, 6000), AuthorShare(co.address, 4000)]
            if i % 10 == 3
            else [AuthorShare(key.address, 10_000)]
        )
        parents: list[bytes] = []
        if i % depth:
            parents.append(ids[i - 1])
        if i >= depth and rng.random() < 0.2:
            extra = ids[int(rng.integers(0, i - 1))]
            if extra not in parents:
                parents.append(extra)
        sigs = [
            sign_authorship(
                k, chain_id, digest, "content", authors, owner=key.address, parents=parents
            )
            for k in ([key, co] if len(authors) == 2 else [key])
        ]
        msg = register_asset_msg(
            kind="content",
            content_hash=digest,
            meta=AssetMeta(name=f"work {i}", media_type="image/png", tags=[f"set{i % 20}"]),
            authors=authors,
            signatures=sigs,
            parents=parents,
        )
        txs.append(make_tx(key, chain_id, nonces[c], [msg]))
        nonces[c] += 1
        ids.append(asset_id_for(chain_id, digest))
    return txs, ids


def _bind(fn: Callable[[bytes], object], a: bytes) -> Callable[[], object]:
    return lambda: fn(a)


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run_assets_bench(
    assets: int = 10_000,
    per_block: int = 100,
    depth: int = 50,
    samples: int = 20,
    seed: int = 0,
    home: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> AssetsBenchResult:
    if assets < depth or depth < 2:
        raise ValueError("need assets >= depth >= 2")
    genesis = make_genesis("bench-assets", 4, [account_key(i).address for i in range(CREATORS)])
    with TemporaryDirectory(prefix="cifer-bench-assets-") as tmp:
        root = home or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        chain = InprocChain(genesis, root, invariant_interval=1_000_000)
        try:
            txs, ids = _txs(genesis.chain_id, assets, depth, seed)
            t0 = time.perf_counter()
            for start in range(0, len(txs), per_block):
                chain.commit_txs(txs[start : start + per_block], per_block)
                if on_progress:
                    on_progress(min(start + per_block, len(txs)), len(txs))
            chain.commit_block()  # the header after the last registration, for its proof
            build_s = time.perf_counter() - t0
            state = StateOverlay(chain.state_store)
            if RegistryModule.count(state) != assets:
                raise RuntimeError(
                    f"{RegistryModule.count(state)} of {assets} registrations committed"
                )
            res = AssetsBenchResult(
                assets=assets,
                blocks=chain.height,
                per_block=per_block,
                depth=depth,
                build_s=build_s,
                samples=samples,
            )
            rng = np.random.default_rng(seed + 1)
            chains = assets // depth
            deep = [ids[int(c) * depth + depth - 1] for c in rng.integers(0, chains, samples)]
            roots = [ids[int(c) * depth] for c in rng.integers(0, chains, samples)]
            anc = [len(RegistryModule.ancestors(state, a)) for a in deep]
            desc = [len(RegistryModule.descendants(state, a)) for a in roots]
            res.ancestors_found = int(statistics.median(anc))
            res.descendants_found = int(statistics.median(desc))

            store = chain.state_store

            def each(fn: Callable[[StateOverlay, bytes], object], pool: list[bytes]) -> float:
                # a fresh overlay per call, as each API request gets: no warm read cache
                return statistics.median(
                    _median_ms(_bind(lambda a: fn(StateOverlay(store), a), a), 3) for a in pool
                )

            R = RegistryModule
            res.query_ms = {
                "ancestors (deepest asset)": each(R.ancestors, deep),
                "descendants (a chain's root)": each(R.descendants, roots),
                "contributors": each(R.contributors, deep),
                "history": each(R.history, deep),
                "all four, as the API runs them (deepest asset)": each(
                    lambda st, a: (
                        R.ancestors(st, a),
                        R.descendants(st, a),
                        R.contributors(st, a),
                        R.history(st, a),
                    ),
                    deep,
                ),
            }
            # proofs: the last registration (the longest header chain to verify)
            target = ids[-1]
            rec = RegistryModule.record(state, target)
            assert rec is not None
            key = RegistryModule.record_key(target)
            res.proof_build_ms = _median_ms(lambda: chain.state_proof(key, rec.height), samples)
            proof = chain.state_proof(key, rec.height)
            blocks = chain.light_blocks(1, rec.height + 1)
            runs = []
            for _ in range(3):
                lc = LightClient(genesis.chain_id, genesis.validator_set())
                t0 = time.perf_counter()
                lc.verify_all(blocks)
                lc.verify_state(proof)
                runs.append(time.perf_counter() - t0)
            res.light_from_genesis_s = statistics.median(runs)
            res.light_headers = lc.stats.headers
            res.light_signatures = lc.stats.signatures
            res.proof_only_ms = _median_ms(lambda: lc.verify_state(proof), samples)
        finally:
            chain.close()
    return res

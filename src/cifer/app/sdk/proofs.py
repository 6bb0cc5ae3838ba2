"""Verify a state record against a node without trusting the node.

:func:`verify_record` is what ``cifer asset verify`` runs: it asks a node for the Merkle
proof of a state key's write and for the headers up to the one that commits to it, checks
the headers one by one from the genesis validator set (:class:`LightClient`), then checks
the proof against the verified header. The genesis document is the root of trust and must
come from somewhere other than the node being checked (the operator's genesis.json).

With a trust file, verified headers are remembered, so a later check only downloads and
verifies the headers decided since.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from cifer.base import encoding
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.light import LightBlock, LightClient, LightClientError, LightStats
from cifer.base.chain.proofs import ProofError, StateProof
from cifer.base.chain.types import Commit, Header, ValidationError, Validator, sha256
from cifer.base.encoding import EncodingError

#: Pause between polls while the header that commits to a record is not decided yet.
POLL_S: Final = 0.25


class VerificationError(RuntimeError):
    """The record could not be verified; the message names the failed check. ``stats`` is
    what had been checked before it failed."""

    def __init__(self, message: str, stats: LightStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats or LightStats()


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`verify_record` checked, for a person to read (:meth:`lines`)."""

    node: str
    chain_id: str
    key: bytes
    height: int  # the write's height
    value: bytes | None  # None: the record was deleted at ``height``
    header_height: int  # the header whose app hash commits to the write
    header_hash: bytes
    app_hash: bytes
    changeset_entries: int  # leaves of the changeset tree the proof climbs
    proof_depth: int
    genesis_validators: int
    genesis_validators_hash: bytes
    resumed_from: int  # trusted height before this run (0: verified from genesis)
    trusted_height: int  # trusted height after it
    stats: LightStats  # headers, commits, signatures, validator-set changes checked now
    seconds: float

    def lines(self) -> list[str]:
        s = self.stats
        value = (
            "deleted"
            if self.value is None
            else f"{len(self.value)} bytes, sha256 {sha256(self.value).hex()[:16]}..."
        )
        root = (
            f"genesis validator set {self.genesis_validators_hash.hex()[:16]}... "
            f"({self.genesis_validators} validators)"
            if self.resumed_from == 0
            else f"trust file (headers 1..{self.resumed_from} verified earlier from the "
            f"genesis validator set {self.genesis_validators_hash.hex()[:16]}...)"
        )
        headers = (
            f"{s.headers} headers ({self.resumed_from + 1}..{self.trusted_height}): chain id, "
            f"height, time and linkage of each; {s.commits} commits with {s.signatures} "
            f"signatures, each over > 2/3 of its set's power; "
            f"{s.validator_set_changes} validator-set changes checked against the signed "
            "hashes"
            if s.headers
            else f"no new headers (header {self.header_height} was already trusted)"
        )
        return [
            f"chain     {self.chain_id}, node {self.node}",
            f"record    key {self.key.hex()} written at height {self.height}: {value}",
            f"trusted   {root}",
            f"headers   {headers}",
            f"proof     Merkle path of {self.proof_depth} hashes over the {self.changeset_entries}"
            f" changes of block {self.height}, with the previous app hash, gives app hash "
            f"{self.app_hash.hex()[:16]}..., the one in header {self.header_height} "
            f"({self.header_hash.hex()[:16]}...)",
            f"result    VERIFIED in {self.seconds:.2f} s",
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "chain_id": self.chain_id,
            "key": self.key.hex(),
            "height": self.height,
            "value": None if self.value is None else self.value.hex(),
            "deleted": self.value is None,
            "header_height": self.header_height,
            "header_hash": self.header_hash.hex(),
            "app_hash": self.app_hash.hex(),
            "changeset_entries": self.changeset_entries,
            "proof_depth": self.proof_depth,
            "genesis_validators": self.genesis_validators,
            "genesis_validators_hash": self.genesis_validators_hash.hex(),
            "resumed_from": self.resumed_from,
            "trusted_height": self.trusted_height,
            "checked": asdict(self.stats),
            "seconds": self.seconds,
        }


def _get(http: httpx.Client, url: str, params: dict[str, Any]) -> httpx.Response:
    try:
        return http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise VerificationError(f"node unreachable at {url}: {exc}") from None


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:200]


def decode_light_block(item: dict[str, Any]) -> LightBlock:
    """One entry of ``GET /light/headers`` (raises VerificationError if malformed)."""
    try:
        header = encoding.decode(bytes.fromhex(item["header"]), Header)
        commit = encoding.decode(bytes.fromhex(item["commit"]), Commit)
        nv = item.get("next_validators")
        vals = (
            None
            if nv is None
            else [Validator(bytes.fromhex(v["pubkey"]), int(v["power"])) for v in nv]
        )
    except (KeyError, TypeError, ValueError) as exc:  # EncodingError is a ValueError
        raise VerificationError(f"node sent a malformed header entry: {exc}") from None
    return LightBlock(header, commit, vals)


def fetch_light_blocks(
    http: httpx.Client, node_url: str, start: int, end: int
) -> Iterator[LightBlock]:
    """Headers ``start..end`` from ``GET /light/headers``, page by page (unverified)."""
    url = f"{node_url.rstrip('/')}/light/headers"
    while start <= end:
        r = _get(http, url, {"from": start, "to": end})
        if r.status_code != 200:
            raise VerificationError(f"node refused headers {start}..{end}: {_detail(r)}")
        items = r.json().get("headers") or []
        if not items:
            raise VerificationError(f"node returned no headers from {start}")
        for item in items:
            yield decode_light_block(item)
        start = int(items[-1]["height"]) + 1


def fetch_state_proof(
    http: httpx.Client, node_url: str, key: bytes, height: int | None, wait_s: float
) -> StateProof:
    """The node's proof of ``key``'s write at ``height`` (latest if None), unverified;
    waits up to ``wait_s`` for the header after the write to be decided."""
    url = f"{node_url.rstrip('/')}/proofs/state"
    params: dict[str, Any] = {"key": key.hex()}
    if height is not None:
        params["height"] = height
    deadline = time.monotonic() + wait_s
    while True:
        r = _get(http, url, params)
        if r.status_code == 409 and time.monotonic() < deadline:
            time.sleep(POLL_S)
            continue
        if r.status_code != 200:
            raise VerificationError(f"node has no proof: {_detail(r)}")
        try:
            proof = encoding.decode(bytes.fromhex(r.json()["proof"]), StateProof)
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"node sent a malformed proof: {exc}") from None
        if proof.key != key or (height is not None and proof.height != height):
            raise VerificationError(
                f"node answered with a proof for key {proof.key.hex()} at height "
                f"{proof.height}, not the one asked for"
            )
        return proof


def verify_record(
    node_url: str,
    key: bytes,
    height: int | None,
    genesis: Genesis,
    *,
    trust_file: Path | None = None,
    http: httpx.Client | None = None,
    wait_s: float = 10.0,
    timeout_s: float = 30.0,
) -> VerificationReport:
    """Verify what state ``key`` was set to at ``height`` (None: its latest write) on the
    chain of ``genesis``, trusting nothing the node says.

    Downloads the proof and the headers from the last trusted one (genesis, or the trust
    file's) to ``height + 1``, verifies them sequentially and checks the proof against
    header ``height + 1``. Raises :class:`VerificationError` naming the check that failed.
    """
    t0 = time.perf_counter()
    own = http is None
    client = httpx.Client(timeout=timeout_s) if http is None else http
    vset = genesis.validator_set()
    try:
        lc = (
            LightClient(genesis.chain_id, vset)
            if trust_file is None
            else LightClient.load(trust_file, genesis.chain_id, vset)
        )
    except LightClientError as exc:
        raise VerificationError(str(exc)) from None
    resumed_from = lc.height
    try:
        proof = fetch_state_proof(client, node_url, key, height, wait_s)
        target = proof.header_height
        header: Header | None = None
        try:
            if lc.height < target:
                for lb in fetch_light_blocks(client, node_url, lc.height + 1, target):
                    lc.verify(lb)
            elif lc.header(target) is None:
                header = next(iter(fetch_light_blocks(client, node_url, target, target))).header
            check = lc.verify_state(proof, header)
        except VerificationError as exc:
            raise VerificationError(str(exc), lc.stats) from None
        except (LightClientError, ProofError, ValidationError, EncodingError) as exc:
            raise VerificationError(str(exc), lc.stats) from None
    finally:
        if own:
            client.close()
        if trust_file is not None and lc.height > resumed_from:
            lc.save(trust_file)  # headers verified before a failure are still trusted
    return VerificationReport(
        node=node_url,
        chain_id=genesis.chain_id,
        key=key,
        height=check.height,
        value=check.value,
        header_height=check.header_height,
        header_hash=check.header_hash,
        app_hash=check.app_hash,
        changeset_entries=proof.proof.total,
        proof_depth=len(proof.proof.aunts),
        genesis_validators=len(vset),
        genesis_validators_hash=vset.hash,
        resumed_from=resumed_from,
        trusted_height=lc.height,
        stats=lc.stats,
        seconds=time.perf_counter() - t0,
    )

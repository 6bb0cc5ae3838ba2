"""A light client: trusts a chain's headers from its genesis validators alone.

Sequential verification (as CometBFT's light client does it, without skipping): knowing the
validator set of height ``n`` and the hash of header ``n-1``, header ``n`` is accepted iff

* its chain id and height are the expected ones and its time is after its parent's,
* its ``last_block_hash`` is the hash of the trusted header ``n-1`` (linkage),
* its ``validators_hash`` is the hash of the set of height ``n``,
* its commit carries precommits for its hash from more than 2/3 of that set's power,
  each signature checked against the set's public keys.

Header ``n`` also names the set of height ``n+1`` (``next_validators_hash``). When that
differs from the current set, whoever supplies the headers must supply the new list too,
and it is accepted only if it hashes to what the signed header says. Starting from the
genesis set, every accepted header is thus signed by a quorum of a set the previous quorum
vouched for, and a state or tx proof checked against one of them (:mod:`.proofs`) is as
good as the chain's own word for it.

Commits are checked the light way: signatures are verified until they prove a quorum, and
any further ones (which could only add power) are not, which roughly halves the cost on a
chain whose nodes record every precommit they saw. Every signer is still checked to be a
distinct member of the set.

A :class:`LightClient` can be saved to a trust file and loaded again, so that verifying a
later record only checks the headers decided since.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cifer.base import encoding
from cifer.base.chain.proofs import StateProof, TxProof, verify_state_proof, verify_tx_proof
from cifer.base.chain.types import (
    PRECOMMIT,
    Commit,
    Header,
    ValidationError,
    Validator,
    ValidatorSet,
    vote_sign_bytes,
)
from cifer.base.crypto.keys import verify
from cifer.base.encoding import Canonical, EncodingError

TRUST_FILE_VERSION: Final = 1


class LightClientError(ValidationError):
    """A header, commit, validator set or proof failed verification; the message says which
    height and which check."""


class LightBlock(Canonical, frozen=True):
    """What a node supplies per height: the header, the commit deciding it and, when the
    header announces a different set for the next height, that set's validators."""

    header: Header
    commit: Commit
    next_validators: list[Validator] | None = None


@dataclass
class LightStats:
    """What a light client has checked so far (for a report to the user)."""

    headers: int = 0
    commits: int = 0
    signatures: int = 0
    validator_set_changes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class StateCheck:
    """A state proof that verified, and the header it was checked against."""

    key: bytes
    height: int
    value: bytes | None  # None: the key was deleted at ``height``
    header_height: int
    header_hash: bytes
    app_hash: bytes


class TrustState(Canonical, frozen=True):
    """A light client's trusted state, as stored in its trust file."""

    version: int
    chain_id: str
    genesis_validators_hash: bytes
    last_header: Header | None
    validators: list[Validator]  # the set of height len(header_hashes) + 1
    header_hashes: list[bytes]  # hash of trusted header h at index h - 1


class LightClient:
    """Verifies headers from height 1 on, given the chain id and genesis validator set.

    Feed it :class:`LightBlock` s in height order with :meth:`verify` (or
    :meth:`verify_all`); then :meth:`verify_state` and :meth:`verify_tx` check proofs
    against the trusted headers. Every error is a :class:`LightClientError` or
    :class:`~cifer.base.chain.proofs.ProofError` naming the failed check.
    """

    def __init__(self, chain_id: str, genesis_validators: ValidatorSet) -> None:
        if not chain_id:
            raise ValueError("chain_id must not be empty")
        self.chain_id = chain_id
        self.genesis_validators_hash = genesis_validators.hash
        self._vset = genesis_validators  # set of height self.height + 1
        self._hashes: list[bytes] = []
        self._last: Header | None = None
        self._headers: dict[int, Header] = {}  # headers verified in this session
        self.stats = LightStats()

    # ------------------------------------------------------------------ state

    @property
    def height(self) -> int:
        """Height of the last trusted header (0: only genesis is trusted)."""
        return len(self._hashes)

    @property
    def validators(self) -> ValidatorSet:
        """The validator set of the next header to verify (``height + 1``)."""
        return self._vset

    def header_hash(self, height: int) -> bytes:
        if not 1 <= height <= self.height:
            raise LightClientError(
                f"header {height} is not trusted (trusted headers: 1..{self.height})"
            )
        return self._hashes[height - 1]

    def header(self, height: int) -> Header | None:
        """A trusted header, if it was verified in this session (a loaded trust file keeps
        only hashes)."""
        return self._headers.get(height)

    # ------------------------------------------------------------------ headers

    def verify(self, block: LightBlock) -> Header:
        """Verify the header at ``height + 1`` and trust it; raises LightClientError."""
        t0 = time.perf_counter()
        h = block.header
        n = self.height + 1
        if h.chain_id != self.chain_id:
            raise LightClientError(
                f"header {h.height} is for chain {h.chain_id[:64]!r}, expected {self.chain_id!r}"
            )
        if h.height != n:
            raise LightClientError(f"expected header {n}, got header {h.height}")
        parent = self._hashes[-1] if self._hashes else b""
        if h.last_block_hash != parent:
            raise LightClientError(
                f"header {n} does not link to trusted header {n - 1}: last_block_hash "
                f"{h.last_block_hash.hex()[:16]}..., trusted hash {parent.hex()[:16]}..."
            )
        if self._last is not None and h.time_ms <= self._last.time_ms:
            raise LightClientError(f"header {n} time is not after header {n - 1}'s")
        vset = self._vset
        if h.validators_hash != vset.hash:
            raise LightClientError(
                f"header {n} names validator set {h.validators_hash.hex()[:16]}..., "
                f"the trusted set for height {n} is {vset.hash.hex()[:16]}..."
            )
        block_hash = h.hash()
        sigs = self._verify_commit(vset, h, block_hash, block.commit)
        next_vset = vset
        if h.next_validators_hash != vset.hash:
            if block.next_validators is None:
                raise LightClientError(
                    f"header {n} announces a new validator set for height {n + 1} "
                    "but its validators were not supplied"
                )
            try:
                next_vset = ValidatorSet(block.next_validators)
            except ValidationError as exc:
                raise LightClientError(
                    f"validator set supplied for height {n + 1}: {exc}"
                ) from None
            if next_vset.hash != h.next_validators_hash:
                raise LightClientError(
                    f"validators supplied for height {n + 1} hash to "
                    f"{next_vset.hash.hex()[:16]}..., header {n} commits to "
                    f"{h.next_validators_hash.hex()[:16]}..."
                )
            self.stats.validator_set_changes += 1
        self._hashes.append(block_hash)
        self._headers[n] = h
        self._last = h
        self._vset = next_vset
        s = self.stats
        s.headers += 1
        s.commits += 1
        s.signatures += sigs
        s.seconds += time.perf_counter() - t0
        return h

    def verify_all(self, blocks: Iterable[LightBlock]) -> int:
        """Verify blocks in order; returns how many were verified."""
        n = 0
        for b in blocks:
            self.verify(b)
            n += 1
        return n

    def _verify_commit(self, vset: ValidatorSet, h: Header, block_hash: bytes, c: Commit) -> int:
        """> 2/3 of ``vset``'s power precommitted ``block_hash``; returns signatures checked."""
        if c.height != h.height:
            raise LightClientError(f"commit for header {h.height} is for height {c.height}")
        if c.block_hash != block_hash:
            raise LightClientError(f"commit for header {h.height} is for a different block")
        need = vset.quorum()
        msg = vote_sign_bytes(self.chain_id, PRECOMMIT, c.height, c.round, block_hash)
        seen: set[bytes] = set()
        power = checked = 0
        for cs in c.signatures:
            v = vset.get(cs.validator)
            if v is None:
                raise LightClientError(
                    f"commit for header {h.height} is signed by {cs.validator.hex()}, "
                    "not a validator of that height"
                )
            if cs.validator in seen:
                raise LightClientError(
                    f"commit for header {h.height} has two signatures from {cs.validator.hex()}"
                )
            seen.add(cs.validator)
            if power >= need:
                continue  # quorum proven; further signatures add nothing to trust
            if not verify(v.pubkey, msg, cs.signature):
                raise LightClientError(
                    f"commit for header {h.height} has an invalid signature from "
                    f"{cs.validator.hex()} (forged, or signed for another chain or block)"
                )
            checked += 1
            power += v.power
        if power < need:
            raise LightClientError(
                f"commit for header {h.height} has {power} of {vset.total_power} voting power, "
                f"needs more than 2/3 ({need})"
            )
        return checked

    # ------------------------------------------------------------------ proofs

    def _trusted_header(self, height: int, header: Header | None) -> Header:
        want = self.header_hash(height)
        if header is None:
            header = self._headers.get(height)
            if header is None:
                raise LightClientError(
                    f"header {height} is trusted by hash only (from a trust file); pass it"
                )
        elif header.hash() != want:
            raise LightClientError(f"header supplied for height {height} is not the trusted one")
        return header

    def verify_state(self, proof: StateProof, header: Header | None = None) -> StateCheck:
        """Check a state proof against trusted header ``proof.height + 1``.

        ``header`` is that header if this session did not verify it itself (it is checked
        against the trusted hash). Raises LightClientError or ProofError.
        """
        hh = proof.header_height
        if hh > self.height:
            raise LightClientError(
                f"a proof for height {proof.height} needs header {hh}; trusted headers end "
                f"at {self.height}"
            )
        trusted = self._trusted_header(hh, header)
        verify_state_proof(proof, trusted.app_hash)
        # Redundant with the hash chain, but a cheap second check with a plainer message.
        prev = self._headers.get(proof.height)
        if prev is not None and prev.app_hash != proof.prev_app_hash:
            raise LightClientError(
                f"state proof's previous app hash is not the one header {proof.height} carries"
            )
        return StateCheck(
            key=proof.key,
            height=proof.height,
            value=None if proof.deleted else proof.value,
            header_height=hh,
            header_hash=self._hashes[hh - 1],
            app_hash=trusted.app_hash,
        )

    def verify_tx(self, proof: TxProof, header: Header | None = None) -> Header:
        """Check a tx inclusion proof against trusted header ``proof.height``."""
        trusted = self._trusted_header(proof.height, header)
        verify_tx_proof(proof, trusted)
        return trusted

    # ------------------------------------------------------------------ trust file

    def trust_state(self) -> TrustState:
        return TrustState(
            version=TRUST_FILE_VERSION,
            chain_id=self.chain_id,
            genesis_validators_hash=self.genesis_validators_hash,
            last_header=self._last,
            validators=list(self._vset.validators),
            header_hashes=list(self._hashes),
        )

    @classmethod
    def from_trust_state(
        cls, state: TrustState, chain_id: str, genesis_validators: ValidatorSet
    ) -> LightClient:
        """Resume from ``state``; it must belong to this chain id and genesis set."""
        if state.version != TRUST_FILE_VERSION:
            raise LightClientError(f"trust file version {state.version} is not supported")
        if state.chain_id != chain_id or state.genesis_validators_hash != genesis_validators.hash:
            raise LightClientError(
                f"trust file is for chain {state.chain_id!r} with another genesis validator set"
                if state.chain_id != chain_id
                else "trust file was made from another genesis validator set"
            )
        last = state.last_header
        n = len(state.header_hashes)
        try:
            vset = ValidatorSet(state.validators)
        except ValidationError as exc:
            raise LightClientError(f"trust file validator set: {exc}") from None
        consistent = (
            vset.hash == genesis_validators.hash
            if last is None
            else last.height == n
            and last.hash() == state.header_hashes[-1]
            and last.next_validators_hash == vset.hash
        )
        if (last is None) != (n == 0) or not consistent:
            raise LightClientError("trust file is inconsistent (its last header does not match)")
        lc = cls(chain_id, genesis_validators)
        lc._hashes = list(state.header_hashes)
        lc._last = last
        lc._vset = vset
        if last is not None:
            lc._headers[last.height] = last
        return lc

    def save(self, path: Path) -> None:
        """Write the trust file atomically (a crash leaves the old one or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(encoding.encode(self.trust_state()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, chain_id: str, genesis_validators: ValidatorSet) -> LightClient:
        """Resume from a trust file, or start from genesis if there is none yet."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(chain_id, genesis_validators)
        try:
            state = encoding.decode(data, TrustState, max_bytes=max(len(data), 1))
        except EncodingError as exc:
            raise LightClientError(f"trust file {path} is unreadable: {exc}") from None
        return cls.from_trust_state(state, chain_id, genesis_validators)


__all__ = [
    "LightBlock",
    "LightClient",
    "LightClientError",
    "LightStats",
    "StateCheck",
    "TrustState",
]

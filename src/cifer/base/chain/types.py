"""Ledger data types: transactions, votes, proposals, blocks, commits, evidence, validators.

Everything here is canonical-encoded (see :mod:`cifer.base.encoding`); hashes and signatures
are over those bytes, each prefixed with a domain tag so a signature for one kind of object
can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from cifer.base import encoding
from cifer.base.crypto import merkle
from cifer.base.crypto.keys import ADDRESS_LEN, PUBKEY_LEN, SIGNATURE_LEN, address_bytes, verify
from cifer.base.crypto.multisig import MultisigPolicy, verify_multisig
from cifer.base.encoding import Canonical, EncodingError

HASH_LEN: Final = 32
NIL: Final = b""  # block hash of a nil vote

PREVOTE: Final = 1
PRECOMMIT: Final = 2
PROPOSAL: Final = 32

MAX_TX_BYTES: Final = 64 * 1024
MAX_MSGS_PER_TX: Final = 64
MAX_MEMO_BYTES: Final = 2048


class ValidationError(ValueError):
    """An object is well-formed but violates a rule (bad signature, wrong chain, ...)."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --------------------------------------------------------------------------- transactions


class AnyMsg(Canonical, frozen=True):
    """A module message: ``type`` names it (e.g. ``bank/Send``), ``value`` is its encoding."""

    type: str
    value: bytes


class TxBody(Canonical, frozen=True):
    chain_id: str
    signer: bytes  # address of the account that pays the fee and owns the nonce
    nonce: int
    fee: int  # ucif
    msgs: list[AnyMsg]
    memo: str


class TxSignature(Canonical, frozen=True):
    pubkey: bytes
    signature: bytes


class SignedTx(Canonical, frozen=True):
    body: TxBody
    signatures: list[TxSignature]
    multisig: MultisigPolicy | None = None  # set iff body.signer is a multisig account

    def sign_bytes(self) -> bytes:
        return tx_sign_bytes(self.body)

    def to_bytes(self) -> bytes:
        return encoding.encode(self)

    def hash(self) -> bytes:
        return sha256(self.to_bytes())


def tx_sign_bytes(body: TxBody) -> bytes:
    return b"cifer/tx/v1" + encoding.encode(body)


def decode_tx(data: bytes) -> SignedTx:
    """Decode and statelessly validate a transaction; raise with a reason on bad input."""
    tx = encoding.decode(data, SignedTx, max_bytes=MAX_TX_BYTES)
    body = tx.body
    if len(body.signer) != ADDRESS_LEN:
        raise ValidationError(f"tx signer must be a {ADDRESS_LEN}-byte address")
    if body.nonce < 0 or body.fee < 0:
        raise ValidationError("tx nonce and fee must be non-negative")
    if not body.msgs:
        raise ValidationError("tx has no messages")
    if len(body.msgs) > MAX_MSGS_PER_TX:
        raise ValidationError(f"tx has {len(body.msgs)} messages, limit is {MAX_MSGS_PER_TX}")
    if len(body.memo.encode()) > MAX_MEMO_BYTES:
        raise ValidationError(f"tx memo exceeds {MAX_MEMO_BYTES} bytes")
    return tx


def verify_tx_signatures(tx: SignedTx) -> None:
    """Check the tx is signed by its signer (single key or multisig policy)."""
    msg = tx.sign_bytes()
    if tx.multisig is None:
        if len(tx.signatures) != 1:
            raise ValidationError(f"single-key tx needs 1 signature, got {len(tx.signatures)}")
        s = tx.signatures[0]
        if len(s.pubkey) != PUBKEY_LEN or address_bytes(s.pubkey) != tx.body.signer:
            raise ValidationError("tx public key does not match the signer address")
        if not verify(s.pubkey, msg, s.signature):
            raise ValidationError("invalid tx signature")
        return
    try:
        tx.multisig.validate()  # before .address, which assumes a well-formed policy
    except ValueError as exc:
        raise ValidationError(f"invalid multisig policy: {exc}") from None
    if tx.multisig.address != tx.body.signer:
        raise ValidationError("multisig policy does not match the signer address")
    try:
        verify_multisig(tx.multisig, msg, [(s.pubkey, s.signature) for s in tx.signatures])
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


# --------------------------------------------------------------------------- votes


class Vote(Canonical, frozen=True):
    type: int  # PREVOTE or PRECOMMIT
    height: int
    round: int
    block_hash: bytes  # NIL for a nil vote
    validator: bytes  # address
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(chain_id, self.type, self.height, self.round, self.block_hash)

    def is_nil(self) -> bool:
        return self.block_hash == NIL


class _VoteDoc(Canonical, frozen=True):
    chain_id: str
    type: int
    height: int
    round: int
    block_hash: bytes


def vote_sign_bytes(chain_id: str, typ: int, height: int, round: int, block_hash: bytes) -> bytes:
    return b"cifer/vote/v1" + encoding.encode(_VoteDoc(chain_id, typ, height, round, block_hash))


class Proposal(Canonical, frozen=True):
    height: int
    round: int
    pol_round: int  # -1 if none
    block_hash: bytes
    proposer: bytes
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id, self.height, self.round, self.pol_round, self.block_hash
        )


class _ProposalDoc(Canonical, frozen=True):
    chain_id: str
    type: int
    height: int
    round: int
    pol_round: int
    block_hash: bytes


def proposal_sign_bytes(
    chain_id: str, height: int, round: int, pol_round: int, block_hash: bytes
) -> bytes:
    doc = _ProposalDoc(chain_id, PROPOSAL, height, round, pol_round, block_hash)
    return b"cifer/proposal/v1" + encoding.encode(doc)


# --------------------------------------------------------------------------- validators


class Validator(Canonical, frozen=True):
    pubkey: bytes
    power: int

    @property
    def address(self) -> bytes:
        return address_bytes(self.pubkey)


class ValidatorSet:
    """An ordered validator set (by address) with power lookups and a stable hash."""

    __slots__ = ("_by_addr", "hash", "total_power", "validators")

    def __init__(self, validators: Sequence[Validator]) -> None:
        for v in validators:  # before sorting: the address of a malformed key is undefined
            if len(v.pubkey) != PUBKEY_LEN:
                raise ValidationError("validator public keys must be 32 bytes")
            if v.power < 0:
                raise ValidationError("validator power cannot be negative")
        vals = sorted((v for v in validators if v.power > 0), key=lambda v: v.address)
        if not vals:
            raise ValidationError("validator set is empty")
        addrs = [v.address for v in vals]
        if len(set(addrs)) != len(addrs):
            raise ValidationError("duplicate validator in set")
        self.validators: tuple[Validator, ...] = tuple(vals)
        self._by_addr = {v.address: v for v in vals}
        self.total_power = sum(v.power for v in vals)
        self.hash = merkle.root([encoding.encode(v) for v in vals])

    def __len__(self) -> int:
        return len(self.validators)

    def __contains__(self, address: object) -> bool:
        return address in self._by_addr

    def get(self, address: bytes) -> Validator | None:
        return self._by_addr.get(address)

    def power(self, address: bytes) -> int:
        v = self._by_addr.get(address)
        return v.power if v else 0

    def quorum(self) -> int:
        """Smallest power strictly above 2/3 of the total."""
        return self.total_power * 2 // 3 + 1

    def one_third_plus(self) -> int:
        """Smallest power strictly above 1/3 of the total (f+1)."""
        return self.total_power // 3 + 1

    def max_faulty_power(self) -> int:
        """Largest Byzantine power the set tolerates (N >= 3f+1 by power)."""
        return (self.total_power - 1) // 3

    def verify_commit(self, chain_id: str, block_hash: bytes, commit: Commit) -> None:
        """Check ``commit`` carries > 2/3 power of valid precommits for ``block_hash``."""
        if commit.block_hash != block_hash:
            raise ValidationError("commit is for a different block")
        seen: set[bytes] = set()
        power = 0
        msg_cache: bytes | None = None
        for cs in commit.signatures:
            v = self._by_addr.get(cs.validator)
            if v is None:
                raise ValidationError(f"commit signer {cs.validator.hex()} is not a validator")
            if cs.validator in seen:
                raise ValidationError(f"commit has two signatures from {cs.validator.hex()}")
            if msg_cache is None:
                msg_cache = vote_sign_bytes(
                    chain_id, PRECOMMIT, commit.height, commit.round, block_hash
                )
            if not verify(v.pubkey, msg_cache, cs.signature):
                raise ValidationError(f"invalid commit signature from {cs.validator.hex()}")
            seen.add(cs.validator)
            power += v.power
        if power < self.quorum():
            raise ValidationError(
                f"commit has {power} of {self.total_power} power, needs {self.quorum()}"
            )


# --------------------------------------------------------------------------- blocks


class CommitSig(Canonical, frozen=True):
    validator: bytes
    signature: bytes


class Commit(Canonical, frozen=True):
    """> 2/3 of precommits for one block at (height, round)."""

    height: int
    round: int
    block_hash: bytes
    signatures: list[CommitSig]

    def hash(self) -> bytes:
        return sha256(encoding.encode(self))


class DuplicateVoteEvidence(Canonical, frozen=True):
    """Two votes by one validator for different blocks at the same (height, round, type)."""

    vote_a: Vote
    vote_b: Vote

    @property
    def validator(self) -> bytes:
        return self.vote_a.validator

    @property
    def height(self) -> int:
        return self.vote_a.height

    def hash(self) -> bytes:
        return sha256(encoding.encode(self))

    def offense(self) -> bytes:
        """One offense per validator and height: more vote pairs add no further punishment."""
        return self.vote_a.validator + self.vote_a.height.to_bytes(8, "big")

    def verify(self, chain_id: str, vset: ValidatorSet) -> None:
        a, b = self.vote_a, self.vote_b
        if (a.type, a.height, a.round, a.validator) != (b.type, b.height, b.round, b.validator):
            raise ValidationError("evidence votes are not for the same height/round/type/signer")
        if a.block_hash >= b.block_hash:
            raise ValidationError("evidence votes must differ and be ordered by block hash")
        v = vset.get(a.validator)
        if v is None:
            raise ValidationError("evidence names a validator not in the set at that height")
        for vote in (a, b):
            if not verify(v.pubkey, vote.sign_bytes(chain_id), vote.signature):
                raise ValidationError("evidence carries an invalid vote signature")


def make_evidence(a: Vote, b: Vote) -> DuplicateVoteEvidence:
    return (
        DuplicateVoteEvidence(a, b) if a.block_hash < b.block_hash else DuplicateVoteEvidence(b, a)
    )


class Header(Canonical, frozen=True):
    chain_id: str
    height: int
    time_ms: int  # proposer's clock, only checked to be monotonic; state never reads it
    last_block_hash: bytes
    last_commit_hash: bytes
    data_hash: bytes
    app_hash: bytes  # state after the previous block
    last_results_hash: bytes  # Merkle root of the previous block's tx results
    validators_hash: bytes
    next_validators_hash: bytes
    evidence_hash: bytes
    proposer: bytes

    def hash(self) -> bytes:
        return sha256(b"cifer/header/v1" + encoding.encode(self))


class Block(Canonical, frozen=True):
    header: Header
    txs: list[bytes]
    last_commit: Commit | None  # None only at height 1
    evidence: list[DuplicateVoteEvidence]

    def hash(self) -> bytes:
        return self.header.hash()

    def to_bytes(self) -> bytes:
        return encoding.encode(self)


def data_hash(txs: list[bytes]) -> bytes:
    return merkle.root(txs)


def evidence_hash(evidence: list[DuplicateVoteEvidence]) -> bytes:
    return merkle.root([encoding.encode(e) for e in evidence])


def commit_hash(commit: Commit | None) -> bytes:
    return b"" if commit is None else commit.hash()


def prove_tx(block: Block, index: int) -> merkle.MerkleProof:
    """Inclusion proof of ``block.txs[index]`` against ``block.header.data_hash``."""
    return merkle.prove(block.txs, index)


def verify_tx_proof(header: Header, tx: bytes, proof: merkle.MerkleProof) -> bool:
    """True iff ``tx`` is in the block with this header (check the header's commit separately)."""
    return proof.verify(header.data_hash, tx)


def check_block_shape(block: Block) -> None:
    """Stateless consistency of a block: its hashes match its contents."""
    h = block.header
    if h.height < 1:
        raise ValidationError("block height must be >= 1")
    if h.data_hash != data_hash(block.txs):
        raise ValidationError("block data hash does not match its transactions")
    if h.evidence_hash != evidence_hash(block.evidence):
        raise ValidationError("block evidence hash does not match its evidence")
    if h.last_commit_hash != commit_hash(block.last_commit):
        raise ValidationError("block last-commit hash does not match its last commit")
    if (h.height == 1) != (block.last_commit is None):
        raise ValidationError("only the first block may omit the last commit")
    if block.last_commit is not None and block.last_commit.height != h.height - 1:
        raise ValidationError("last commit is not for the previous height")


__all__ = [
    "HASH_LEN",
    "NIL",
    "PRECOMMIT",
    "PREVOTE",
    "SIGNATURE_LEN",
    "AnyMsg",
    "Block",
    "Commit",
    "CommitSig",
    "DuplicateVoteEvidence",
    "EncodingError",
    "Header",
    "Proposal",
    "SignedTx",
    "TxBody",
    "TxSignature",
    "ValidationError",
    "Validator",
    "ValidatorSet",
    "Vote",
]

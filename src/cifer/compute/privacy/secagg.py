"""Secure aggregation by masking: Bonawitz et al. (CCS 2017) with the sparse neighbour graph of
SecAgg+ (Bell et al., CCS 2020). Pure protocol: no I/O, no clock; every message is a
:class:`~cifer.base.encoding.Canonical` struct that travels as a chain transaction or a blob,
so no client ever connects to another.

Phases (each party derives the same sets from what the chain included before each deadline):

0. :class:`AdvertiseKeys`: a mask-agreement key, a share-sending key and one share-receiving
   key per neighbour (all X25519, fresh per round). Admitted senders form A.
1. :class:`ShareKeys`: the self-mask seed b_i and the mask secret key are Shamir-shared to each
   neighbour in A; each neighbour's pair of shares is encrypted (ChaCha20-Poly1305 under
   HKDF(X25519(send_i, recv_{j<-i})), associated data = job, round, dealer, holder) and
   published with a SHA-256 commitment per share and one to b_i. Admitted dealers form S.
2. :class:`MaskedInput`: y_i = q(x_i) + PRG(b_i) + sum_{j in N(i) & S} +-PRG(s_ij) mod 2^m,
   + when i < j in roster order, so pairwise masks cancel in the sum. Senders form M.
3. :class:`UnmaskShares`: each survivor reveals, per neighbour it holds shares of, the seed
   share if the neighbour is in M and the key share if it is in S \\ M, never both. The server
   (every validator, deterministically) reconstructs, removes the self-masks of M and the
   masks survivors added towards S \\ M, and returns the exact integer sum of M's levels.

Decisions:

* Group Z_{2^m} (default m = 32, 16 <= m <= 64), not a prime field: numpy's unsigned
  wraparound is reduction mod 2^32 / 2^64 for free, so masking is one vectorised add per mask
  and PRG words are uniform without rejection sampling. Fixed point (:mod:`.quantize`): levels
  in [-L, L], L = 2^(value_bits-1) - 1; parameters refuse n * L >= 2^(m-1), so the sum of n
  levels cannot wrap.
* Graph: Harary graph H(k, n) (circulant, offsets 1..k/2, plus n/2 when k is odd) on positions
  permuted by SHA-256 of the public round seed, as in SecAgg+. H(k, n) is k-regular and
  k-connected; k = n - 1 is the complete graph, i.e. classic SecAgg. No k-regular graph
  exists when k and n are both odd, so that is refused.
* Threshold t (2 <= t <= k) is both the Shamir threshold and the collusion threshold. Every
  secret has k holders (the dealer does not hold its own share), so any set of at most k - t
  dropouts (before or after sending masked input, or never advertising) leaves every client t
  live holders: :func:`max_dropouts` = k - t. Those dropouts plus up to t - 1 colluding
  clients remove at most k - 1 vertices of a k-connected graph, so the honest survivors stay
  connected and validators learn only their total. Beyond that (more dropouts, or a proposer
  censoring masked inputs) honest survivors may split into groups whose sums are revealed;
  each group has at least two members, since a survivor's seed needs t live holders and at
  most t - 1 of them collude.
* Per-neighbour receive keys (k + 2 public keys per client, not 2): a holder whose share does
  not decrypt or does not match its commitment publishes a :class:`ShareComplaint` with the
  secret receive key of that one channel; anyone checks it against the advertised public key,
  re-derives the channel key and decides (:func:`judge_complaint`). Revealing it exposes only
  the share the accused dealer sent, never other dealers' shares.
* One nonce per channel key (zero): keys are fresh per round and bound to job, round, dealer
  and holder by HKDF, and encrypt one message.
* Commitments are SHA-256 over a domain-separated header and the value; shares are uniform
  521-bit field elements and b_i is 32 random bytes, so the hashes hide them. The mask public
  key is the commitment to the mask secret key.
* The chain replaces Bonawitz's consistency round and signatures: every party sees the same
  A, S and M, and the chain checks that a transaction's signer is the message's sender.
* Reveals come only from survivors (M). An honest client reveals once per round and refuses
  (:class:`PrivacyRefusal`) when |M| < t or when M induces a disconnected subgraph (the server
  would learn per-component sums). Revealing a survivor's key share is refused at admission.

Cost: a client expands k + 1 masks (O(k d) keystream words, ChaCha20 via OpenSSL, see
:mod:`.prg`); the server keeps only the running sum of masked inputs and expands one mask per
survivor plus one per (dropped client, surviving neighbour) pair. Admitting an advert costs one
X25519 operation per advertised key (the low-order probe).

Attribution (:class:`Verdict`): a revealed share that does not match the dealer's published
commitment blames the revealer (and is skipped; unmasking goes on if t valid shares remain);
valid shares that reconstruct a seed or key inconsistent with the dealer's seed commitment or
mask public key blame the dealer; a bad ciphertext or share blames the dealer and a
complaint that does not hold up blames the complainant.

Security model and limits: validators and the proposer are honest-but-curious about inputs
(they follow consensus) and may collude with up to t - 1 clients. A malicious client can make
a round fail (attributed, so the next round excludes it) or submit any vector in the group:
there are no range proofs, so robust rules are impossible under secagg and clipping is the
client's own duty (DESIGN.md: norm-clipped averaging).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from cifer.base.encoding import Canonical, EncodingError, decode, encode
from cifer.compute.privacy import shamir
from cifer.compute.privacy.prg import MAX_BITS, MIN_BITS, MaskExpander, group_dtype, reduce
from cifer.compute.privacy.quantize import MAX_VALUE_BITS, Quantizer, from_group, to_group

DOMAIN: Final = "cifer/secagg/v1"
KEY_BYTES: Final = 32
HASH_BYTES: Final = 32
MAX_ID_BYTES: Final = 64

Key32 = Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
ShareValue = Annotated[
    bytes, msgspec.Meta(min_length=shamir.SHARE_BYTES, max_length=shamir.SHARE_BYTES)
]
ClientId = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_ID_BYTES)]
ShareKind = Literal["seed", "key"]

# Verdict offences
TAMPERED_SHARE: Final = "tampered_share"  # revealer: share does not match its commitment
INCONSISTENT_DEALER: Final = "inconsistent_dealer"  # dealer: shares reconstruct a wrong secret
BAD_CIPHERTEXT: Final = "bad_ciphertext"  # dealer: the channel key does not open it
BAD_SHARE: Final = "bad_share"  # dealer: opens, but malformed or not matching its commitments
FALSE_COMPLAINT: Final = "false_complaint"  # complainant: the share was fine, or the key wrong


# ---------------------------------------------------------------------------- errors


class SecAggError(ValueError):
    """Secure aggregation refused something; the message says what and why."""


class ParamsError(SecAggError):
    """Job or round parameters are unusable."""


class MessageError(SecAggError):
    """A protocol message is malformed or out of place; ``sender`` is who sent it."""

    def __init__(self, sender: bytes | None, reason: str) -> None:
        who = f"from {sender.hex()}: " if sender is not None else ""
        super().__init__(f"{who}{reason}")
        self.sender = sender
        self.reason = reason


class PrivacyRefusal(SecAggError):
    """A client refuses a step that would expose more than the sum of a connected group."""


class UnmaskFailed(SecAggError):
    """The sum cannot be unmasked; ``verdicts`` names any client found misbehaving."""

    def __init__(self, reason: str, verdicts: Sequence[Verdict] = ()) -> None:
        blamed = "; ".join(f"{v.offence}: {v.client.hex()}" for v in verdicts)
        super().__init__(reason + (f" [{blamed}]" if blamed else ""))
        self.reason = reason
        self.verdicts = tuple(verdicts)


class InsufficientShares(UnmaskFailed):
    """Too few valid shares reached the server to reconstruct a dealer's secret."""

    def __init__(
        self,
        dealer: bytes,
        kind: ShareKind,
        available: int,
        needed: int,
        short: int,
        verdicts: Sequence[Verdict] = (),
    ) -> None:
        what = "self-mask seed" if kind == "seed" else "mask key"
        others = f" ({short - 1} other dealers also short)" if short > 1 else ""
        super().__init__(
            f"cannot reconstruct the {what} of {dealer.hex()}: {available} valid shares "
            f"available, {needed} needed{others}",
            verdicts,
        )
        self.dealer = dealer
        self.kind: ShareKind = kind
        self.available = available
        self.needed = needed


# ---------------------------------------------------------------------------- messages


class SecAggParams(Canonical, frozen=True):
    """Per-job parameters, stated on chain. The clip range is in millionths (no floats)."""

    threshold: int
    degree: int
    modulus_bits: int = 32
    value_bits: int = 16
    clip_micros: int = 1_000_000

    def check(self, n: int) -> None:
        """Refuse parameters that cannot work for ``n`` clients, saying why."""
        t, k = self.threshold, self.degree
        if n < 3:
            raise ParamsError(f"secure aggregation needs at least 3 clients, got {n}")
        if not 1 <= k <= n - 1:
            raise ParamsError(f"neighbour degree must be 1..{n - 1} for {n} clients, got {k}")
        if k % 2 == 1 and n % 2 == 1:
            raise ParamsError(f"no {k}-regular graph on {n} clients (both odd); use degree {k + 1}")
        if not 2 <= t <= k:
            raise ParamsError(
                f"threshold must be 2..{k} (degree {k}), got {t}: threshold 1 gives every "
                "neighbour the secret"
            )
        if not MIN_BITS <= self.modulus_bits <= MAX_BITS:
            raise ParamsError(
                f"modulus must be 2^{MIN_BITS}..2^{MAX_BITS}, got 2^{self.modulus_bits}"
            )
        if not 2 <= self.value_bits <= MAX_VALUE_BITS:
            raise ParamsError(f"value bits must be 2..{MAX_VALUE_BITS}, got {self.value_bits}")
        if self.clip_micros < 1:
            raise ParamsError(f"clip range must be positive, got {self.clip_micros} micros")
        level = (1 << (self.value_bits - 1)) - 1
        if n * level >= 1 << (self.modulus_bits - 1):
            raise ParamsError(
                f"a sum of {n} values of {self.value_bits} bits can wrap modulo "
                f"2^{self.modulus_bits}: need {n} * {level} < 2^{self.modulus_bits - 1}; "
                "use fewer value bits or a larger modulus"
            )

    def quantizer(self) -> Quantizer:
        return Quantizer(self.clip_micros / 1_000_000, self.value_bits)


class AdvertiseKeys(Canonical, frozen=True):
    """Phase 0. ``recv_pks[p]`` receives shares from the p-th neighbour in roster order."""

    job_id: int
    round: int
    sender: ClientId
    mask_pk: Key32
    send_pk: Key32
    recv_pks: tuple[Key32, ...]


class EncryptedShare(Canonical, frozen=True):
    """One holder's encrypted :class:`SharePayload`, with commitments to both shares."""

    holder: ClientId
    seed_commitment: Key32
    key_commitment: Key32
    ciphertext: bytes


class ShareKeys(Canonical, frozen=True):
    """Phase 1: shares for every advertised neighbour, in roster order."""

    job_id: int
    round: int
    sender: ClientId
    seed_commitment: Key32  # to the self-mask seed b_i
    shares: tuple[EncryptedShare, ...]


class SharePayload(Canonical, frozen=True):
    """Plaintext of an :class:`EncryptedShare`: y-values at the holder's x."""

    seed_share: ShareValue
    key_share: ShareValue


class MaskedInput(Canonical, frozen=True):
    """Phase 2: the masked vector as little-endian words of Z_{2^modulus_bits}."""

    job_id: int
    round: int
    sender: ClientId
    modulus_bits: int
    length: int
    data: bytes


class RevealedShare(Canonical, frozen=True):
    dealer: ClientId
    kind: ShareKind
    share: ShareValue


class UnmaskShares(Canonical, frozen=True):
    """Phase 3: a survivor's shares, one per dealer it holds valid shares of."""

    job_id: int
    round: int
    sender: ClientId
    shares: tuple[RevealedShare, ...]


class ShareComplaint(Canonical, frozen=True):
    """A holder's proof material against a dealer: its receive key for that one channel."""

    job_id: int
    round: int
    sender: ClientId
    dealer: ClientId
    recv_sk: Key32


class Verdict(Canonical, frozen=True):
    """Who misbehaved, how (one of the offence constants), and the evidence in words."""

    client: ClientId
    offence: str
    detail: str


_PAYLOAD_BYTES: Final = len(
    encode(SharePayload(bytes(shamir.SHARE_BYTES), bytes(shamir.SHARE_BYTES)))
)
CIPHERTEXT_BYTES: Final = _PAYLOAD_BYTES + 16
_NONCE: Final = bytes(12)
# Probe for admission: X25519 with a low-order point gives the all-zero secret, which OpenSSL
# refuses; finding out at admission keeps every party's view of A the same.
_PROBE: Final = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"cifer/secagg/probe").digest())


# ---------------------------------------------------------------------------- graph


def harary_degree(n: int) -> int:
    """SecAgg+'s logarithmic degree for ``n`` clients: the even k >= 2 log2 n, at most n-1."""
    if n < 3:
        raise ParamsError(f"secure aggregation needs at least 3 clients, got {n}")
    k = max(2, 2 * (n - 1).bit_length())  # 2 * ceil(log2 n), even
    return min(k, n - 1)


def neighbour_graph(n: int, degree: int, seed: bytes) -> tuple[tuple[int, ...], ...]:
    """Sorted neighbour lists of the Harary graph H(degree, n) with positions permuted by
    ``seed``: deterministic, symmetric, ``degree``-regular and ``degree``-connected."""
    if not 1 <= degree <= n - 1:
        raise ParamsError(f"neighbour degree must be 1..{n - 1} for {n} clients, got {degree}")
    if degree % 2 == 1 and n % 2 == 1:
        raise ParamsError(f"no {degree}-regular graph on {n} clients (both odd)")
    order = sorted(
        range(n), key=lambda i: hashlib.sha256(seed + b"/graph/" + i.to_bytes(4, "big")).digest()
    )
    offsets = list(range(1, degree // 2 + 1))
    if degree % 2 == 1:
        offsets.append(n // 2)
    adj: list[set[int]] = [set() for _ in range(n)]
    for p in range(n):
        for off in offsets:
            a, b = order[p], order[(p + off) % n]
            adj[a].add(b)
            adj[b].add(a)
    return tuple(tuple(sorted(s)) for s in adj)


def max_dropouts(params: SecAggParams) -> int:
    """Dropouts tolerated whichever clients drop: each secret has ``degree`` holders and needs
    ``threshold`` of them (see the module docstring)."""
    return params.degree - params.threshold


def _connected(nodes: Set[int], neighbours: Sequence[Sequence[int]]) -> bool:
    if not nodes:
        return True
    start = min(nodes)
    seen, stack = {start}, [start]
    while stack:
        for j in neighbours[stack.pop()]:
            if j in nodes and j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == len(nodes)


# ---------------------------------------------------------------------------- round


class SecAggRound:
    """One round's public configuration, derived identically by every client and validator.

    ``roster`` is the job's clients in canonical (strictly ascending) order, ``seed`` a public
    32-byte round seed (e.g. a block hash) and ``length`` the update vector's length."""

    def __init__(
        self,
        params: SecAggParams,
        *,
        job_id: int,
        round: int,
        seed: bytes,
        roster: Sequence[bytes],
        length: int,
    ) -> None:
        roster = tuple(bytes(c) for c in roster)
        if any(not 1 <= len(c) <= MAX_ID_BYTES for c in roster):
            raise ParamsError(f"client ids must be 1..{MAX_ID_BYTES} bytes")
        if any(a >= b for a, b in itertools.pairwise(roster)):
            raise ParamsError("roster must be strictly ascending (the canonical order)")
        if len(seed) != 32:
            raise ParamsError(f"round seed must be 32 bytes, got {len(seed)}")
        if length < 1:
            raise ParamsError(f"vector length must be positive, got {length}")
        params.check(len(roster))
        self.params = params
        self.job_id = job_id
        self.round = round
        self.seed = bytes(seed)
        self.roster = roster
        self.length = length
        self.index = {c: i for i, c in enumerate(roster)}
        self.neighbours = neighbour_graph(len(roster), params.degree, seed)
        # position of j in i's neighbour list, for recv_pks
        self.slot = [{j: p for p, j in enumerate(nb)} for nb in self.neighbours]
        self.dtype = group_dtype(params.modulus_bits)

    @property
    def n(self) -> int:
        return len(self.roster)

    @property
    def threshold(self) -> int:
        return self.params.threshold

    def max_dropouts(self) -> int:
        return max_dropouts(self.params)

    def quantizer(self) -> Quantizer:
        return self.params.quantizer()

    def info(self, label: str, *parts: bytes | str) -> bytes:
        """Domain-separated binding of a derivation to this job and round."""
        return encode([DOMAIN, label, self.job_id, self.round, *parts])

    def sender_index(self, msg: Any) -> int:
        """Check a message's job, round and sender; return the sender's roster index."""
        sender = bytes(msg.sender)
        if msg.job_id != self.job_id or msg.round != self.round:
            raise MessageError(
                sender,
                f"{type(msg).__name__} is for job {msg.job_id} round {msg.round}, "
                f"expected job {self.job_id} round {self.round}",
            )
        i = self.index.get(sender)
        if i is None:
            raise MessageError(sender, "sender is not in the job's roster")
        return i

    def lookup(self, client: bytes, sender: bytes | None) -> int:
        i = self.index.get(bytes(client))
        if i is None:
            raise MessageError(sender, f"client {bytes(client).hex()} is not in the roster")
        return i


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _channel(rnd: SecAggRound, shared: bytes, dealer: int, holder: int) -> ChaCha20Poly1305:
    d, h = rnd.roster[dealer], rnd.roster[holder]
    return ChaCha20Poly1305(_hkdf(shared, rnd.info("channel", d, h)))


def _share_ad(rnd: SecAggRound, dealer: int, holder: int) -> bytes:
    return rnd.info("share-ad", rnd.roster[dealer], rnd.roster[holder])


def _pair_seed(rnd: SecAggRound, shared: bytes, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return _hkdf(shared, rnd.info("mask", rnd.roster[lo], rnd.roster[hi]))


def share_commitment(
    rnd: SecAggRound, dealer: int, holder: int, kind: ShareKind, share: bytes
) -> bytes:
    """What a dealer publishes for one share; a revealed share must hash to it."""
    header = rnd.info("share", rnd.roster[dealer], rnd.roster[holder], kind)
    return hashlib.sha256(header + share).digest()


def seed_commitment(rnd: SecAggRound, dealer: int, seed: bytes) -> bytes:
    return hashlib.sha256(rnd.info("seed", rnd.roster[dealer]) + seed).digest()


def _public(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


# ---------------------------------------------------------------------------- admission


def check_advertise(rnd: SecAggRound, msg: AdvertiseKeys, *, probe_keys: bool = True) -> int:
    """Admission of a phase-0 message (check_tx); returns the sender's index. Probing every
    key for a low-order point costs one X25519 operation per key; a client reading adverts
    the chain already admitted skips it and meets a bad key, if ever, where it uses one."""
    i = rnd.sender_index(msg)
    sender = bytes(msg.sender)
    if len(msg.recv_pks) != len(rnd.neighbours[i]):
        raise MessageError(
            sender,
            f"advertises {len(msg.recv_pks)} receive keys, has {len(rnd.neighbours[i])} neighbours",
        )
    for name, pk in [("mask", msg.mask_pk), ("send", msg.send_pk)] + [
        (f"receive[{p}]", k) for p, k in enumerate(msg.recv_pks)
    ]:
        if len(pk) != KEY_BYTES:
            raise MessageError(sender, f"{name} key must be {KEY_BYTES} bytes, got {len(pk)}")
        if not probe_keys:
            continue
        try:
            _PROBE.exchange(X25519PublicKey.from_public_bytes(pk))
        except ValueError:
            raise MessageError(sender, f"{name} key is a low-order X25519 point") from None
    return i


def collect_adverts(
    rnd: SecAggRound, msgs: Iterable[AdvertiseKeys], *, probe_keys: bool = True
) -> dict[int, AdvertiseKeys]:
    out: dict[int, AdvertiseKeys] = {}
    for msg in msgs:
        i = check_advertise(rnd, msg, probe_keys=probe_keys)
        if i in out:
            raise MessageError(bytes(msg.sender), "duplicate AdvertiseKeys")
        out[i] = msg
    return out


def share_holders(rnd: SecAggRound, dealer: int, advertised: Set[int]) -> list[int]:
    """Who holds ``dealer``'s shares: its advertised neighbours, in roster order."""
    return [j for j in rnd.neighbours[dealer] if j in advertised]


def check_share_keys(rnd: SecAggRound, adverts: Mapping[int, AdvertiseKeys], msg: ShareKeys) -> int:
    """Admission of a phase-1 message; returns the dealer's index."""
    i = rnd.sender_index(msg)
    sender = bytes(msg.sender)
    if i not in adverts:
        raise MessageError(sender, "dealer did not advertise keys this round")
    if len(msg.seed_commitment) != HASH_BYTES:
        raise MessageError(sender, f"seed commitment must be {HASH_BYTES} bytes")
    holders = share_holders(rnd, i, adverts.keys())
    if len(holders) < rnd.threshold:
        raise MessageError(
            sender,
            f"only {len(holders)} neighbours advertised keys, fewer than the threshold "
            f"{rnd.threshold}: the dealer's secrets could never be reconstructed",
        )
    want = [rnd.roster[j] for j in holders]
    got = [bytes(s.holder) for s in msg.shares]
    if got != want:
        raise MessageError(
            sender,
            f"shares go to {len(got)} holders; expected exactly the {len(want)} advertised "
            "neighbours in roster order",
        )
    for s in msg.shares:
        if len(s.seed_commitment) != HASH_BYTES or len(s.key_commitment) != HASH_BYTES:
            raise MessageError(sender, f"share commitments must be {HASH_BYTES} bytes")
        if len(s.ciphertext) != CIPHERTEXT_BYTES:
            raise MessageError(
                sender,
                f"ciphertext for {bytes(s.holder).hex()} is {len(s.ciphertext)} bytes, "
                f"expected {CIPHERTEXT_BYTES}",
            )
    return i


def collect_share_keys(
    rnd: SecAggRound, adverts: Mapping[int, AdvertiseKeys], msgs: Iterable[ShareKeys]
) -> dict[int, ShareKeys]:
    out: dict[int, ShareKeys] = {}
    for msg in msgs:
        i = check_share_keys(rnd, adverts, msg)
        if i in out:
            raise MessageError(bytes(msg.sender), "duplicate ShareKeys")
        out[i] = msg
    return out


def check_masked_input(
    rnd: SecAggRound, dealt: Set[int], msg: MaskedInput
) -> tuple[int, NDArray[Any]]:
    """Admission of a phase-2 message; returns the sender's index and its vector."""
    i = rnd.sender_index(msg)
    sender = bytes(msg.sender)
    bits = rnd.params.modulus_bits
    if msg.modulus_bits != bits:
        raise MessageError(
            sender, f"masked input is modulo 2^{msg.modulus_bits}, the job uses 2^{bits}"
        )
    if i not in dealt:
        raise MessageError(sender, "sender did not share its keys this round")
    if msg.length != rnd.length:
        raise MessageError(sender, f"vector length {msg.length}, the job uses {rnd.length}")
    itemsize = rnd.dtype.itemsize
    if len(msg.data) != rnd.length * itemsize:
        raise MessageError(
            sender,
            f"masked input holds {len(msg.data)} bytes, expected {rnd.length} x {itemsize}",
        )
    vec = np.frombuffer(msg.data, dtype=rnd.dtype.newbyteorder("<"))  # read-only view
    if bits not in (32, 64) and np.any(vec >> rnd.dtype.type(bits)):
        raise MessageError(sender, f"masked input has elements >= 2^{bits} (wrong modulus)")
    return i, vec


def check_unmask(
    rnd: SecAggRound,
    dealt: Mapping[int, ShareKeys],
    survivors: Set[int],
    msg: UnmaskShares,
) -> int:
    """Admission of a phase-3 message. Structural faults and a key share of a survivor are
    refused; a share that does not match its commitment is left to :meth:`SecAggServer.finish`
    to attribute."""
    r = rnd.sender_index(msg)
    sender = bytes(msg.sender)
    if r not in survivors:
        raise MessageError(sender, "only clients whose masked input was included may reveal")
    seen: set[int] = set()
    for s in msg.shares:
        d = rnd.lookup(s.dealer, sender)
        if d in seen:
            raise MessageError(sender, f"two shares for dealer {rnd.roster[d].hex()}")
        seen.add(d)
        if d not in dealt or _encrypted_share_for(rnd, dealt[d], r) is None:
            raise MessageError(sender, f"holds no share of {rnd.roster[d].hex()}")
        want: ShareKind = "seed" if d in survivors else "key"
        if s.kind != want:
            raise MessageError(
                sender,
                f"reveals the {s.kind} share of {rnd.roster[d].hex()}, which "
                + (
                    "survived: its mask key must never be revealed"
                    if d in survivors
                    else "dropped: only its mask key share may be revealed"
                ),
            )
        try:
            shamir.share_from_bytes(bytes(s.share))
        except shamir.ShamirError as exc:
            raise MessageError(
                sender, f"malformed share for {rnd.roster[d].hex()}: {exc}"
            ) from None
    return r


# ---------------------------------------------------------------------------- shares


class _BadShare(Exception):
    def __init__(self, offence: str, detail: str) -> None:
        super().__init__(detail)
        self.offence = offence
        self.detail = detail


def _open_share(
    rnd: SecAggRound,
    adverts: Mapping[int, AdvertiseKeys],
    dealer: int,
    holder: int,
    enc: EncryptedShare,
    recv_sk: X25519PrivateKey,
) -> tuple[int, int]:
    """Decrypt and check one share; raise :class:`_BadShare` (the dealer's fault) if not."""
    try:
        shared = recv_sk.exchange(X25519PublicKey.from_public_bytes(adverts[dealer].send_pk))
    except ValueError:
        raise _BadShare(BAD_CIPHERTEXT, "the dealer's send key is a low-order point") from None
    try:
        plain = _channel(rnd, shared, dealer, holder).decrypt(
            _NONCE, bytes(enc.ciphertext), _share_ad(rnd, dealer, holder)
        )
    except InvalidTag:
        raise _BadShare(BAD_CIPHERTEXT, "ciphertext does not open under the channel key") from None
    try:
        payload = decode(plain, SharePayload)
        ys = shamir.share_from_bytes(payload.seed_share), shamir.share_from_bytes(payload.key_share)
    except (EncodingError, shamir.ShamirError) as exc:
        raise _BadShare(BAD_SHARE, f"malformed share payload: {exc}") from None
    if share_commitment(rnd, dealer, holder, "seed", payload.seed_share) != enc.seed_commitment:
        raise _BadShare(BAD_SHARE, "seed share does not match the dealer's commitment")
    if share_commitment(rnd, dealer, holder, "key", payload.key_share) != enc.key_commitment:
        raise _BadShare(BAD_SHARE, "key share does not match the dealer's commitment")
    return ys


def _encrypted_share_for(rnd: SecAggRound, msg: ShareKeys, holder: int) -> EncryptedShare | None:
    """``holder``'s share in an admitted ShareKeys, whose holders ascend (binary search: the
    server looks up one per revealed share)."""
    hid = rnd.roster[holder]
    p = bisect.bisect_left(msg.shares, hid, key=lambda e: bytes(e.holder))
    return msg.shares[p] if p < len(msg.shares) and bytes(msg.shares[p].holder) == hid else None


def judge_complaint(
    rnd: SecAggRound,
    adverts: Mapping[int, AdvertiseKeys],
    dealt: Mapping[int, ShareKeys],
    complaint: ShareComplaint,
) -> Verdict:
    """Decide a complaint from public data alone: the dealer if the revealed channel opens to
    a bad share, the complainant if its key is not the advertised one or the share is fine."""
    h = rnd.sender_index(complaint)
    holder = bytes(complaint.sender)
    d = rnd.lookup(complaint.dealer, holder)
    if h not in adverts or d not in dealt:
        raise MessageError(holder, "complaint about a channel that was never set up")
    enc = _encrypted_share_for(rnd, dealt[d], h)
    if enc is None:
        raise MessageError(holder, f"{rnd.roster[d].hex()} dealt no share to the complainant")
    if len(complaint.recv_sk) != KEY_BYTES:
        raise MessageError(holder, f"receive key must be {KEY_BYTES} bytes")
    if _public(complaint.recv_sk) != adverts[h].recv_pks[rnd.slot[h][d]]:
        return Verdict(holder, FALSE_COMPLAINT, "revealed key is not the advertised receive key")
    sk = X25519PrivateKey.from_private_bytes(complaint.recv_sk)
    try:
        _open_share(rnd, adverts, d, h, enc, sk)
    except _BadShare as bad:
        return Verdict(rnd.roster[d], bad.offence, f"share for {holder.hex()}: {bad.detail}")
    return Verdict(holder, FALSE_COMPLAINT, "share opens and matches the dealer's commitments")


# ---------------------------------------------------------------------------- client


class SecAggClient:
    """One client's side of one round. Secrets are fresh per round and never leave this
    object except as Shamir shares; ``randbytes`` is injectable only for reproducible tests
    and simulations."""

    def __init__(
        self,
        rnd: SecAggRound,
        client_id: bytes,
        *,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        i = rnd.index.get(bytes(client_id))
        if i is None:
            raise SecAggError(f"client {bytes(client_id).hex()} is not in the job's roster")
        self.rnd = rnd
        self.index = i
        self.client_id = rnd.roster[i]
        self._rand = randbytes
        self._mask_sk = X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))
        self._send_sk = X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))
        self._recv_sk = {
            j: X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES)) for j in rnd.neighbours[i]
        }
        self._seed = randbytes(KEY_BYTES)
        self._advert: AdvertiseKeys | None = None
        self._adverts: dict[int, AdvertiseKeys] | None = None
        self._share_msg: ShareKeys | None = None
        self._dealt: dict[int, ShareKeys] | None = None
        self._held: dict[int, tuple[bytes, bytes]] = {}
        self._sent_input = False
        self._revealed = False

    def advertise(self) -> AdvertiseKeys:
        if self._advert is None:
            self._advert = AdvertiseKeys(
                self.rnd.job_id,
                self.rnd.round,
                self.client_id,
                self._mask_sk.public_key().public_bytes_raw(),
                self._send_sk.public_key().public_bytes_raw(),
                tuple(
                    self._recv_sk[j].public_key().public_bytes_raw()
                    for j in self.rnd.neighbours[self.index]
                ),
            )
        return self._advert

    def share_keys(self, adverts: Iterable[AdvertiseKeys]) -> ShareKeys:
        """Phase 1 from the chain's admitted adverts (which must include ours, unaltered)."""
        if self._advert is None:
            raise SecAggError("advertise keys before sharing them")
        if self._share_msg is not None:
            raise SecAggError("keys were already shared this round")
        rnd, i = self.rnd, self.index
        got = collect_adverts(rnd, adverts, probe_keys=False)
        if got.get(i) != self._advert:
            raise SecAggError("our own AdvertiseKeys is missing or altered")
        holders = share_holders(rnd, i, got.keys())
        if len(holders) < rnd.threshold:
            raise SecAggError(
                f"only {len(holders)} neighbours advertised keys; threshold is {rnd.threshold}"
            )
        xs = [j + 1 for j in holders]
        t = rnd.threshold
        seed_ys = shamir.split(int.from_bytes(self._seed, "big"), t, xs, self._rand)
        key_ys = shamir.split(
            int.from_bytes(self._mask_sk.private_bytes_raw(), "big"), t, xs, self._rand
        )
        shares = []
        for j, sy, ky in zip(holders, seed_ys, key_ys, strict=True):
            sb, kb = shamir.share_to_bytes(sy), shamir.share_to_bytes(ky)
            recv_pk = got[j].recv_pks[rnd.slot[j][i]]
            try:
                shared = self._send_sk.exchange(X25519PublicKey.from_public_bytes(recv_pk))
            except ValueError:
                raise MessageError(rnd.roster[j], "receive key is unusable") from None
            ct = _channel(rnd, shared, i, j).encrypt(
                _NONCE, encode(SharePayload(sb, kb)), _share_ad(rnd, i, j)
            )
            shares.append(
                EncryptedShare(
                    rnd.roster[j],
                    share_commitment(rnd, i, j, "seed", sb),
                    share_commitment(rnd, i, j, "key", kb),
                    ct,
                )
            )
        self._adverts = got
        self._share_msg = ShareKeys(
            rnd.job_id,
            rnd.round,
            self.client_id,
            seed_commitment(rnd, i, self._seed),
            tuple(shares),
        )
        return self._share_msg

    def receive_shares(self, share_keys: Iterable[ShareKeys]) -> list[ShareComplaint]:
        """Take the chain's admitted ShareKeys; keep our valid shares and return a complaint
        for each dealer whose share to us does not open or does not match its commitments."""
        if self._adverts is None or self._share_msg is None:
            raise SecAggError("share keys before receiving shares")
        if self._dealt is not None:
            raise SecAggError("shares were already received this round")
        rnd, i = self.rnd, self.index
        dealt = collect_share_keys(rnd, self._adverts, share_keys)
        if dealt.get(i) != self._share_msg:
            raise SecAggError("our own ShareKeys is missing or altered")
        complaints = []
        for d in rnd.neighbours[i]:
            if d not in dealt:
                continue
            enc = _encrypted_share_for(rnd, dealt[d], i)
            if enc is None:  # admission makes a dealer share to every advertised neighbour
                raise SecAggError(f"{rnd.roster[d].hex()} dealt us no share")
            try:
                sy, ky = _open_share(rnd, self._adverts, d, i, enc, self._recv_sk[d])
            except _BadShare:
                complaints.append(
                    ShareComplaint(
                        rnd.job_id,
                        rnd.round,
                        self.client_id,
                        rnd.roster[d],
                        self._recv_sk[d].private_bytes_raw(),
                    )
                )
                continue
            self._held[d] = (shamir.share_to_bytes(sy), shamir.share_to_bytes(ky))
        self._dealt = dealt
        return complaints

    def masked_input(self, levels: NDArray[Any]) -> MaskedInput:
        """Phase 2: mask our quantized ``levels`` (see :meth:`SecAggRound.quantizer`)."""
        if self._dealt is None or self._adverts is None:
            raise SecAggError("receive shares before sending masked input")
        if self._sent_input:
            raise SecAggError("masked input was already sent this round")
        rnd, i = self.rnd, self.index
        q = np.asarray(levels)
        if q.shape != (rnd.length,) or not np.issubdtype(q.dtype, np.integer):
            raise SecAggError(
                f"levels must be an integer vector of length {rnd.length}, got {q.dtype} {q.shape}"
            )
        lim = (1 << (rnd.params.value_bits - 1)) - 1
        if q.size and (int(q.max()) > lim or int(q.min()) < -lim):
            raise SecAggError(f"levels must lie in [-{lim}, {lim}] (quantize first)")
        peers = [j for j in rnd.neighbours[i] if j in self._dealt]
        if len(peers) < rnd.threshold:
            raise SecAggError(
                f"only {len(peers)} neighbours shared keys; threshold {rnd.threshold} cannot "
                "be met, so this round cannot be unmasked"
            )
        bits = rnd.params.modulus_bits
        y = to_group(q, bits)
        prg = MaskExpander(rnd.length, bits)
        prg.apply(y, self._seed)
        for j in peers:
            try:
                pk = X25519PublicKey.from_public_bytes(self._adverts[j].mask_pk)
                shared = self._mask_sk.exchange(pk)
            except ValueError:
                raise MessageError(rnd.roster[j], "mask key is unusable") from None
            prg.apply(y, _pair_seed(rnd, shared, i, j), subtract=i > j)
        reduce(y, bits)
        self._sent_input = True
        return MaskedInput(
            rnd.job_id,
            rnd.round,
            self.client_id,
            bits,
            rnd.length,
            y.astype(rnd.dtype.newbyteorder("<"), copy=False).tobytes(),
        )

    def unmask(self, survivors: Iterable[bytes]) -> UnmaskShares:
        """Phase 3 for the chain's set of included masked inputs: reveal, once, the seed share
        of each surviving neighbour and the key share of each dropped one."""
        if self._dealt is None or not self._sent_input:
            raise SecAggError("only a client that sent masked input reveals shares")
        if self._revealed:
            raise SecAggError("shares were already revealed this round (never reveal twice)")
        rnd, i = self.rnd, self.index
        alive = {rnd.lookup(c, None) for c in survivors}
        if not alive <= self._dealt.keys():
            raise SecAggError("a survivor did not share keys this round")
        if i not in alive:
            raise SecAggError("our masked input is not among the survivors")
        if len(alive) < rnd.threshold:
            raise PrivacyRefusal(
                f"only {len(alive)} survivors, fewer than the threshold {rnd.threshold}"
            )
        if not _connected(alive, rnd.neighbours):
            raise PrivacyRefusal(
                "survivors do not form a connected graph: unmasking would reveal the sums "
                "of smaller groups"
            )
        out = []
        for d in sorted(self._held):
            sb, kb = self._held[d]
            if d in alive:
                out.append(RevealedShare(rnd.roster[d], "seed", sb))
            else:
                out.append(RevealedShare(rnd.roster[d], "key", kb))
        self._revealed = True
        return UnmaskShares(rnd.job_id, rnd.round, self.client_id, tuple(out))


# ---------------------------------------------------------------------------- server


@dataclass(frozen=True)
class UnmaskResult:
    """The exact sum of the survivors' levels (signed integers) and who took part."""

    levels: NDArray[np.int64]
    survivors: tuple[bytes, ...]
    dropped: tuple[bytes, ...]  # shared keys but sent no masked input
    verdicts: tuple[Verdict, ...]

    def mean(self, quantizer: Quantizer) -> NDArray[np.float64]:
        """Dequantized average over survivors (outside consensus: floats)."""
        return quantizer.dequantize(self.levels) / len(self.survivors)


class SecAggServer:
    """The validators' side: admit messages phase by phase and unmask the sum. Integers
    only and deterministic: the same admitted messages give the same result in any order."""

    def __init__(self, rnd: SecAggRound) -> None:
        self.rnd = rnd
        self.adverts: dict[int, AdvertiseKeys] = {}
        self.dealt: dict[int, ShareKeys] = {}
        self.survivors: set[int] = set()  # senders of admitted masked input (M)
        self._total = np.zeros(rnd.length, dtype=rnd.dtype)  # their running sum
        self.reveals: dict[int, UnmaskShares] = {}
        self._phase = 0

    def _open(self, phase: int, sender: bytes) -> None:
        """Refuse a message of a phase that a later phase's first admitted message closed."""
        if phase < self._phase:
            raise MessageError(sender, f"phase {phase} is closed (round is in phase {self._phase})")

    def add_advertise(self, msg: AdvertiseKeys) -> None:
        self._open(0, bytes(msg.sender))
        i = check_advertise(self.rnd, msg)
        if i in self.adverts:
            raise MessageError(bytes(msg.sender), "duplicate AdvertiseKeys")
        self.adverts[i] = msg

    def add_share_keys(self, msg: ShareKeys) -> None:
        self._open(1, bytes(msg.sender))
        i = check_share_keys(self.rnd, self.adverts, msg)
        if i in self.dealt:
            raise MessageError(bytes(msg.sender), "duplicate ShareKeys")
        self.dealt[i] = msg
        self._phase = 1

    def add_masked_input(self, msg: MaskedInput) -> None:
        self._open(2, bytes(msg.sender))
        i, vec = check_masked_input(self.rnd, self.dealt.keys(), msg)
        if i in self.survivors:
            raise MessageError(bytes(msg.sender), "duplicate MaskedInput")
        self.survivors.add(i)
        self._total += vec  # addition mod 2^m commutes: the order of arrival does not matter
        self._phase = 2

    def add_unmask(self, msg: UnmaskShares) -> None:
        self._open(3, bytes(msg.sender))
        r = check_unmask(self.rnd, self.dealt, self.survivors, msg)
        if r in self.reveals:
            raise MessageError(bytes(msg.sender), "duplicate UnmaskShares")
        self.reveals[r] = msg
        self._phase = 3

    def judge(self, complaint: ShareComplaint) -> Verdict:
        return judge_complaint(self.rnd, self.adverts, self.dealt, complaint)

    def masked_sum(self) -> NDArray[Any]:
        """Sum of the admitted masked vectors in Z_{2^m}: what each validator recomputes."""
        return reduce(self._total.copy(), self.rnd.params.modulus_bits)

    def finish(self) -> UnmaskResult:
        """Reconstruct the secrets, remove every mask and return the exact sum of levels."""
        rnd = self.rnd
        t, bits = rnd.threshold, rnd.params.modulus_bits
        alive = set(self.survivors)
        dropped = sorted(set(self.dealt) - alive)
        if len(alive) < t:
            raise UnmaskFailed(f"only {len(alive)} masked inputs, fewer than threshold {t}")
        if not _connected(alive, rnd.neighbours):
            raise UnmaskFailed("survivors do not form a connected graph; refusing to unmask")
        verdicts: list[Verdict] = []
        points: dict[int, list[tuple[int, int]]] = {d: [] for d in self.dealt}
        for r in sorted(self.reveals):
            for s in self.reveals[r].shares:
                d = rnd.index[bytes(s.dealer)]
                enc = _encrypted_share_for(rnd, self.dealt[d], r)
                assert enc is not None  # check_unmask
                want = enc.seed_commitment if s.kind == "seed" else enc.key_commitment
                if share_commitment(rnd, d, r, s.kind, bytes(s.share)) != want:
                    verdicts.append(
                        Verdict(
                            rnd.roster[r],
                            TAMPERED_SHARE,
                            f"{s.kind} share of {rnd.roster[d].hex()} does not match the "
                            "dealer's commitment",
                        )
                    )
                    continue
                points[d].append((r + 1, shamir.share_from_bytes(bytes(s.share))))
        # secrets needed: survivors' seeds, and keys of dropped clients with a surviving
        # neighbour (no one else added a mask towards them)
        needed = sorted(alive) + [d for d in dropped if any(k in alive for k in rnd.neighbours[d])]
        needed.sort()
        short = [d for d in needed if len(points[d]) < t]
        if short:
            d = short[0]
            kind: ShareKind = "seed" if d in alive else "key"
            raise InsufficientShares(rnd.roster[d], kind, len(points[d]), t, len(short), verdicts)
        seeds: dict[int, bytes] = {}
        keys: dict[int, X25519PrivateKey] = {}
        blamed: list[Verdict] = []
        for d in needed:
            secret = shamir.reconstruct(sorted(points[d])[:t])
            raw = secret.to_bytes(KEY_BYTES, "big") if secret < 1 << (8 * KEY_BYTES) else None
            if d in alive:
                if raw is None or seed_commitment(rnd, d, raw) != self.dealt[d].seed_commitment:
                    blamed.append(
                        Verdict(
                            rnd.roster[d],
                            INCONSISTENT_DEALER,
                            "shares reconstruct a seed that does not match its commitment",
                        )
                    )
                else:
                    seeds[d] = raw
            else:
                if raw is None or _public(raw) != self.adverts[d].mask_pk:
                    blamed.append(
                        Verdict(
                            rnd.roster[d],
                            INCONSISTENT_DEALER,
                            "shares reconstruct a key that does not match its mask key",
                        )
                    )
                else:
                    keys[d] = X25519PrivateKey.from_private_bytes(raw)
        if blamed:
            raise UnmaskFailed(
                f"{len(blamed)} dealers' shares are inconsistent with their commitments",
                verdicts + blamed,
            )
        total = self.masked_sum()
        prg = MaskExpander(rnd.length, bits)
        for i in sorted(alive):
            prg.apply(total, seeds[i], subtract=True)
        for d in sorted(keys):
            for k in rnd.neighbours[d]:
                if k in alive:
                    pk = X25519PublicKey.from_public_bytes(self.adverts[k].mask_pk)
                    seed = _pair_seed(rnd, keys[d].exchange(pk), k, d)
                    prg.apply(total, seed, subtract=k < d)  # k added +mask when k < d
        reduce(total, bits)
        return UnmaskResult(
            from_group(total, bits),
            tuple(rnd.roster[i] for i in sorted(alive)),
            tuple(rnd.roster[d] for d in dropped),
            tuple(verdicts),
        )


def aggregate(
    rnd: SecAggRound,
    adverts: Iterable[AdvertiseKeys],
    share_keys: Iterable[ShareKeys],
    masked: Iterable[MaskedInput],
    reveals: Iterable[UnmaskShares],
) -> UnmaskResult:
    """One call for a validator's process_proposal: admit a round's messages and unmask."""
    server = SecAggServer(rnd)
    for a in adverts:
        server.add_advertise(a)
    for s in share_keys:
        server.add_share_keys(s)
    for m in masked:
        server.add_masked_input(m)
    for r in reveals:
        server.add_unmask(r)
    return server.finish()

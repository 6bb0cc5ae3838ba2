"""CKKS homomorphic aggregation (TenSEAL): validators add ciphertexts they can never decrypt.

Trust model (the one NVIDIA FLARE uses). The job's clients hold one CKKS secret key; the
validators hold only the public context (parameters and public key, no secret key) and
ciphertexts. One client generates the keys (:meth:`CkksKeys.generate`), publishes the public
context, and sends the secret context to every other client of the job encrypted to that
client's X25519 key (:meth:`CkksKeys.share`, :meth:`CkksKeys.open_share`). Clients encrypt
their updates (:func:`encrypt_update`), validators add them as they arrive
(:class:`CkksAccumulator`) and clients decrypt the aggregate (:func:`decrypt_aggregate`).
Because every client holds the secret key, clients must never be served another client's
upload, only aggregates and key checks (see below); single-key CKKS protects updates from
validators and outsiders, not from colluding clients. Threshold CKKS is a later goal.

Decisions
---------
* **Parameters.** Default ``N = 8192``, primes ``(60, 40, 60)`` bits, scale ``2^40`` (128-bit
  security: 160 of the 218 bits HE-standard allows at N = 8192). Aggregation needs no level:
  integer weights are applied by double-and-add (exact, see below), so the one 40-bit level
  exists only for the key check's plaintext mask; dropping the second level of the usual
  ``(60, 40, 40, 60)`` makes ciphertexts 25% smaller. Fresh encryption error is ~1e-9, far
  below float32 resolution of model updates. :meth:`CkksParams.validate` enforces the
  security bound, rescale-exact middle primes and headroom.
* **Context id.** ``SHA-256(canonical ContextInfo)`` where ``ContextInfo`` = scheme,
  parameters and SHA-256 of the serialized public context (public key included; no relin or
  Galois keys, which addition never needs: 364 kB instead of 1.9 MB). It goes on chain; it
  names the key pair, not just the parameters, so "encrypted under another context" is
  detected from a header before any TenSEAL parsing. A validator loading the public context
  checks its hash, that it carries no secret key, and that its SEAL parameter ids and scale
  are those of the declared parameters (so a context with another modulus is refused).
* **Key sharing.** Ephemeral X25519 to the recipient's key, HKDF-SHA256 (info binds both
  public keys), ChaCha20-Poly1305 with associated data binding scheme, job, context id and
  recipient; the key is fresh per share, so a fixed nonce is safe. The recipient checks that
  the secret context's public part hashes to the on-chain context id and that it decrypts
  what its public key encrypts, so a key holder cannot hand out a key that does not match
  the job.
* **Upload format.** ``"CIFCKKU1" | u32 header length | canonical UploadHeader | chunks``.
  The header (context id, job, round, sender, number of parameters, values per chunk, scale
  bits, byte size of each chunk) is checked before any ciphertext is parsed, which gives
  clear reasons for wrong contexts, rounds, senders, chunk counts and sizes. A safetensors
  blob (a plaintext update) is recognised and refused as such.
* **Chunks and canary slot.** A vector is cut into chunks of ``N/2 - 1`` values; the last
  slot of chunk k carries a public canary ``c(job, round, sender, k)`` in [-1, 1). After
  decryption the aggregate's canary slots must equal ``sum_i w_i c_ik``: a wrong-key,
  replayed, swapped or corrupted chunk turns that chunk into noise of size ~2^60 and is
  caught, and a client's update cannot be passed off as another's.
* **Streaming, weighted, exact.** :class:`CkksAccumulator` keeps one running sum and parses
  one upload at a time (memory: the sum plus one upload). Public integer weights (sample
  counts, reputation in ppm: the chain has no floats) multiply a ciphertext by
  double-and-add, which is exact modular arithmetic and consumes no level; clients divide
  by the total weight after decryption. Ciphertext addition is exact modular arithmetic, so
  the aggregate is independent of arrival order, and its serialization is byte-identical
  across validators running the same TenSEAL/SEAL build (tested): validators compare
  SHA-256 of :meth:`CkksAccumulator.result` in process_proposal. Across SEAL versions the
  compressed serialization may differ; the comparison would then have to decode both and
  compare the ciphertext coefficients, which are exact integers.
* **Key checks (attribution).** Validators cannot tell whether a ciphertext was made with
  the job's key: with the same parameters any key's ciphertexts load and add. So the
  accumulator keeps, per upload, the sum of its chunks (one ciphertext), and on request turns
  it into a key check: that sum times a plaintext mask keeping only the canary slot, plus
  fresh Gaussian "flooding" noise (std 2^12) in every other slot. A key holder decrypting
  it learns ``sum_k c_k`` (public) if every chunk was made under the job's key and was not
  altered, and noise of size ~2^60 otherwise. Binding the check to the data ciphertexts
  themselves (rather than to a separate canary ciphertext) means a sender cannot pass it
  with a right-key canary next to wrong-key data. The flooding matters: a plaintext mask
  cannot be encoded exactly, so without it the zeroed slots would still carry the data
  times a public rounding error of ~1e-10. A key check is made once and kept, so fresh
  floods of one upload cannot be averaged. :func:`check_keys` returns the senders whose key
  check fails. Key checks are not deterministic (fresh noise), so they are not consensus
  data; a client should take them from more than one validator before blaming a sender,
  because a lying validator could otherwise frame one.
* **Tampering.** A blob altered after the sender signed its hash is refused by
  :meth:`CkksAccumulator.add` (``expected_sha256``); one that matches the signed hash is the
  sender's own. Altered ciphertext bytes either fail to parse (refused, naming the sender)
  or decrypt to noise, which the aggregate's canaries detect and the key checks attribute.

What validators can check: the blob hash the sender signed, the header (context, job, round,
sender, sizes), that each chunk parses under the job's parameters at the fresh level and
scale, and the weight headroom. What they cannot check: which key made a ciphertext (key
holders do, with key checks), and the plaintext itself: under CKKS no robust rule or norm
clipping is possible, so the job's rule is (weighted) averaging and clipping happens on the
client (:mod:`cifer.compute.privacy.dp`). A key-holding client can encrypt anything,
including values past :data:`MAX_ABS_VALUE` that wrap the modulus and spoil the round: the
aggregate's canaries then fail, but its own key check may pass, so such a sender is not
attributed by this module (finding it, e.g. by decrypting sums of halves of the senders,
is left to the protocol).

Costs (measured on 2 CPU cores): a chunk of 4095 values is ~235 kB (58 bytes per
parameter, 14x float32), so an upload of 100k parameters is 5.9 MB and of 1M is 58 MB (under
the blob store's default 64 MiB cap, but not by much). Per client at 100k: encrypt ~0.1-0.2
s; validator add ~8 ms unweighted, ~20 ms with weights around 600; decrypting the
aggregate ~20 ms. Bandwidth, not arithmetic, is what CKKS costs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tenseal as ts
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cifer.base.encoding import Canonical, EncodingError, decode, digest, encode

SCHEME = "ckks/1"
UPLOAD_MAGIC = b"CIFCKKU1"
AGGREGATE_MAGIC = b"CIFCKKA1"
_MAGICS = {UPLOAD_MAGIC: "a ckks upload", AGGREGATE_MAGIC: "a ckks aggregate"}
_LEN = struct.Struct(">I")
MAX_HEADER_BYTES = 1 << 20
#: Largest |value| a client may encrypt: with weights up to the headroom bound the weighted sum
#: stays below the ciphertext modulus (see :meth:`CkksParams.max_total_weight`).
MAX_ABS_VALUE = 2.0**16
#: Std of the noise that floods every non-canary slot of a key check.
FLOOD_STD = 2.0**12
#: Absolute tolerance of a key check's canary (CKKS error there is ~1e-6; garbage is ~2^60).
KEY_CHECK_TOLERANCE = 1e-3
#: Largest total coefficient-modulus bits for 128-bit security (HomomorphicEncryption.org).
MAX_SECURE_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
X25519_KEY_LEN = 32
_SHARE_INFO = b"cifer/ckks-key-share/1"
_CANARY_TAG = "cifer/ckks-canary/1"
_ZERO_NONCE = bytes(12)

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]


class CkksError(ValueError):
    """A CKKS blob, context or key share is refused; ``sender`` names whose upload it was."""

    def __init__(self, message: str, *, sender: bytes | None = None) -> None:
        prefix = f"upload from {sender.hex()}: " if sender is not None else ""
        super().__init__(prefix + message)
        self.sender = sender


class CkksParams(Canonical, frozen=True):
    """A job's CKKS parameters (on chain as part of :class:`ContextInfo`)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40

    def validate(self) -> None:
        """Raise :class:`CkksError` unless secure and usable for aggregation and key checks."""
        n, bits, sb = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        if n not in MAX_SECURE_BITS:
            raise CkksError(
                f"poly_modulus_degree must be one of {sorted(MAX_SECURE_BITS)}, got {n}"
            )
        if len(bits) < 3:
            raise CkksError(f"need at least 3 primes (data, one level, special), got {list(bits)}")
        if any(b < 20 or b > 60 for b in bits):
            raise CkksError(f"prime sizes must lie in [20, 60] bits, got {list(bits)}")
        if sum(bits) > MAX_SECURE_BITS[n]:
            raise CkksError(
                f"{sum(bits)} modulus bits exceed the 128-bit-security bound "
                f"{MAX_SECURE_BITS[n]} for N = {n}"
            )
        if not 20 <= sb <= 60 or any(b != sb for b in bits[1:-1]):
            raise CkksError(f"middle primes must equal the scale ({sb} bits), got {list(bits)}")
        if bits[0] - sb < 20:
            raise CkksError(f"first prime needs >= 20 bits above the scale, got {bits[0]} - {sb}")
        if bits[-1] < max(bits[:-1]):
            raise CkksError(f"the special (last) prime must be the largest, got {list(bits)}")

    @property
    def slot_count(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def chunk_len(self) -> int:
        """Update values per chunk: every slot but the last, which holds the canary."""
        return self.slot_count - 1

    @property
    def scale(self) -> float:
        """The global CKKS scale."""
        return float(2**self.scale_bits)

    def n_chunks(self, n_params: int) -> int:
        """Chunks needed for ``n_params`` values."""
        return -(-n_params // self.chunk_len)

    def max_chunk_bytes(self) -> int:
        """Upper bound on one serialized fresh ciphertext (checked before parsing)."""
        return 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1) * 8 + 4096

    def max_total_weight(self) -> int:
        """Largest sum of weights an aggregate may carry: ``sum w_i |x_i|`` with
        ``|x_i| < MAX_ABS_VALUE`` must stay below half the modulus of the fresh level."""
        q_bits = sum(self.coeff_mod_bit_sizes[:-1])
        return int(2 ** (q_bits - self.scale_bits - 1 - math.log2(MAX_ABS_VALUE)))


class ContextInfo(Canonical, frozen=True):
    """The on-chain description of a job's CKKS context; its digest is the context id."""

    scheme: str
    params: CkksParams
    public_context_sha256: bytes

    @property
    def context_id(self) -> bytes:
        """SHA-256 of the canonical encoding."""
        return digest(self)


class KeyShare(Canonical, frozen=True):
    """The secret context, sealed to one recipient's X25519 key."""

    job_id: int
    context_id: bytes
    recipient: bytes
    ephemeral: bytes
    sealed: bytes


class _ShareBinding(Canonical, frozen=True):
    scheme: str
    job_id: int
    context_id: bytes
    recipient: bytes


class UploadHeader(Canonical, frozen=True):
    """What a client's encrypted update claims to be; checked before any ciphertext."""

    context_id: bytes
    job_id: int
    round: int
    sender: bytes
    n_params: int
    chunk_len: int
    scale_bits: int
    chunk_sizes: tuple[int, ...]


class AggregateHeader(Canonical, frozen=True):
    """What an aggregate holds: who was added, with which weights (senders sorted)."""

    context_id: bytes
    job_id: int
    round: int
    n_params: int
    chunk_len: int
    scale_bits: int
    senders: tuple[bytes, ...]
    weights: tuple[int, ...]
    chunk_sizes: tuple[int, ...]


class KeyCheck(Canonical, frozen=True):
    """One upload's key check: masked, flooded sum of its chunks (see module docstring)."""

    context_id: bytes
    job_id: int
    round: int
    sender: bytes
    n_chunks: int
    ciphertext: bytes


H = TypeVar("H", UploadHeader, AggregateHeader)


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """A decrypted aggregate: ``mean = sum_i w_i x_i / total_weight``."""

    mean: F32Array
    total_weight: int
    senders: tuple[bytes, ...]
    weights: tuple[int, ...]


def _short(b: bytes) -> str:
    return b.hex()[:16]


def _new_context(params: CkksParams) -> Any:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = params.scale
    return ctx


@functools.lru_cache(maxsize=8)
def _reference_parms(params: CkksParams) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """SEAL's (key, first) parameter ids for ``params``: hashes of the primes it picks."""
    sc = _new_context(params).seal_context().data
    return tuple(sc.key_parms_id()), tuple(sc.first_parms_id())


def _first_parms_id(ctx: Any) -> tuple[int, ...]:
    return tuple(ctx.seal_context().data.first_parms_id())


def _check_context(ctx: Any, params: CkksParams, what: str) -> None:
    sc = ctx.seal_context().data
    key, first = _reference_parms(params)
    if tuple(sc.key_parms_id()) != key or tuple(sc.first_parms_id()) != first:
        raise CkksError(
            f"{what} has other encryption parameters (modulus) than the job's "
            f"N={params.poly_modulus_degree}, primes {list(params.coeff_mod_bit_sizes)}"
        )
    if ctx.global_scale != params.scale:
        raise CkksError(f"{what} has scale {ctx.global_scale}, the job uses 2^{params.scale_bits}")


def _public_bytes(ctx: Any) -> bytes:
    out: bytes = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return out


class PublicContext:
    """What a validator holds: the job's public context, verified against its context id."""

    def __init__(self, info: ContextInfo, data: bytes) -> None:
        if info.scheme != SCHEME:
            raise CkksError(f"context scheme {info.scheme!r}, expected {SCHEME!r}")
        info.params.validate()
        if hashlib.sha256(data).digest() != info.public_context_sha256:
            raise CkksError("public context bytes do not match the hash in the context info")
        try:
            ctx = ts.context_from(bytes(data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CkksError(f"public context does not parse: {exc}") from None
        if ctx.is_private():
            raise CkksError("context carries a secret key; validators may hold only the public one")
        _check_context(ctx, info.params, "public context")
        self.info = info
        self.params = info.params
        self.context_id = info.context_id
        self.context: Any = ctx


class CkksKeys:
    """A client's secret CKKS context for one job (the secret key never leaves clients)."""

    def __init__(self, params: CkksParams, context: Any) -> None:
        """Wrap a private TenSEAL context; use :meth:`generate` or :meth:`open_share`."""
        params.validate()
        if not context.is_private():
            raise CkksError("CkksKeys needs a context with the secret key")
        _check_context(context, params, "secret context")
        self.params = params
        self.context: Any = context
        self.public_context = _public_bytes(context)
        self.info = ContextInfo(SCHEME, params, hashlib.sha256(self.public_context).digest())
        self.context_id = self.info.context_id

    @classmethod
    def generate(cls, params: CkksParams | None = None) -> CkksKeys:
        """Fresh keys (the key holder's step); publish :attr:`info` and :attr:`public_context`."""
        p = CkksParams() if params is None else params
        p.validate()
        return cls(p, _new_context(p))

    def public(self) -> PublicContext:
        """The public context as a validator would load it."""
        return PublicContext(self.info, self.public_context)

    def share(self, *, job_id: int, recipient: bytes) -> KeyShare:
        """Seal the secret context to ``recipient``'s X25519 public key."""
        peer = _x25519_public(recipient)
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes_raw()
        key = _share_key(eph.exchange(peer), eph_pub, recipient)
        secret = self.context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        ad = encode(_ShareBinding(SCHEME, job_id, self.context_id, recipient))
        sealed = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, secret, ad)
        return KeyShare(job_id, self.context_id, recipient, eph_pub, sealed)

    @classmethod
    def open_share(
        cls, share: KeyShare, *, job_id: int, private_key: X25519PrivateKey, info: ContextInfo
    ) -> CkksKeys:
        """Open a share meant for us and check it holds the secret key of ``info``."""
        me = private_key.public_key().public_bytes_raw()
        if share.job_id != job_id:
            raise CkksError(f"key share is for job {share.job_id}, not job {job_id}")
        if share.context_id != info.context_id:
            raise CkksError(
                f"key share is for context {_short(share.context_id)}, "
                f"job uses {_short(info.context_id)}"
            )
        if share.recipient != me:
            raise CkksError("key share is addressed to another recipient")
        try:
            key = _share_key(
                private_key.exchange(_x25519_public(share.ephemeral)), share.ephemeral, me
            )
            ad = encode(_ShareBinding(SCHEME, job_id, share.context_id, me))
            secret = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, share.sealed, ad)
        except (InvalidTag, ValueError):
            raise CkksError(
                "key share does not open (tampered, or sealed to another key)"
            ) from None
        try:
            ctx = ts.context_from(secret)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CkksError(f"shared secret context does not parse: {exc}") from None
        keys = cls(info.params, ctx)
        if keys.info != info:
            raise CkksError("shared secret context's public key is not the job's public context")
        probe = np.linspace(-1.0, 1.0, 16)
        back = np.asarray(ts.ckks_vector(ctx, probe.tolist()).decrypt())
        if not np.allclose(back, probe, atol=1e-4):
            raise CkksError("shared secret key does not decrypt under the job's public key")
        return keys


def _x25519_public(raw: bytes) -> X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != X25519_KEY_LEN:
        raise CkksError(f"X25519 public key must be {X25519_KEY_LEN} bytes")
    return X25519PublicKey.from_public_bytes(raw)


def _share_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_SHARE_INFO + ephemeral + recipient
    ).derive(shared)


def canary_values(job_id: int, round_: int, sender: bytes, n_chunks: int) -> F64Array:
    """The public canary of each chunk of ``sender``'s upload, in [-1, 1)."""
    out = np.empty(n_chunks, dtype=np.float64)
    for k in range(n_chunks):
        h = hashlib.sha256(encode([_CANARY_TAG, job_id, round_, sender, k])).digest()
        out[k] = int.from_bytes(h[:8], "big") / 2.0**63 - 1.0
    return out


def _frame(magic: bytes, header: Canonical, chunks: Sequence[bytes]) -> bytes:
    h = encode(header)
    return b"".join([magic, _LEN.pack(len(h)), h, *chunks])


def _looks_like_safetensors(blob: memoryview) -> bool:
    """A safetensors file: little-endian u64 header length, then a JSON object."""
    if len(blob) < 10:
        return False
    n = int.from_bytes(blob[:8], "little")
    return 2 <= n <= len(blob) - 8 and bytes(blob[8:9]) == b"{"


def _unframe(
    blob: bytes, magic: bytes, typ: type[H], sender: bytes | None
) -> tuple[H, list[memoryview]]:
    """Header and chunk slices of a framed blob; the format and sizes are checked here."""
    what = _MAGICS[magic]
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CkksError(f"expected bytes for {what}, got {type(blob).__name__}", sender=sender)
    data = memoryview(blob)
    head = bytes(data[:8])
    if head != magic:
        if head in _MAGICS:
            raise CkksError(f"got {_MAGICS[head]} where {what} was expected", sender=sender)
        if _looks_like_safetensors(data):
            raise CkksError(
                f"plaintext (safetensors) update where {what} was expected: this job uses ckks, "
                "updates must be encrypted under the job's context",
                sender=sender,
            )
        raise CkksError(f"not {what} (unknown format, starts with {head[:8]!r})", sender=sender)
    if len(data) < 12:
        raise CkksError(f"truncated {what}: {len(data)} bytes", sender=sender)
    (hlen,) = _LEN.unpack(data[8:12])
    if hlen > MAX_HEADER_BYTES or 12 + hlen > len(data):
        raise CkksError(f"{what} header length {hlen} is out of range", sender=sender)
    try:
        header = decode(bytes(data[12 : 12 + hlen]), typ, max_bytes=MAX_HEADER_BYTES)
    except EncodingError as exc:
        raise CkksError(f"{what} header: {exc}", sender=sender) from None
    sizes = header.chunk_sizes
    body = 12 + hlen
    if sum(sizes) != len(data) - body:
        raise CkksError(
            f"{what} header announces {sum(sizes)} bytes of ciphertext, "
            f"the blob has {len(data) - body}",
            sender=sender,
        )
    chunks = []
    for s in sizes:
        chunks.append(data[body : body + s])
        body += s
    return header, chunks


def _check_layout(
    params: CkksParams,
    context_id: bytes,
    header: UploadHeader | AggregateHeader,
    *,
    job_id: int,
    round_: int,
    n_params: int | None,
    sender: bytes | None,
) -> None:
    if header.context_id != context_id:
        raise CkksError(
            f"encrypted under context {_short(header.context_id)}, job uses {_short(context_id)}",
            sender=sender,
        )
    if header.job_id != job_id or header.round != round_:
        raise CkksError(
            f"made for job {header.job_id} round {header.round}, "
            f"expected job {job_id} round {round_}",
            sender=sender,
        )
    if n_params is not None and header.n_params != n_params:
        raise CkksError(
            f"has {header.n_params} parameters, the model has {n_params}", sender=sender
        )
    if header.n_params < 1:
        raise CkksError("has no parameters", sender=sender)
    if header.chunk_len != params.chunk_len or header.scale_bits != params.scale_bits:
        raise CkksError(
            f"uses chunks of {header.chunk_len} at scale 2^{header.scale_bits}, the job uses "
            f"{params.chunk_len} at 2^{params.scale_bits}",
            sender=sender,
        )
    want = params.n_chunks(header.n_params)
    if len(header.chunk_sizes) != want:
        raise CkksError(
            f"has {len(header.chunk_sizes)} chunks, {header.n_params} parameters need {want}",
            sender=sender,
        )
    limit = params.max_chunk_bytes()
    for k, s in enumerate(header.chunk_sizes):
        if not 0 < s <= limit:
            raise CkksError(
                f"chunk {k} is {s} bytes, a ciphertext under these parameters is 1..{limit}",
                sender=sender,
            )


def _load_chunk(
    ctx: Any, data: memoryview, params: CkksParams, k: int, sender: bytes | None
) -> Any:
    """Parse one chunk and check it is a fresh-level, full-width ciphertext of the job."""
    try:
        vec = ts.ckks_vector_from(ctx, bytes(data))
        cts = vec.ciphertext()
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CkksError(
            f"chunk {k} is not a ciphertext under the job's parameters "
            f"(wrong modulus or context, or corrupted): {exc}",
            sender=sender,
        ) from None
    if vec.size() != params.slot_count or len(cts) != 1 or cts[0].size() != 2:
        raise CkksError(
            f"chunk {k} holds {vec.size()} values in {len(cts)} ciphertexts, "
            f"expected {params.slot_count} in one",
            sender=sender,
        )
    ct = cts[0]
    if tuple(ct.parms_id()) != _first_parms_id(ctx) or not ct.is_ntt_form():
        raise CkksError(f"chunk {k} is not at the job's fresh modulus level", sender=sender)
    if ct.scale != params.scale:
        raise CkksError(
            f"chunk {k} has scale {ct.scale}, the job uses 2^{params.scale_bits}", sender=sender
        )
    return vec


def encrypt_update(
    keys: CkksKeys, update: npt.ArrayLike, *, job_id: int, round_: int, sender: bytes
) -> bytes:
    """Encrypt a flat update for ``job_id``/``round_`` as ``sender`` (canaries included)."""
    x = np.asarray(update)
    if x.ndim != 1 or x.size < 1 or x.dtype.kind != "f":
        raise CkksError(f"update must be a non-empty flat float vector, got {x.dtype} {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise CkksError("update contains NaN or inf")
    if float(np.abs(x).max()) >= MAX_ABS_VALUE:
        raise CkksError(f"update values must lie in (-2^16, 2^16), got {float(np.abs(x).max())}")
    p = keys.params
    n_chunks = p.n_chunks(x.size)
    canaries = canary_values(job_id, round_, sender, n_chunks)
    buf = np.zeros(p.slot_count, dtype=np.float64)
    chunks = []
    for k in range(n_chunks):
        seg = x[k * p.chunk_len : (k + 1) * p.chunk_len]
        buf[:] = 0.0
        buf[: seg.size] = seg
        buf[-1] = canaries[k]
        chunks.append(ts.ckks_vector(keys.context, buf.tolist()).serialize())
    header = UploadHeader(
        keys.context_id,
        job_id,
        round_,
        sender,
        int(x.size),
        p.chunk_len,
        p.scale_bits,
        tuple(len(c) for c in chunks),
    )
    return _frame(UPLOAD_MAGIC, header, chunks)


def _times(vec: Any, weight: int) -> Any:
    """``weight * vec`` by double-and-add: exact and level-free (a plaintext multiply would
    rescale and spend the level the key check needs). Only out-of-place additions: TenSEAL's
    ``copy`` costs ~30 ms, an addition ~0.03 ms."""
    acc: Any = None
    base = vec
    w = weight
    while w:
        if w & 1:
            acc = base if acc is None else acc + base
        w >>= 1
        if w:
            base = base + base
    return acc


class CkksAccumulator:
    """A validator's streaming sum of one round's uploads (it holds no secret key).

    Memory is one running sum plus the upload being added, and, with key checks on, one
    ciphertext per upload (the sum of its chunks). Each upload is fully parsed and checked
    before it touches the sum, so a refused upload leaves the sum unchanged. Key checks are
    made on first request and then kept: a second, freshly flooded key check of the same
    upload would let a key holder average the flooding noise down.
    """

    def __init__(
        self,
        public: PublicContext,
        *,
        job_id: int,
        round_: int,
        n_params: int,
        key_checks: bool = True,
    ) -> None:
        if n_params < 1:
            raise CkksError(f"n_params must be >= 1, got {n_params}")
        self.public = public
        self.params = public.params
        self.job_id = job_id
        self.round = round_
        self.n_params = n_params
        self.n_chunks = self.params.n_chunks(n_params)
        self._sum: list[Any] | None = None
        self._weights: dict[bytes, int] = {}
        self._chunk_sums: dict[bytes, Any] | None = {} if key_checks else None
        self._key_checks: dict[bytes, bytes] = {}
        self._mask = [0.0] * (self.params.slot_count - 1) + [1.0]
        self._rng = np.random.default_rng(secrets.randbits(128))

    @property
    def count(self) -> int:
        """Uploads added so far."""
        return len(self._weights)

    @property
    def total_weight(self) -> int:
        """Sum of the weights added so far."""
        return sum(self._weights.values())

    def add(
        self,
        sender: bytes,
        blob: bytes,
        *,
        weight: int = 1,
        expected_sha256: bytes | None = None,
    ) -> None:
        """Check ``sender``'s upload and add ``weight`` times it; errors name the sender.

        ``expected_sha256`` is the hash the sender signed on chain: a blob altered after
        signing is refused here, and one that matches is the sender's own doing.
        """
        if sender in self._weights:
            raise CkksError("sender already added this round", sender=sender)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise CkksError(f"weight must be an integer >= 1, got {weight!r}", sender=sender)
        if self.total_weight + weight > self.params.max_total_weight():
            raise CkksError(
                f"total weight would exceed {self.params.max_total_weight()}, "
                "the headroom of these parameters",
                sender=sender,
            )
        if expected_sha256 is not None and hashlib.sha256(blob).digest() != expected_sha256:
            raise CkksError("blob does not hash to the hash the sender submitted", sender=sender)
        header, chunks = _unframe(blob, UPLOAD_MAGIC, UploadHeader, sender)
        if header.sender != sender:
            raise CkksError(f"header names sender {header.sender.hex()}", sender=sender)
        _check_layout(
            self.params,
            self.public.context_id,
            header,
            job_id=self.job_id,
            round_=self.round,
            n_params=self.n_params,
            sender=sender,
        )
        ctx = self.public.context
        vecs = [_load_chunk(ctx, c, self.params, k, sender) for k, c in enumerate(chunks)]
        if self._chunk_sums is not None:
            # Out-of-place sums never alias the running sum (which may adopt ``vecs``); one
            # chunk is re-parsed for the same reason (TenSEAL's copy is slow).
            total = (
                vecs[0] + vecs[1]
                if len(vecs) > 1
                else _load_chunk(ctx, chunks[0], self.params, 0, sender)
            )
            for v in vecs[2:]:
                total.add_(v)
            self._chunk_sums[sender] = total
        if self._sum is None:
            self._sum = [_times(v, weight) for v in vecs]
        else:
            for acc, v in zip(self._sum, vecs, strict=True):
                acc.add_(_times(v, weight))
        self._weights[sender] = weight

    def key_check(self, sender: bytes) -> bytes:
        """The key check of ``sender``'s upload, for key holders (:func:`check_keys`)."""
        if self._chunk_sums is None:
            raise CkksError("key checks are disabled for this accumulator")
        if sender not in self._weights:
            raise CkksError("no upload from this sender", sender=sender)
        done = self._key_checks.get(sender)
        if done is not None:
            return done
        masked = self._chunk_sums.pop(sender) * self._mask
        flood = self._rng.normal(0.0, FLOOD_STD, self.params.slot_count)
        flood[-1] = 0.0
        masked.add_(flood.tolist())
        out = encode(
            KeyCheck(
                self.public.context_id,
                self.job_id,
                self.round,
                sender,
                self.n_chunks,
                masked.serialize(),
            )
        )
        self._key_checks[sender] = out
        return out

    def key_checks(self) -> dict[bytes, bytes]:
        """The key checks of every upload added so far, by sender."""
        return {s: self.key_check(s) for s in self._weights}

    def result(self) -> bytes:
        """The serialized aggregate: identical bytes on every validator given the same set of
        (sender, weight, upload), whatever the order they were added in."""
        if self._sum is None:
            raise CkksError("no uploads were added")
        chunks = [v.serialize() for v in self._sum]
        senders = tuple(sorted(self._weights))
        header = AggregateHeader(
            self.public.context_id,
            self.job_id,
            self.round,
            self.n_params,
            self.params.chunk_len,
            self.params.scale_bits,
            senders,
            tuple(self._weights[s] for s in senders),
            tuple(len(c) for c in chunks),
        )
        return _frame(AGGREGATE_MAGIC, header, chunks)


def decrypt_aggregate(
    keys: CkksKeys, blob: bytes, *, job_id: int, round_: int, n_params: int | None = None
) -> AggregateResult:
    """Decrypt an aggregate, check its canaries, and return the weighted mean.

    A canary mismatch means some upload was made under another key or corrupted; the key
    checks of the round (:func:`check_keys`) then name its sender.
    """
    p = keys.params
    header, chunks = _unframe(blob, AGGREGATE_MAGIC, AggregateHeader, None)
    _check_layout(
        p, keys.context_id, header, job_id=job_id, round_=round_, n_params=n_params, sender=None
    )
    if (
        not header.senders
        or len(header.weights) != len(header.senders)
        or list(header.senders) != sorted(set(header.senders))
        or any(w < 1 for w in header.weights)
    ):
        raise CkksError("aggregate header has malformed senders or weights")
    n_chunks = len(chunks)
    expected = np.zeros(n_chunks, dtype=np.float64)
    for s, w in zip(header.senders, header.weights, strict=True):
        expected += w * canary_values(job_id, round_, s, n_chunks)
    total = sum(header.weights)
    tol = 1e-5 * (1 + total)
    out = np.empty(n_chunks * p.chunk_len, dtype=np.float64)
    bad = []
    for k, c in enumerate(chunks):
        vals = np.asarray(_load_chunk(keys.context, c, p, k, None).decrypt(), dtype=np.float64)
        if not abs(vals[-1] - expected[k]) <= tol:
            bad.append(k)
        out[k * p.chunk_len : (k + 1) * p.chunk_len] = vals[:-1]
    if bad:
        raise CkksError(
            f"aggregate canary mismatch in chunks {bad[:8]}{'...' if len(bad) > 8 else ''}: an "
            "upload was made under another key or corrupted; check_keys names its sender"
        )
    mean = (out[: header.n_params] / total).astype(np.float32)
    return AggregateResult(mean, total, header.senders, header.weights)


def check_keys(
    keys: CkksKeys,
    key_checks: Mapping[bytes, bytes],
    *,
    job_id: int,
    round_: int,
    n_params: int,
) -> list[bytes]:
    """Senders (sorted) whose key check fails: upload not under the job's key, corrupted, or
    a key check that is malformed or made for another upload."""
    n_chunks = keys.params.n_chunks(n_params)
    failed = []
    for sender, raw in key_checks.items():
        if not _key_check_ok(keys, sender, raw, job_id, round_, n_chunks):
            failed.append(sender)
    return sorted(failed)


def _key_check_ok(
    keys: CkksKeys, sender: bytes, raw: bytes, job_id: int, round_: int, n_chunks: int
) -> bool:
    try:
        kc = decode(raw, KeyCheck)
    except EncodingError:
        return False
    if (kc.context_id, kc.job_id, kc.round, kc.sender, kc.n_chunks) != (
        keys.context_id,
        job_id,
        round_,
        sender,
        n_chunks,
    ):
        return False
    try:
        vec = ts.ckks_vector_from(keys.context, kc.ciphertext)
        if vec.size() != keys.params.slot_count:
            return False
        value = float(vec.decrypt()[-1])
    except (ValueError, RuntimeError, TypeError):
        return False
    want = float(canary_values(job_id, round_, sender, n_chunks).sum())
    return abs(value - want) <= KEY_CHECK_TOLERANCE


def read_upload_header(blob: bytes) -> UploadHeader:
    """The header of an upload, checked for framing only (no ciphertext is parsed)."""
    header, _ = _unframe(blob, UPLOAD_MAGIC, UploadHeader, None)
    return header

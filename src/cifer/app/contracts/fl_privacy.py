"""Privacy modes of on-chain fl jobs: what the chain states and checks, without I/O.

A job's ``privacy`` is ``plain``, ``secagg`` or ``ckks``; any of them may add client-level
DP (``CreateJob.dp``). The mode is part of the job on chain, the node refuses updates that
do not follow it (a plaintext blob in a ``ckks`` or ``secagg`` job is refused as such) and
the SDK client follows the job's mode and refuses jobs weaker than it was asked for.

``secagg`` (:mod:`cifer.compute.privacy.secagg`): a round has four phases, each open for
``round_blocks`` blocks or until every expected client has spoken. Phase messages travel
as ``fl/SecAgg`` transactions (adverts, encrypted shares, reveals; every client reads
them from the chain, so no client connects to another) and the masked vector as an update
blob referenced by ``fl/SubmitUpdate``. The contract admits each message with the
protocol's own checks (deterministic: X25519 and hashes only), so a malformed share or a
reveal of a survivor's key is refused with its reason. The aggregate block's proposer
unmasks the exact integer sum and every validator recomputes it.

``ckks`` (:mod:`cifer.compute.privacy.ckks`): once the roster is full, the member with the
smallest address (the key holder) publishes the public context and the secret context
sealed to every other member's X25519 key (``JoinJob.enc_key``); validators add the
ciphertexts (weighted by capped sample counts) and can never decrypt. The chain records
each round's *encrypted* aggregate; clients decrypt it to move their model on.

Both modes fix the roster when the job starts (``min_clients == max_clients``): shares and
keys are dealt to a known set. Robust rules need plaintext, so these modes aggregate by
averaging (``fedavg``): clients clip their own updates (the secagg clip range bounds each
coordinate of what can be submitted; nothing bounds a CKKS update beyond 2^16 per value).

DP on chain is always distributed (each client adds its share of the noise): a validator
cannot add noise that the other validators, recomputing the aggregate, would not know.
A dp job averages with equal weights (``fedavg`` without sample weights), so one client
moves the sum by at most its clip norm C, which is what the accountant assumes.
Every round all members are asked, so the sampling rate is 1. The proposer reports the
cumulative epsilon in the aggregate (micro-epsilon, rounded up) and validators accept
their own recomputation within 1 micro-epsilon (floating-point special functions).
"""

from __future__ import annotations

import hashlib
from typing import Final

from cifer.base.encoding import Canonical
from cifer.compute.privacy.ckks import CkksError, CkksParams, ContextInfo, KeyShare
from cifer.compute.privacy.dp import PPM, DpConfig, DpError
from cifer.compute.privacy.secagg import SecAggError, SecAggParams, SecAggRound

PLAIN: Final = "plain"
SECAGG: Final = "secagg"
CKKS: Final = "ckks"
PRIVACY_MODES: Final = (PLAIN, SECAGG, CKKS)
#: What a client may demand (``--require``): a job weaker than that is refused.
STRENGTH: Final = {PLAIN: 0, SECAGG: 1, CKKS: 1}
#: Under secagg and ckks only averaging can run: robust rules need the plaintext updates.
PRIVATE_RULES: Final = ("fedavg",)

ADVERTISE, SHARE, INPUT, UNMASK = 0, 1, 2, 3
PHASES: Final = ("advertise", "share", "input", "unmask")
MAX_PAYLOAD: Final = 256 * 1024
X25519_KEY_LEN: Final = 32


class SecAggMsg(Canonical, frozen=True):
    """A secagg phase message: ``payload`` is the canonical AdvertiseKeys (phase 0),
    ShareKeys (1) or UnmaskShares (3). Masked inputs (2) are update blobs."""

    job_id: int
    round: int
    phase: int
    payload: bytes


class PublishContext(Canonical, frozen=True):
    """The ckks key holder's setup: the public context (its blob's hash is inside ``info``)
    and a :class:`KeyBundle` blob with the secret context sealed to each other member."""

    job_id: int
    info: ContextInfo
    key_shares: bytes  # SHA-256 of the KeyBundle blob


class KeyBundle(Canonical, frozen=True):
    shares: list[KeyShare]


class PrivacyError(ValueError):
    """A job's privacy settings cannot work; the message says which field and why."""


def describe(privacy: str, dp: DpConfig | None) -> str:
    return privacy + ("+dp" if dp is not None else "")


def validate_job(
    *,
    privacy: str,
    rule: str,
    min_clients: int,
    max_clients: int,
    rounds: int,
    model_params: int,
    secagg: SecAggParams | None,
    ckks: CkksParams | None,
    dp: DpConfig | None,
) -> None:
    """Raise :class:`PrivacyError` unless the settings can run on chain."""
    if privacy not in PRIVACY_MODES:
        raise PrivacyError(
            f"privacy mode {privacy!r} is unknown; modes: {', '.join(PRIVACY_MODES)}"
        )
    if privacy != SECAGG and secagg is not None:
        raise PrivacyError(f"secagg parameters are given for a {privacy} job")
    if privacy != CKKS and ckks is not None:
        raise PrivacyError(f"ckks parameters are given for a {privacy} job")
    if privacy != PLAIN:
        if rule not in PRIVATE_RULES:
            raise PrivacyError(
                f"rule {rule!r} needs plaintext updates; under {privacy} the updates are "
                f"averaged (rule {' or '.join(PRIVATE_RULES)}), after each client clips its own"
            )
        if min_clients != max_clients:
            raise PrivacyError(
                f"a {privacy} job deals keys to a fixed roster: min_clients ({min_clients}) "
                f"must equal max_clients ({max_clients})"
            )
        if model_params < 1:
            raise PrivacyError(f"a {privacy} job must state model_params (its parameter count)")
    if privacy == SECAGG:
        if secagg is None:
            raise PrivacyError("a secagg job must give its secagg parameters (threshold, degree)")
        try:
            secagg.check(min_clients)
        except SecAggError as exc:
            raise PrivacyError(f"secagg: {exc}") from None
    if privacy == CKKS:
        try:
            (ckks or CkksParams()).validate()
        except CkksError as exc:
            raise PrivacyError(f"ckks: {exc}") from None
    if dp is not None:
        try:
            dp.validate()
        except DpError as exc:
            raise PrivacyError(f"dp: {exc}") from None
        if rule not in PRIVATE_RULES:
            raise PrivacyError(
                f"dp: the accountant assumes averaging of clipped updates; rule {rule!r} "
                f"is not ({' or '.join(PRIVATE_RULES)})"
            )
        if dp.mode != "distributed":
            raise PrivacyError(
                "dp: on chain the noise must be distributed among clients; validators "
                "cannot add noise that the other validators recomputing the aggregate "
                "would not know"
            )
        if dp.sampling_rate_ppm != PPM:
            raise PrivacyError("dp: every member is asked every round, so the sampling rate is 1")
        if dp.min_clients != min_clients or dp.rounds != rounds:
            raise PrivacyError(
                f"dp: min_clients and rounds ({dp.min_clients}, {dp.rounds}) must be the "
                f"job's ({min_clients}, {rounds})"
            )


def round_seed(chain_id: str, job_id: int, round_: int, model: bytes) -> bytes:
    """Public seed of a secagg round's neighbour graph."""
    return hashlib.sha256(
        b"cifer/fl/secagg-round/v1\x00"
        + chain_id.encode()
        + job_id.to_bytes(8, "big")
        + round_.to_bytes(4, "big")
        + model
    ).digest()


def secagg_round(
    chain_id: str,
    *,
    job_id: int,
    round_: int,
    model: bytes,
    params: SecAggParams,
    roster: list[bytes],
    length: int,
) -> SecAggRound:
    return SecAggRound(
        params,
        job_id=job_id,
        round=round_,
        seed=round_seed(chain_id, job_id, round_, model),
        roster=sorted(roster),
        length=length,
    )


def key_holder(members: list[bytes]) -> bytes:
    """The ckks key holder: the member with the smallest address."""
    return min(members)


def check_enc_key(key: bytes) -> None:
    if len(key) != X25519_KEY_LEN:
        raise PrivacyError(f"enc_key must be a {X25519_KEY_LEN}-byte X25519 public key")


def epsilon_close(a: int, b: int) -> bool:
    """Validators accept a reported epsilon within 1 micro-epsilon of their own."""
    return abs(a - b) <= 1

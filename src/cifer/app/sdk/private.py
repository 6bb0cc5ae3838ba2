"""The client's side of private jobs (``secagg`` and ``ckks``, optionally with ``dp``).

:class:`PrivateParticipant` follows the job's mode as the chain states it and never sends
anything weaker: under ``secagg`` the update leaves the process only masked, under ``ckks``
only encrypted, and with ``dp`` only clipped and noised first (distributed noise: this
client's share ``N(0, (zC)^2 / m)``). Every protocol message travels through the chain
(``fl/SecAgg`` txs, blobs), read back through the node's API, so clients never connect to
each other.

Keys: secagg keys are fresh per round and live only in this object (a client that
restarts mid-round drops out of that round; the protocol tolerates it). The ckks
envelope key is derived from the account key (an Ed25519 signature is deterministic), so a
restarted client can still open the job's secret context.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cifer.app.contracts.fl_privacy import (
    CKKS,
    PHASES,
    SECAGG,
    STRENGTH,
    KeyBundle,
    PublishContext,
    SecAggMsg,
    key_holder,
    secagg_round,
)
from cifer.app.module import pack
from cifer.base.crypto.keys import from_bech32
from cifer.base.encoding import EncodingError, decode, encode
from cifer.compute.fl.params import F32Array
from cifer.compute.privacy.ckks import (
    CkksError,
    CkksKeys,
    CkksParams,
    ContextInfo,
    decrypt_aggregate,
    encrypt_update,
)
from cifer.compute.privacy.dp import DpConfig, privatize_update, secure_rng
from cifer.compute.privacy.secagg import (
    AdvertiseKeys,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggRound,
    ShareKeys,
)

if TYPE_CHECKING:
    from cifer.app.sdk.client import Client

log = logging.getLogger(__name__)

#: Blocks to wait for a sent message to show on chain before sending it again.
RESEND_BLOCKS = 3


class PrivacyRequirement(ValueError):
    """A job is weaker than the privacy this client was asked to demand."""


def parse_mode(text: str) -> tuple[str, bool]:
    """``"secagg+dp"`` -> ("secagg", True)."""
    mode, _, extra = text.partition("+")
    if mode not in STRENGTH or extra not in ("", "dp"):
        raise ValueError(f"privacy {text!r}: expected plain, secagg or ckks, optionally with +dp")
    return mode, extra == "dp"


def check_requirement(job: Mapping[str, Any], required: str | None) -> None:
    """Refuse a job whose mode is weaker than ``required`` (e.g. plain when secagg is due)."""
    if not required:
        return
    mode, dp = parse_mode(required)
    job_mode, job_dp = str(job.get("privacy", "plain")), job.get("dp") is not None
    if STRENGTH.get(job_mode, 0) < STRENGTH[mode] or (dp and not job_dp):
        raise PrivacyRequirement(
            f"job {job['id']} is {job.get('privacy_mode', job_mode)}; this client requires "
            f"{required} and will not send its update in a weaker mode"
        )


def envelope_key(sign: Callable[[bytes], bytes], chain_id: str, job_id: int) -> X25519PrivateKey:
    """This account's X25519 key for a ckks job (re-derivable after a restart)."""
    sig = sign(b"cifer/fl/ckks-envelope/v1\x00" + chain_id.encode() + job_id.to_bytes(8, "big"))
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(sig).digest())


def _struct(cls: Any, fields: Mapping[str, Any]) -> Any:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


@dataclass
class _Phase:
    payload: bytes
    sent_height: int


@dataclass
class _SecAggState:
    round: int
    rnd: SecAggRound
    client: SecAggClient
    sent: dict[int, _Phase] = field(default_factory=dict)
    received: bool = False
    gave_up: bool = False


class PrivateParticipant:
    """Drives one client through a private job, one poll at a time (see :meth:`step`).

    ``train(global_params) -> (flat delta, samples)`` trains on the client's data; it is
    called at most once per round.
    """

    def __init__(self, client: Client, job: Mapping[str, Any]) -> None:
        self.c = client
        self.job_id = int(job["id"])
        self.mode = str(job["privacy"])
        if self.mode not in (SECAGG, CKKS):
            raise ValueError(f"job {self.job_id} is {self.mode}: not a private mode")
        self.me = client.key.address
        self.dp = _struct(DpConfig, job["dp"]) if job.get("dp") else None
        self.n_params = int(job["model_params"])
        self._sa: _SecAggState | None = None
        self._keys: CkksKeys | None = None
        self._published = False
        self._plain: tuple[int, F32Array] | None = None  # ckks: (rounds applied, model)
        self._spec: Any = None
        self._submitted: dict[int, int] = {}  # round -> height sent (ckks)
        self._rng = secure_rng()
        self._samples = 0

    # ------------------------------------------------------------------ shared

    def enc_key(self) -> bytes:
        return self.envelope().public_key().public_bytes_raw()

    def envelope(self) -> X25519PrivateKey:
        return envelope_key(self.c.key.sign, self.c.chain_id, self.job_id)

    def _privatize(self, delta: F32Array) -> F32Array:
        if self.dp is None:
            return delta
        return privatize_update(delta, self.dp, self._rng)

    def _send(self, msg: Any, what: str) -> str:
        """Send one tx; "" if it was taken (or was already on chain), else the node's reason."""
        from cifer.app.sdk.client import ClientError

        try:
            self.c._broadcast([msg], mode="sync", what=what)
        except ClientError as exc:
            if "already sent" in exc.log or "already submitted" in exc.log:
                return ""
            return exc.log or str(exc)
        return ""

    def step(
        self,
        job: Mapping[str, Any],
        train: Callable[[dict[str, F32Array]], tuple[F32Array, int]],
    ) -> str:
        """Do whatever this poll calls for; returns a short status for the progress bar."""
        if job["status"] == "keys":
            return self._keys_step(job)
        if job["status"] != "running":
            return str(job["status"])
        if self.mode == CKKS:
            return self._ckks_step(job, train)
        return self._secagg_step(job, train)

    # ------------------------------------------------------------------ ckks

    def _keys_step(self, job: Mapping[str, Any]) -> str:
        members = [from_bech32(a) for a in job["member_list"]]
        if key_holder(members) != self.me:
            return "waiting for the key holder"
        if self._published:
            return "context published"
        params = _struct(CkksParams, job["ckks"])
        keys = CkksKeys.generate(params)
        enc = job.get("enc_keys") or {}
        shares = [
            keys.share(job_id=self.job_id, recipient=bytes.fromhex(enc[a]))
            for a in job["member_list"]
            if from_bech32(a) != self.me and a in enc
        ]
        self.c.put_blob(keys.public_context)
        bundle = self.c.put_blob(encode(KeyBundle(shares)))
        msg = pack(
            "fl/PublishContext", PublishContext(self.job_id, keys.info, bytes.fromhex(bundle))
        )
        reason = self._send(msg, f"PublishContext for job {self.job_id}")
        if reason:
            raise PrivacyRequirement(f"job {self.job_id}: the node refused our context: {reason}")
        self._keys, self._published = keys, True
        return "context published"

    def keys(self) -> CkksKeys:
        """The job's CKKS keys: ours if we hold them, else opened from our sealed share."""
        if self._keys is not None:
            return self._keys
        ctx = self.c._get_json(f"/fl/jobs/{self.job_id}/context", f"job {self.job_id}'s context")
        info = decode(bytes.fromhex(ctx["info"]), ContextInfo)
        bundle = decode(self.c.get_blob(str(ctx["key_shares"])), KeyBundle)
        mine = self.enc_key()
        share = next((s for s in bundle.shares if s.recipient == mine), None)
        if share is None:
            raise CkksError(f"job {self.job_id}'s key bundle holds no share for this client")
        self._keys = CkksKeys.open_share(
            share, job_id=self.job_id, private_key=self.envelope(), info=info
        )
        return self._keys

    def plain_model(self, job: Mapping[str, Any], upto: int) -> dict[str, F32Array]:
        """The model after ``upto`` rounds: the initial model plus every decrypted aggregate."""
        from cifer.compute.fl.params import ParamSpec

        if self._plain is None:
            params = self.c.model(str(job["initial_model"]))
            self._spec = ParamSpec.of(params)
            self._plain = (0, self._spec.flatten(params))
        done, flat = self._plain
        keys = self.keys()
        for r in range(done, upto):
            rec = self.c.round(self.job_id, r)
            if not rec["clients"] or rec.get("failure") or not any(rec["accepted"]):
                continue  # the round moved nothing
            res = decrypt_aggregate(
                keys,
                self.c.get_blob(str(rec["model"])),
                job_id=self.job_id,
                round_=r,
                n_params=self.n_params,
            )
            flat = (flat + res.mean).astype(np.float32)
        self._plain = (upto, flat)
        return dict(self._spec.unflatten(flat))

    def _ckks_step(
        self, job: Mapping[str, Any], train: Callable[[dict[str, F32Array]], tuple[F32Array, int]]
    ) -> str:
        r = int(job["round"])
        me = self.c.address
        if me in job["submitted"]:
            return "submitted"
        sent = self._submitted.get(r)
        height = int(job["height"])
        if sent is not None and height < sent + RESEND_BLOCKS:
            return "submitted"
        model = self.plain_model(job, r)
        delta, samples = train(model)
        blob = encrypt_update(
            self.keys(), self._privatize(delta), job_id=self.job_id, round_=r, sender=self.me
        )
        if not self._submit(r, blob, samples):
            self._submitted[r] = 1 << 62  # never resend: the round moved on without us
            return "update refused"
        self._submitted[r] = height
        return "encrypted update sent"

    def _submit(self, r: int, blob: bytes, samples: int) -> bool:
        """Upload and submit; False if the node refused it (e.g. the round or phase closed
        first, which costs this client the round, not the run)."""
        from cifer.app.sdk.client import ClientError, _closed_text

        try:
            self.c.submit_blob(self.job_id, r, blob, samples)
        except ClientError as exc:
            if "already submitted" in exc.log:
                return True
            moved_on = _closed_text(exc.log) or "secagg phase" in exc.log
            if not moved_on:
                raise
            log.warning("job %d round %d: too late: %s", self.job_id, r, exc.log)
            return False
        return True

    # ------------------------------------------------------------------ secagg

    def _phase(self, r: int, phase: int) -> dict[str, Any]:
        out: dict[str, Any] = self.c._get_json(
            f"/fl/jobs/{self.job_id}/secagg/{r}/{PHASES[phase]}", f"secagg {PHASES[phase]}"
        )
        return out

    def _messages(self, view: Mapping[str, Any], typ: type[Any]) -> list[Any]:
        """A phase view's payloads decoded as ``typ``."""
        out = []
        for p in view["payloads"]:
            try:
                out.append(decode(bytes.fromhex(p), typ))
            except (EncodingError, ValueError) as exc:  # committed, so checked: log and skip
                log.warning("job %d: undecodable secagg message skipped: %s", self.job_id, exc)
        return out

    def _round_state(self, job: Mapping[str, Any]) -> _SecAggState | None:
        r = int(job["round"])
        if self._sa is not None and self._sa.round == r:
            return self._sa
        if job["phase"] != PHASES[0]:
            return None  # joined (or restarted) mid-round: sit this one out
        rnd = secagg_round(
            self.c.chain_id,
            job_id=self.job_id,
            round_=r,
            model=bytes.fromhex(str(job["model_hash"])),
            params=_struct(SecAggParams, job["secagg"]),
            roster=[from_bech32(a) for a in job["member_list"]],
            length=self.n_params,
        )
        self._sa = _SecAggState(r, rnd, SecAggClient(rnd, self.me))
        return self._sa

    def _send_phase(self, st: _SecAggState, phase: int, payload: bytes, height: int) -> str:
        msg = pack("fl/SecAgg", SecAggMsg(self.job_id, st.round, phase, payload))
        reason = self._send(msg, f"secagg {PHASES[phase]} for job {self.job_id}")
        if reason:
            log.warning(
                "job %d round %d: %s refused: %s", self.job_id, st.round, PHASES[phase], reason
            )
            st.gave_up = True
            return f"{PHASES[phase]} refused"
        st.sent[phase] = _Phase(payload, height)
        return f"{PHASES[phase]} sent"

    def _secagg_step(
        self, job: Mapping[str, Any], train: Callable[[dict[str, F32Array]], tuple[F32Array, int]]
    ) -> str:
        st = self._round_state(job)
        if st is None or st.gave_up:
            return "sitting this round out"
        phase = PHASES.index(str(job["phase"]))
        height = int(job["height"])
        view = self._phase(st.round, phase)
        me = self.c.address
        if me in view["senders"]:
            return f"{PHASES[phase]} done"
        prev = st.sent.get(phase)
        if prev is not None:
            if height < prev.sent_height + RESEND_BLOCKS:
                return f"{PHASES[phase]} sent"
            if phase != 2:
                return self._send_phase(st, phase, prev.payload, height)
        try:
            if phase == 0:
                return self._send_phase(st, 0, encode(st.client.advertise()), height)
            if phase == 1:
                prev_view = self._phase(st.round, 0)
                if me not in prev_view["senders"]:
                    st.gave_up = True
                    return "missed the advertise phase"
                adverts = self._messages(prev_view, AdvertiseKeys)
                return self._send_phase(st, 1, encode(st.client.share_keys(adverts)), height)
            if phase == 2:
                if not st.received:
                    prev_view = self._phase(st.round, 1)
                    if me not in prev_view["senders"]:
                        st.gave_up = True
                        return "missed the share phase"
                    shares = self._messages(prev_view, ShareKeys)
                    complaints = st.client.receive_shares(shares)
                    if complaints:
                        log.warning(
                            "job %d round %d: %d shares sent to us do not open",
                            self.job_id,
                            st.round,
                            len(complaints),
                        )
                    st.received = True
                    delta, samples = train(self.c.model(str(job["model_hash"])))
                    levels = st.rnd.quantizer().quantize(self._privatize(delta))
                    st.sent[2] = _Phase(encode(st.client.masked_input(levels)), height)
                    self._samples = samples
                blob = st.sent[2].payload
                if not self._submit(st.round, blob, self._samples):
                    st.gave_up = True
                    return "masked input refused"
                st.sent[2].sent_height = height
                return "masked input sent"
            survivors = [from_bech32(a) for a in self._phase(st.round, 2)["senders"]]
            if self.me not in survivors:
                st.gave_up = True
                return "our masked input missed the round"
            return self._send_phase(st, 3, encode(st.client.unmask(survivors)), height)
        except SecAggError as exc:
            log.warning("job %d round %d: %s", self.job_id, st.round, exc)
            st.gave_up = True
            return f"left the round: {exc}"


def is_plaintext_update(blob: bytes) -> bool:
    """Whether ``blob`` is a safetensors model (what a plain job takes)."""
    from cifer.compute.fl.params import ParamError, from_bytes

    try:
        from_bytes(blob)
    except ParamError:
        return False
    return True

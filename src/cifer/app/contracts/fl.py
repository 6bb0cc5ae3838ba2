"""fl: federated training jobs coordinated by the ledger, with proof of aggregation.

Life of a job (DESIGN.md, "Decentralized FL on chain"):

1. ``CreateJob`` escrows the reward pool in this module's account and records the model
   recipe, the initial weights' hash, the aggregation rule and the round schedule.
2. ``JoinJob`` adds a client (allow-list and reputation permitting). Once ``min_clients``
   have joined, round 0 starts at the next height.
3. Each client trains, uploads its update blob to a node and sends ``SubmitUpdate`` (round,
   blob hash, sample count). A round closes at the end of the block in which every member
   has submitted, or at its deadline (``round_blocks`` after it started); members who did
   not submit are stragglers.
4. The next block starts with the system message ``Aggregate``: its proposer ran the job's
   rule over the submitted updates (sorted by client address) and states the new model's
   hash, which clients the rule accepted, each client's agreement with the aggregate and
   the stragglers. Every validator recomputes it and votes nil if anything differs
   (:meth:`CiferApp._check_system`), so an aggregate is final only when > 2/3 of the voting
   power computed the same one. The computation itself (blobs, NumPy) lives in
   :mod:`cifer.app.fl_engine`; this module is the pure state machine.
5. Applying ``Aggregate`` moves the model on, updates reputation (accepted, rejected,
   straggler), pays the round's share of the escrow and records the round. After the last
   round the leftover escrow returns to the creator and the final model gets a provenance
   record (initial model, every round's aggregate, contributing clients).

Decisions
---------
* Sample counts are self-reported, so rewards cap each at twice the round's median: an
  attacker claiming a billion samples cannot take the pool.
* Rewards: ``escrow_left // rounds_left`` per round; ``proposer_fee_bps`` of it to the
  proposer of the aggregate block; the rest to accepted clients in proportion to
  reputation times (capped) samples. Integer remainders go to the proposer, so every ucif
  is accounted for; a round with no accepted client leaves its share in escrow.
* Only built-in aggregation rules: a ``module:function`` plug-in would run arbitrary code
  on every validator.
* A round in which nobody submitted closes without an aggregate (the model stays).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Final, Protocol, TypeVar

import msgspec

from cifer.app.contracts.bank import TOTAL_SUPPLY, BankModule
from cifer.app.contracts.consent import ConsentModule
from cifer.app.contracts.fl_privacy import (
    ADVERTISE,
    CKKS,
    INPUT,
    MAX_PAYLOAD,
    PHASES,
    PLAIN,
    SECAGG,
    SHARE,
    UNMASK,
    PrivacyError,
    PublishContext,
    SecAggMsg,
    check_enc_key,
    epsilon_close,
    key_holder,
    secagg_round,
    validate_job,
)
from cifer.app.contracts.licensing import LicensingModule
from cifer.app.contracts.registry import (
    BPS,
    AssetMeta,
    AssetStatus,
    EdgeKind,
    RegistryModule,
    check_purpose,
)
from cifer.app.contracts.reputation import RepEvent, ReputationModule
from cifer.app.module import (
    Code,
    Context,
    InvariantViolation,
    Module,
    MsgError,
    SystemUnavailable,
    module_address,
    pack,
)
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import ADDRESS_LEN, to_bech32
from cifer.base.encoding import Canonical, EncodingError
from cifer.compute.privacy.ckks import CkksParams, ContextInfo
from cifer.compute.privacy.dp import DpConfig
from cifer.compute.privacy.secagg import (
    AdvertiseKeys,
    MessageError,
    SecAggParams,
    SecAggRound,
    ShareKeys,
    UnmaskShares,
    check_advertise,
    check_share_keys,
    check_unmask,
)

M = TypeVar("M", bound=Module)

ESCROW: Final = module_address("fl")
MAX_ROUNDS: Final = 10_000
MAX_CLIENTS: Final = 1_000
MAX_SAMPLES: Final = 10**9
MAX_PARAM_ENTRIES: Final = 32
MAX_TEXT: Final = 256
MAX_ALLOW_LIST: Final = 1_000
MAX_JOB_ASSETS: Final = 64

_JOB: Final = b"fl/job/"
_NEXT: Final = b"fl/next_job"
_MEMBER: Final = b"fl/member/"
_UPD: Final = b"fl/upd/"
_ROUND: Final = b"fl/round/"
_ACTIVE: Final = b"fl/active/"
_PROV: Final = b"fl/prov/"
_ESCROW_TOTAL: Final = b"fl/escrow_total"
_CTX: Final = b"fl/ctx/"  # ckks: the key holder's PublishContext
_SA: Final = b"fl/sa/"  # secagg phase messages: job, round, phase, sender -> payload
_PHASE_TYPES: Final[dict[int, type[Canonical]]] = {
    ADVERTISE: AdvertiseKeys,
    SHARE: ShareKeys,
    UNMASK: UnmaskShares,
}


# ------------------------------------------------------------------ messages


class CreateJob(Canonical, frozen=True):
    name: str
    model: str  # trainer recipe for clients, e.g. "mlp:32" (cifer.compute.fl.trainers)
    input_shape: list[int]
    num_classes: int
    initial_model: bytes  # SHA-256 of the initial weights' safetensors blob
    rule: str  # built-in aggregation rule name
    rule_params: dict[str, str]  # parsed by the engine (no floats on chain)
    byzantine: int  # f, the number of Byzantine clients the rule must tolerate
    privacy: str
    rounds: int
    min_clients: int
    max_clients: int
    round_blocks: int  # deadline of a round, in blocks after it starts
    reward: int  # ucif escrowed from the creator
    min_reputation_ppm: int = 0
    allow_list: list[bytes] = msgspec.field(default_factory=list)
    purpose: str = "train"
    train: dict[str, str] = msgspec.field(
        default_factory=dict
    )  # local training hints for clients (epochs, lr, batch)
    proposer_fee_bps: int = 500
    #: Registered assets (datasets, works) the job trains on. The creator must own each,
    #: hold one of ``licences`` for it that allows ``purpose``, or have consent; every
    #: joining client must declare one of them and hold consent for it.
    assets: list[bytes] = msgspec.field(default_factory=list)
    licences: list[int] = msgspec.field(default_factory=list)
    #: Parameter count of the model: secagg and ckks vectors are checked against it.
    model_params: int = 0
    secagg: SecAggParams | None = None
    ckks: CkksParams | None = None  # None: the defaults of CkksParams
    #: Client-level DP (distributed noise; see fl_privacy): epsilon is recorded per round.
    dp: DpConfig | None = None


class JoinJob(Canonical, frozen=True):
    job_id: int
    #: The dataset the client trains on: a registered asset id (or its content hash), or
    #: the SHA-256 of a private dataset. Empty if undeclared (only in jobs without assets).
    dataset: bytes = b""
    #: X25519 public key the ckks key holder seals the job's secret context to.
    enc_key: bytes = b""


class SubmitUpdate(Canonical, frozen=True):
    job_id: int
    round: int
    update: bytes  # SHA-256 of the update blob (a model delta in safetensors)
    samples: int


class Aggregate(Canonical, frozen=True):
    """System message: the result of one round, recomputed by every validator."""

    job_id: int
    round: int
    model: bytes  # hash of the new global model blob
    clients: list[bytes]  # submitters, sorted by address (the canonical order)
    accepted: list[bool]
    agreement_ppm: list[int]  # cosine of each update with the aggregate, in [-1e6, 1e6]
    stragglers: list[bytes]
    epsilon_micro: int = 0  # dp jobs: cumulative epsilon after this round, rounded up
    #: secagg: clients the protocol blamed (tampered or inconsistent shares)
    blamed: list[bytes] = msgspec.field(default_factory=list)
    failure: str = ""  # secagg: why the sum could not be unmasked (the model stays)


# ------------------------------------------------------------------ state


class JobStatus:
    OPEN = 0  # waiting for min_clients
    RUNNING = 1
    CLOSING = 2  # round closed; the next block must carry its Aggregate
    DONE = 3
    KEYS = 4  # ckks: roster full, waiting for the key holder's PublishContext

    NAMES: ClassVar[dict[int, str]] = {
        0: "open",
        1: "running",
        2: "closing",
        3: "done",
        4: "keys",
    }


class Job(Canonical, frozen=True):
    id: int
    creator: bytes
    spec: CreateJob
    status: int
    round: int
    round_start: int  # height at which the current round opened
    model: bytes  # current global model hash
    escrow_left: int
    members: int
    created: int
    finished: int = 0
    phase: int = 0  # secagg: the current round's phase (fl_privacy.PHASES)
    phase_start: int = 0  # secagg phases and ckks key setup: height the step opened
    ckks_context: ContextInfo | None = None  # ckks: the published context
    epsilon_micro: int = 0  # dp: cumulative epsilon so far
    note: str = ""  # why a job ended early

    @property
    def deadline(self) -> int:
        """Last height at which the current round (secagg: phase) accepts messages."""
        return (self.phase_start or self.round_start) + self.spec.round_blocks - 1


class Member(Canonical, frozen=True):
    joined: int
    dataset: bytes
    enc_key: bytes = b""


class UpdateRecord(Canonical, frozen=True):
    update: bytes
    samples: int
    height: int


class RoundRecord(Canonical, frozen=True):
    round: int
    model: bytes
    clients: list[bytes]
    accepted: list[bool]
    agreement_ppm: list[int]
    stragglers: list[bytes]
    paid: list[int]  # to each of ``clients``
    proposer: bytes
    proposer_paid: int
    height: int
    epsilon_micro: int = 0
    blamed: list[bytes] = msgspec.field(default_factory=list)
    failure: str = ""


class Provenance(Canonical, frozen=True):
    """Minimal asset record of a job's final model (the registry extends it)."""

    asset_id: bytes  # empty if another party had already registered the same bytes
    job_id: int
    model: bytes
    initial_model: bytes
    round_models: list[bytes]
    contributors: list[bytes]
    height: int


class UpdateRef(msgspec.Struct, frozen=True):
    """One submitted update as the engine needs it."""

    client: bytes
    update: bytes
    samples: int
    reputation_ppm: int


class AggregateOutcome(msgspec.Struct, frozen=True):
    model: bytes
    accepted: list[bool]
    agreement_ppm: list[int]
    blamed: list[bytes] = msgspec.field(default_factory=list)
    failure: str = ""


class SecAggInputs(msgspec.Struct, frozen=True):
    """A secagg round's committed phase messages, as the engine unmasks them."""

    round: SecAggRound
    adverts: list[AdvertiseKeys]
    shares: list[ShareKeys]
    masked: list[UpdateRef]
    reveals: list[UnmaskShares]


class FlEngine(Protocol):
    """What the contract needs from outside state (blobs, NumPy): see cifer.app.fl_engine."""

    def check_update(
        self, job: Job, update: bytes, sender: bytes, secagg: tuple[SecAggRound, set[int]] | None
    ) -> str:
        """ "" if the blob is held (fetched if need be) and fits the job's model and
        privacy mode (secagg: the round and the dealers who shared keys), else why."""

    def check_model_size(self, spec: CreateJob) -> str:
        """ "" if the initial model blob has ``spec.model_params`` parameters, else why."""

    def check_context(self, job: Job, msg: PublishContext, enc_keys: dict[bytes, bytes]) -> str:
        """ "" if the ckks public context and the sealed key shares are usable, else why."""

    def aggregate(self, job: Job, updates: list[UpdateRef]) -> AggregateOutcome:
        """Run the job's rule (ckks: add the ciphertexts); store the result blob; raise
        SystemUnavailable."""

    def aggregate_secagg(self, job: Job, inputs: SecAggInputs) -> AggregateOutcome:
        """Unmask the exact sum, move the model on and store it; raise SystemUnavailable."""

    def epsilon_micro(self, dp: DpConfig, survivors: list[int]) -> int:
        """Cumulative epsilon of rounds with these numbers of contributions, rounded up."""


def _job_key(job_id: int) -> bytes:
    return _JOB + job_id.to_bytes(8, "big")


def _round_prefix(prefix: bytes, job_id: int, round_: int) -> bytes:
    return prefix + job_id.to_bytes(8, "big") + round_.to_bytes(4, "big")


def asset_id_for(chain_id: str, job_id: int, model: bytes) -> bytes:
    return hashlib.sha256(
        b"cifer/asset/v1\x00" + chain_id.encode() + job_id.to_bytes(8, "big") + model
    ).digest()


def capped_samples(samples: list[int]) -> list[int]:
    """Each count capped at twice the median (lower median): self-reports can't dominate."""
    if not samples:
        return []
    cap = 2 * sorted(samples)[(len(samples) - 1) // 2]
    return [min(s, cap) for s in samples]


def _optional(ctx: Context, typ: type[M]) -> M | None:
    try:
        return ctx.modules.get(typ)
    except KeyError:
        return None


def _reputation(ctx: Context) -> ReputationModule | None:
    try:
        return ctx.modules.get(ReputationModule)
    except KeyError:
        return None


class FlModule(Module):
    name: ClassVar[str] = "fl"
    msgs: ClassVar[dict[str, type[Canonical]]] = {
        "fl/CreateJob": CreateJob,
        "fl/JoinJob": JoinJob,
        "fl/SubmitUpdate": SubmitUpdate,
        "fl/SecAgg": SecAggMsg,
        "fl/PublishContext": PublishContext,
    }
    system_msgs: ClassVar[dict[str, type[Canonical]]] = {"fl/Aggregate": Aggregate}

    def __init__(self, engine: FlEngine | None = None) -> None:
        self.engine = engine

    # ------------------------------------------------------------ reads

    @staticmethod
    def job(state: StateOverlay, job_id: int) -> Job | None:
        raw = state.get(_job_key(job_id))
        return None if raw is None else _decode(raw, Job)

    @classmethod
    def jobs(cls, state: StateOverlay) -> list[Job]:
        return [_decode(raw, Job) for _, raw in state.iter_prefix(_JOB)]

    @staticmethod
    def member(state: StateOverlay, job_id: int, addr: bytes) -> Member | None:
        raw = state.get(_MEMBER + job_id.to_bytes(8, "big") + addr)
        return None if raw is None else _decode(raw, Member)

    @staticmethod
    def members(state: StateOverlay, job_id: int) -> list[bytes]:
        prefix = _MEMBER + job_id.to_bytes(8, "big")
        return [k[len(prefix) :] for k, _ in state.iter_prefix(prefix)]

    @staticmethod
    def updates(state: StateOverlay, job_id: int, round_: int) -> list[tuple[bytes, UpdateRecord]]:
        """Submitted updates of a round, sorted by client address (the canonical order)."""
        prefix = _round_prefix(_UPD, job_id, round_)
        return [
            (k[len(prefix) :], _decode(raw, UpdateRecord)) for k, raw in state.iter_prefix(prefix)
        ]

    @staticmethod
    def phase_msgs(state: StateOverlay, job_id: int, round_: int, phase: int) -> list[bytes]:
        """A secagg phase's committed payloads, in sender order."""
        prefix = _round_prefix(_SA, job_id, round_) + bytes([phase])
        return [raw for _, raw in state.iter_prefix(prefix)]

    @classmethod
    def phase_senders(
        cls, state: StateOverlay, job_id: int, round_: int, phase: int
    ) -> list[bytes]:
        if phase == INPUT:
            return [a for a, _ in cls.updates(state, job_id, round_)]
        prefix = _round_prefix(_SA, job_id, round_) + bytes([phase])
        return [k[len(prefix) :] for k, _ in state.iter_prefix(prefix)]

    def secagg_round(self, ctx: Context, job: Job) -> SecAggRound:
        spec = job.spec
        assert spec.secagg is not None
        return secagg_round(
            ctx.chain_id,
            job_id=job.id,
            round_=job.round,
            model=job.model,
            params=spec.secagg,
            roster=self.members(ctx.state, job.id),
            length=spec.model_params,
        )

    @classmethod
    def secagg_phase(cls, state: StateOverlay, job: Job, phase: int) -> list[Any]:
        typ = _PHASE_TYPES[phase]
        return [_decode(raw, typ) for raw in cls.phase_msgs(state, job.id, job.round, phase)]

    @staticmethod
    def context(state: StateOverlay, job_id: int) -> PublishContext | None:
        raw = state.get(_CTX + job_id.to_bytes(8, "big"))
        return None if raw is None else _decode(raw, PublishContext)

    @staticmethod
    def round_record(state: StateOverlay, job_id: int, round_: int) -> RoundRecord | None:
        raw = state.get(_round_prefix(_ROUND, job_id, round_))
        return None if raw is None else _decode(raw, RoundRecord)

    @staticmethod
    def provenance(state: StateOverlay, job_id: int) -> Provenance | None:
        raw = state.get(_PROV + job_id.to_bytes(8, "big"))
        return None if raw is None else _decode(raw, Provenance)

    # ------------------------------------------------------------ messages

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, CreateJob):
            _validate_create(msg)
        elif isinstance(msg, JoinJob):
            if msg.job_id < 1:
                raise MsgError("job_id must be >= 1", Code.INVALID_MSG)
            if msg.dataset and len(msg.dataset) != 32:
                raise MsgError("dataset must be a 32-byte SHA-256 or empty", Code.INVALID_MSG)
            if msg.enc_key:
                try:
                    check_enc_key(msg.enc_key)
                except PrivacyError as exc:
                    raise MsgError(str(exc), Code.INVALID_MSG) from None
        elif isinstance(msg, SecAggMsg):
            if msg.job_id < 1 or msg.round < 0:
                raise MsgError("job_id must be >= 1 and round >= 0", Code.INVALID_MSG)
            if msg.phase not in _PHASE_TYPES:
                raise MsgError(
                    "secagg phase must be 0 (advertise), 1 (share) or 3 (unmask); masked "
                    "input (2) is an update blob sent with fl/SubmitUpdate",
                    Code.INVALID_MSG,
                )
            if not 0 < len(msg.payload) <= MAX_PAYLOAD:
                raise MsgError(f"secagg payload must be 1..{MAX_PAYLOAD} bytes", Code.INVALID_MSG)
        elif isinstance(msg, PublishContext):
            if msg.job_id < 1 or len(msg.key_shares) != 32:
                raise MsgError(
                    "PublishContext needs job_id >= 1 and the 32-byte hash of the key bundle",
                    Code.INVALID_MSG,
                )
        elif isinstance(msg, SubmitUpdate):
            if msg.job_id < 1 or msg.round < 0:
                raise MsgError("job_id must be >= 1 and round >= 0", Code.INVALID_MSG)
            if len(msg.update) != 32:
                raise MsgError("update must be the 32-byte SHA-256 of its blob", Code.INVALID_MSG)
            if not 1 <= msg.samples <= MAX_SAMPLES:
                raise MsgError(f"samples must be in 1..{MAX_SAMPLES}", Code.INVALID_MSG)

    def admissible(self, ctx: Context, msg: Canonical, sender: bytes) -> str:
        if self.engine is None:
            return ""
        if isinstance(msg, CreateJob):
            if msg.privacy == PLAIN:
                return ""
            return self.engine.check_model_size(msg)
        if not isinstance(msg, SubmitUpdate | PublishContext):
            return ""
        job = self.job(ctx.state, msg.job_id)
        if job is None:
            return ""  # handle() rejects an unknown job deterministically
        if isinstance(msg, PublishContext):
            if job.spec.privacy != CKKS or job.status != JobStatus.KEYS:
                return ""  # handle() says why
            keys = {a: self._enc_key(ctx.state, job.id, a) for a in self.members(ctx.state, job.id)}
            return self.engine.check_context(job, msg, keys)
        secagg = None
        if job.spec.privacy == SECAGG:
            if job.status != JobStatus.RUNNING or msg.round != job.round or job.phase != INPUT:
                return ""  # handle() says why
            rnd = self.secagg_round(ctx, job)
            dealt = {
                rnd.index[a]
                for a in self.phase_senders(ctx.state, job.id, job.round, SHARE)
                if a in rnd.index
            }
            secagg = (rnd, dealt)
        return self.engine.check_update(job, msg.update, sender, secagg)

    def _enc_key(self, state: StateOverlay, job_id: int, addr: bytes) -> bytes:
        m = self.member(state, job_id, addr)
        return b"" if m is None else m.enc_key

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, CreateJob):
            self._create(ctx, msg, sender)
        elif isinstance(msg, JoinJob):
            self._join(ctx, msg, sender)
        elif isinstance(msg, SubmitUpdate):
            self._submit(ctx, msg, sender)
        elif isinstance(msg, SecAggMsg):
            self._secagg_msg(ctx, msg, sender)
        elif isinstance(msg, PublishContext):
            self._publish_context(ctx, msg, sender)
        else:
            raise MsgError(f"fl does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)

    def _create(self, ctx: Context, msg: CreateJob, sender: bytes) -> None:
        state = ctx.state
        job_id = state.get_int(_NEXT, 1)
        self._use_assets(ctx, msg, job_id, sender)
        BankModule.transfer(ctx, sender, ESCROW, msg.reward, what="job reward escrow")
        state.set_int(_NEXT, job_id + 1)
        state.set_int(_ESCROW_TOTAL, state.get_int(_ESCROW_TOTAL) + msg.reward)
        job = Job(
            id=job_id,
            creator=sender,
            spec=msg,
            status=JobStatus.OPEN,
            round=0,
            round_start=0,
            model=msg.initial_model,
            escrow_left=msg.reward,
            members=0,
            created=ctx.height,
        )
        self._put(state, job)
        state.set(_ACTIVE + job_id.to_bytes(8, "big"), b"\x01")
        ctx.emit("fl_job_created", job_id=job_id, creator=sender, reward=msg.reward, rule=msg.rule)

    def _use_assets(self, ctx: Context, msg: CreateJob, job_id: int, creator: bytes) -> None:
        """Check the creator may use each declared asset for the job's purpose; record the
        use (and pay its royalty) on each licence that grants it."""
        if not msg.assets:
            return
        state = ctx.state
        licensing = _optional(ctx, LicensingModule)
        licences = {}
        for lid in msg.licences:
            lic = LicensingModule.licence(state, lid) if licensing else None
            if lic is None:
                raise MsgError(f"unknown licence {lid}", Code.NOT_FOUND)
            if lic.asset_id not in msg.assets:
                raise MsgError(
                    f"licence {lid} is for asset {lic.asset_id.hex()}, which the job does not "
                    "declare"
                )
            licences[lic.asset_id] = lic
        for asset_id in msg.assets:
            asset = RegistryModule.require(state, asset_id)
            lic = licences.get(asset_id)
            if lic is not None:
                assert licensing is not None
                licensing.record_usage(ctx, lic.id, msg.purpose, f"fl/job/{job_id}", creator)
                continue
            if asset.owner == creator:
                continue
            if ConsentModule.find(state, asset_id, msg.purpose, creator, job_id, ctx.height):
                continue
            raise MsgError(
                f"cannot create a job for purpose {msg.purpose!r} over asset {asset_id.hex()}: "
                f"{to_bech32(creator)} neither owns it nor lists a licence for it, and "
                + ConsentModule.explain_missing(
                    state, asset_id, msg.purpose, creator, job_id, ctx.height
                ),
                Code.UNAUTHORIZED,
            )

    def _dataset_asset(self, ctx: Context, dataset: bytes) -> bytes | None:
        """The registered asset a declared dataset is (by id or content hash), if any."""
        if not dataset:
            return None
        state = ctx.state
        if RegistryModule.asset(state, dataset) is not None:
            return dataset
        return RegistryModule.by_content(state, dataset)

    def _check_consent(self, ctx: Context, job: Job, dataset: bytes, client: bytes) -> None:
        asset_id = self._dataset_asset(ctx, dataset)
        if job.spec.assets and (asset_id is None or asset_id not in job.spec.assets):
            what = "no dataset" if not dataset else f"dataset {dataset.hex()}"
            raise MsgError(
                f"cannot join job {job.id}: it trains on {len(job.spec.assets)} declared "
                f"asset(s) and the client declares {what}, which is not one of them",
                Code.UNAUTHORIZED,
            )
        if asset_id is None:
            return  # a private dataset: the client is its own data owner
        state = ctx.state
        asset = RegistryModule.require(state, asset_id)
        if asset.owner == client:
            return
        purpose = job.spec.purpose
        if ConsentModule.find(state, asset_id, purpose, client, job.id, ctx.height) is None:
            raise MsgError(
                f"cannot join job {job.id} with asset {asset_id.hex()} for purpose "
                f"{purpose!r}: "
                + ConsentModule.explain_missing(
                    state, asset_id, purpose, client, job.id, ctx.height
                ),
                Code.UNAUTHORIZED,
            )

    def _join(self, ctx: Context, msg: JoinJob, sender: bytes) -> None:
        state = ctx.state
        job = self._require_job(state, msg.job_id)
        if job.status == JobStatus.DONE:
            raise MsgError(f"job {job.id} is finished")
        private = job.spec.privacy != PLAIN
        if private and job.status != JobStatus.OPEN:
            raise MsgError(
                f"job {job.id} is {job.spec.privacy}: its roster was fixed when it started"
            )
        if job.spec.privacy == CKKS and not msg.enc_key:
            raise MsgError(
                f"job {job.id} is ckks: JoinJob must carry an enc_key (X25519) for the "
                "key holder to seal the job's secret key to",
                Code.INVALID_MSG,
            )
        if self.member(state, job.id, sender) is not None:
            raise MsgError(f"{to_bech32(sender)} already joined job {job.id}")
        if job.members >= job.spec.max_clients:
            raise MsgError(f"job {job.id} is full ({job.spec.max_clients} clients)")
        if job.spec.allow_list and sender not in job.spec.allow_list:
            raise MsgError(
                f"{to_bech32(sender)} is not on job {job.id}'s allow-list", Code.UNAUTHORIZED
            )
        rep = _reputation(ctx)
        if rep is not None:
            reason = rep.can_join(state, sender, job.spec.min_reputation_ppm)
            if reason:
                raise MsgError(f"cannot join job {job.id}: {reason}", Code.UNAUTHORIZED)
        self._check_consent(ctx, job, msg.dataset, sender)
        state.set_obj(
            _MEMBER + job.id.to_bytes(8, "big") + sender,
            Member(ctx.height, msg.dataset, msg.enc_key),
        )
        self._put(state, msgspec.structs.replace(job, members=job.members + 1))
        ctx.emit("fl_join", job_id=job.id, client=sender)

    def _submit(self, ctx: Context, msg: SubmitUpdate, sender: bytes) -> None:
        state = ctx.state
        job = self._require_job(state, msg.job_id)
        if job.status != JobStatus.RUNNING:
            what = "has not started" if job.status == JobStatus.OPEN else "is not taking updates"
            raise MsgError(f"job {job.id} {what} (status {JobStatus.NAMES[job.status]})")
        if msg.round != job.round:
            raise MsgError(
                f"round {msg.round} of job {job.id} is "
                f"{'closed' if msg.round < job.round else 'not open yet'}; "
                f"the current round is {job.round}"
            )
        if job.spec.privacy == SECAGG and job.phase != INPUT:
            raise MsgError(
                f"job {job.id} round {job.round} is in secagg phase {PHASES[job.phase]}; "
                "masked input is taken in phase input"
            )
        if ctx.height > job.deadline:
            raise MsgError(f"round {job.round} of job {job.id} closed at height {job.deadline}")
        if self.member(state, job.id, sender) is None:
            raise MsgError(f"{to_bech32(sender)} has not joined job {job.id}", Code.UNAUTHORIZED)
        if job.spec.privacy == SECAGG and sender not in self.phase_senders(
            state, job.id, job.round, SHARE
        ):
            raise MsgError(
                f"{to_bech32(sender)} did not share its keys in round {job.round}, so its "
                "masked input could not be unmasked"
            )
        key = _round_prefix(_UPD, job.id, job.round) + sender
        if state.has(key):
            raise MsgError(f"{to_bech32(sender)} already submitted for round {job.round}")
        state.set_obj(key, UpdateRecord(msg.update, msg.samples, ctx.height))
        ctx.emit("fl_update", job_id=job.id, round=job.round, client=sender, update=msg.update)

    def _secagg_msg(self, ctx: Context, msg: SecAggMsg, sender: bytes) -> None:
        """Admit one secagg phase message with the protocol's own checks (deterministic:
        hashes and X25519 only), so a malformed one is refused with its reason."""
        state = ctx.state
        job = self._require_job(state, msg.job_id)
        if job.spec.privacy != SECAGG:
            raise MsgError(f"job {job.id} is {job.spec.privacy}, not secagg")
        if job.status != JobStatus.RUNNING or msg.round != job.round:
            raise MsgError(
                f"job {job.id} is not in round {msg.round} (status "
                f"{JobStatus.NAMES[job.status]}, round {job.round})"
            )
        name = PHASES[msg.phase]
        if msg.phase != job.phase:
            raise MsgError(
                f"secagg phase {name} of job {job.id} round {job.round} is "
                f"{'closed' if msg.phase < job.phase else 'not open yet'}; "
                f"the current phase is {PHASES[job.phase]}"
            )
        if ctx.height > job.deadline:
            raise MsgError(f"secagg phase {name} closed at height {job.deadline}")
        if self.member(state, job.id, sender) is None:
            raise MsgError(f"{to_bech32(sender)} has not joined job {job.id}", Code.UNAUTHORIZED)
        key = _round_prefix(_SA, job.id, job.round) + bytes([msg.phase]) + sender
        if state.has(key):
            raise MsgError(f"{to_bech32(sender)} already sent its {name} message this round")
        try:
            inner = encoding.decode(msg.payload, _PHASE_TYPES[msg.phase])
        except EncodingError as exc:
            raise MsgError(f"secagg {name}: malformed payload: {exc}", Code.INVALID_MSG) from None
        inner_sender = bytes(getattr(inner, "sender", b""))
        if inner_sender != sender:
            raise MsgError(
                f"secagg {name}: the message names sender {inner_sender.hex()[:16]}…, "
                f"but {to_bech32(sender)} signed it",
                Code.UNAUTHORIZED,
            )
        rnd = self.secagg_round(ctx, job)
        try:
            if isinstance(inner, AdvertiseKeys):
                check_advertise(rnd, inner)
            elif isinstance(inner, ShareKeys):
                adverts = {
                    rnd.index[bytes(a.sender)]: a for a in self.secagg_phase(state, job, ADVERTISE)
                }
                check_share_keys(rnd, adverts, inner)
            else:
                assert isinstance(inner, UnmaskShares)
                dealt = {
                    rnd.index[bytes(d.sender)]: d for d in self.secagg_phase(state, job, SHARE)
                }
                survivors = {
                    rnd.index[a] for a in self.phase_senders(state, job.id, job.round, INPUT)
                }
                check_unmask(rnd, dealt, survivors, inner)
        except MessageError as exc:
            raise MsgError(f"secagg {name}: {exc}", Code.INVALID_MSG) from None
        state.set(key, msg.payload)
        ctx.emit("fl_secagg", job_id=job.id, round=job.round, phase=name, client=sender)

    def _publish_context(self, ctx: Context, msg: PublishContext, sender: bytes) -> None:
        state = ctx.state
        job = self._require_job(state, msg.job_id)
        if job.spec.privacy != CKKS:
            raise MsgError(f"job {job.id} is {job.spec.privacy}, not ckks")
        if job.status != JobStatus.KEYS:
            raise MsgError(f"job {job.id} is not waiting for its keys")
        holder = key_holder(self.members(state, job.id))
        if sender != holder:
            raise MsgError(
                f"job {job.id}'s key holder is {to_bech32(holder)} (the member with the "
                "smallest address)",
                Code.UNAUTHORIZED,
            )
        if msg.info.params != (job.spec.ckks or CkksParams()):
            raise MsgError(f"the context's CKKS parameters are not job {job.id}'s")
        state.set_obj(_CTX + job.id.to_bytes(8, "big"), msg)
        self._put(
            state,
            msgspec.structs.replace(
                job,
                status=JobStatus.RUNNING,
                ckks_context=msg.info,
                round_start=ctx.height + 1,
                phase_start=0,
            ),
        )
        ctx.emit(
            "fl_context",
            job_id=job.id,
            context=msg.info.context_id,
            public_context=msg.info.public_context_sha256,
            key_shares=msg.key_shares,
        )
        ctx.emit(
            "fl_round_open", job_id=job.id, round=0, deadline=ctx.height + job.spec.round_blocks
        )

    # ------------------------------------------------------------ rounds

    @classmethod
    def active_jobs(cls, state: StateOverlay) -> list[Job]:
        """Jobs not yet done, through their index (so blocks never scan finished jobs)."""
        out = []
        for key, _ in state.iter_prefix(_ACTIVE):
            job = cls.job(state, int.from_bytes(key[len(_ACTIVE) :], "big"))
            if job is None:
                raise InvariantViolation(f"fl: active index names a missing job {key!r}")
            out.append(job)
        return out

    def end_block(self, ctx: Context) -> list[Any]:
        state = ctx.state
        for job in self.active_jobs(state):
            if job.status == JobStatus.OPEN and job.members >= job.spec.min_clients:
                if job.spec.privacy == CKKS:
                    self._put(
                        state,
                        msgspec.structs.replace(
                            job, status=JobStatus.KEYS, phase_start=ctx.height + 1
                        ),
                    )
                    holder = key_holder(self.members(state, job.id))
                    ctx.emit("fl_keys_wanted", job_id=job.id, holder=holder)
                    continue
                secagg = job.spec.privacy == SECAGG
                self._put(
                    state,
                    msgspec.structs.replace(
                        job,
                        status=JobStatus.RUNNING,
                        round_start=ctx.height + 1,
                        phase=ADVERTISE,
                        phase_start=ctx.height + 1 if secagg else 0,
                    ),
                )
                ctx.emit(
                    "fl_round_open",
                    job_id=job.id,
                    round=0,
                    deadline=ctx.height + job.spec.round_blocks,
                )
            elif job.status == JobStatus.KEYS and ctx.height >= job.deadline:
                self._fail(
                    ctx,
                    job,
                    f"the key holder {to_bech32(key_holder(self.members(state, job.id)))} "
                    f"did not publish the ckks context by height {job.deadline}",
                )
            elif job.status == JobStatus.RUNNING and job.spec.privacy == SECAGG:
                self._secagg_step(ctx, job)
            elif job.status == JobStatus.RUNNING:
                submitted = len(self.updates(state, job.id, job.round))
                if submitted >= job.members or ctx.height >= job.deadline:
                    if submitted > 0:
                        self._put(state, msgspec.structs.replace(job, status=JobStatus.CLOSING))
                        ctx.emit(
                            "fl_round_closed", job_id=job.id, round=job.round, updates=submitted
                        )
                    else:
                        self._empty_round(ctx, job)
        return []

    def _secagg_step(self, ctx: Context, job: Job) -> None:
        """Close the current phase when everyone expected has spoken or its deadline
        passed; a round whose phase ends with fewer than ``threshold`` participants
        cannot be unmasked and closes empty."""
        state = ctx.state
        phase = job.phase
        expected = (
            self.members(state, job.id)
            if phase == ADVERTISE
            else self.phase_senders(state, job.id, job.round, phase - 1)
        )
        got = self.phase_senders(state, job.id, job.round, phase)
        if len(got) < len(expected) and ctx.height < job.deadline:
            return
        assert job.spec.secagg is not None
        need = job.spec.secagg.threshold
        if phase == UNMASK:
            self._put(state, msgspec.structs.replace(job, status=JobStatus.CLOSING))
            ctx.emit("fl_round_closed", job_id=job.id, round=job.round, updates=len(expected))
            return
        if len(got) < need:
            ctx.emit(
                "fl_round_failed",
                job_id=job.id,
                round=job.round,
                reason=f"only {len(got)} clients completed secagg phase {PHASES[phase]}, "
                f"fewer than the threshold {need}",
            )
            done = set(got)
            self._empty_round(ctx, job, [a for a in self.members(state, job.id) if a not in done])
            return
        self._put(state, msgspec.structs.replace(job, phase=phase + 1, phase_start=ctx.height + 1))
        ctx.emit("fl_secagg_phase", job_id=job.id, round=job.round, phase=PHASES[phase + 1])

    def _fail(self, ctx: Context, job: Job, reason: str) -> None:
        """End a job early: refund what is left in escrow and say why."""
        state = ctx.state
        if job.escrow_left > 0:
            BankModule.transfer(ctx, ESCROW, job.creator, job.escrow_left, what="escrow refund")
            state.set_int(_ESCROW_TOTAL, state.get_int(_ESCROW_TOTAL) - job.escrow_left)
        self._put(
            state,
            msgspec.structs.replace(
                job, status=JobStatus.DONE, escrow_left=0, finished=ctx.height, note=reason
            ),
        )
        state.delete(_ACTIVE + job.id.to_bytes(8, "big"))
        ctx.emit("fl_job_failed", job_id=job.id, reason=reason)

    def _empty_round(self, ctx: Context, job: Job, stragglers: list[bytes] | None = None) -> None:
        if stragglers is None:
            stragglers = self.members(ctx.state, job.id)
        rep = _reputation(ctx)
        if rep is not None:
            for a in stragglers:
                rep.record(ctx, a, RepEvent.CLIENT_STRAGGLER, job_id=job.id, round=job.round)
        record = RoundRecord(job.round, job.model, [], [], [], stragglers, [], b"", 0, ctx.height)
        ctx.state.set_obj(_round_prefix(_ROUND, job.id, job.round), record)
        ctx.emit("fl_round_empty", job_id=job.id, round=job.round)
        self._advance(ctx, job, job.model)

    def _advance(self, ctx: Context, job: Job, model: bytes) -> None:
        nxt = job.round + 1
        if nxt < job.spec.rounds:
            self._put(
                ctx.state,
                msgspec.structs.replace(
                    job,
                    status=JobStatus.RUNNING,
                    round=nxt,
                    round_start=ctx.height + 1,
                    model=model,
                    phase=ADVERTISE,
                    phase_start=ctx.height + 1 if job.spec.privacy == SECAGG else 0,
                ),
            )
            return
        self._finish(ctx, msgspec.structs.replace(job, model=model))

    def _finish(self, ctx: Context, job: Job) -> None:
        state = ctx.state
        if job.escrow_left > 0:
            BankModule.transfer(ctx, ESCROW, job.creator, job.escrow_left, what="escrow refund")
            state.set_int(_ESCROW_TOTAL, state.get_int(_ESCROW_TOTAL) - job.escrow_left)
        rounds = [self.round_record(state, job.id, r) for r in range(job.spec.rounds)]
        contributors = sorted(
            {
                c
                for rec in rounds
                if rec is not None
                for c, ok in zip(rec.clients, rec.accepted, strict=True)
                if ok
            }
        )
        asset = self._register_model(ctx, job, rounds, contributors)
        prov = Provenance(
            asset_id=asset,
            job_id=job.id,
            model=job.model,
            initial_model=job.spec.initial_model,
            round_models=[rec.model for rec in rounds if rec is not None],
            contributors=contributors,
            height=ctx.height,
        )
        state.set_obj(_PROV + job.id.to_bytes(8, "big"), prov)
        self._put(
            state,
            msgspec.structs.replace(job, status=JobStatus.DONE, escrow_left=0, finished=ctx.height),
        )
        state.delete(_ACTIVE + job.id.to_bytes(8, "big"))
        ctx.emit("fl_job_done", job_id=job.id, model=job.model, asset=asset)

    def _register_model(
        self,
        ctx: Context,
        job: Job,
        rounds: list[RoundRecord | None],
        contributors: list[bytes],
    ) -> bytes:
        """Register the final model as an asset with its lineage; return its asset id.

        trained-on edges go to the job's assets and to the registered datasets its accepted
        clients declared; contributed-by edges to those clients, weighted (bps) by the
        rewards they earned (by accepted rounds if the job paid nothing); derived-from to
        the initial model if it is a registered asset.
        """
        registry = _optional(ctx, RegistryModule)
        if registry is None:
            return asset_id_for(ctx.chain_id, job.id, job.model)
        state = ctx.state
        initial = RegistryModule.by_content(state, job.spec.initial_model)
        init_asset = None if initial is None else RegistryModule.asset(state, initial)
        if init_asset is None or init_asset.status != AssetStatus.REGISTERED:
            initial = None  # a pending registration is no parent yet: it may still expire
        asset_id = registry.register_derived(
            ctx,
            kind="model",
            content_hash=job.model,
            meta=AssetMeta(
                name=f"{job.spec.name[:100]} (fl job {job.id})",
                # under ckks the chain holds the last encrypted aggregate, not the model
                media_type="ckks-aggregate" if job.spec.privacy == CKKS else "safetensors",
            ),
            owner=job.creator,
            origin=f"fl/job/{job.id}",
            parents=[initial] if initial is not None else [],
        )
        if asset_id is None:  # the model did not move, or is already an asset
            existing = RegistryModule.by_content(state, job.model)
            assert existing is not None
            found = RegistryModule.asset(state, existing)
            if found is not None and found.owner == job.creator:
                return existing  # the creator's own asset (e.g. an unmoved initial model)
            # someone else registered these bytes first (a client can compute the final
            # aggregate before it is applied): do not link the job to their asset
            ctx.emit("fl_model_not_registered", job_id=job.id, model=job.model, asset=existing)
            return b""
        datasets = list(job.spec.assets)
        for c in contributors:
            m = self.member(state, job.id, c)
            d = self._dataset_asset(ctx, m.dataset) if m is not None else None
            if d is not None and d not in datasets:
                datasets.append(d)
        for d in datasets:
            RegistryModule.add_edge(ctx, EdgeKind.TRAINED_ON, asset_id, d)
        earned = dict.fromkeys(contributors, 0)
        accepted = dict.fromkeys(contributors, 0)
        for rec in rounds:
            if rec is None:
                continue
            for c, ok, paid in zip(rec.clients, rec.accepted, rec.paid, strict=True):
                if ok:
                    earned[c] += paid
                    accepted[c] += 1
        weights = earned if sum(earned.values()) > 0 else accepted
        total = sum(weights.values())
        for c in contributors:
            bps = weights[c] * BPS // total if total else 0
            RegistryModule.add_edge(ctx, EdgeKind.CONTRIBUTED_BY, asset_id, c, bps)
        return asset_id

    # ------------------------------------------------------------ proof of aggregation

    def propose_system(self, ctx: Context) -> list[Canonical]:
        jobs = [j for j in self.active_jobs(ctx.state) if j.status == JobStatus.CLOSING]
        if not jobs:
            return []
        if self.engine is None:
            raise SystemUnavailable("this node has no FL engine to compute aggregates")
        rep = _reputation(ctx)
        out: list[Canonical] = []
        for job in jobs:
            ups = self.updates(ctx.state, job.id, job.round)
            refs = [
                UpdateRef(a, u.update, u.samples, rep.score(ctx.state, a) if rep else 1_000_000)
                for a, u in ups
            ]
            if job.spec.privacy == SECAGG:
                inputs = SecAggInputs(
                    self.secagg_round(ctx, job),
                    self.secagg_phase(ctx.state, job, ADVERTISE),
                    self.secagg_phase(ctx.state, job, SHARE),
                    refs,
                    self.secagg_phase(ctx.state, job, UNMASK),
                )
                outcome = self.engine.aggregate_secagg(job, inputs)
            else:
                outcome = self.engine.aggregate(job, refs)
            clients = [a for a, _ in ups]
            done = set(clients)
            stragglers = [a for a in self.members(ctx.state, job.id) if a not in done]
            eps = job.epsilon_micro
            if job.spec.dp is not None and not outcome.failure:
                eps = self.engine.epsilon_micro(
                    job.spec.dp, [*self._past_contributions(ctx.state, job), sum(outcome.accepted)]
                )
            out.append(
                Aggregate(
                    job.id,
                    job.round,
                    outcome.model,
                    clients,
                    list(outcome.accepted),
                    list(outcome.agreement_ppm),
                    stragglers,
                    eps,
                    list(outcome.blamed),
                    outcome.failure,
                )
            )
        return out

    def _past_contributions(self, state: StateOverlay, job: Job) -> list[int]:
        """Accepted updates per earlier round that produced an aggregate (for the accountant)."""
        out = []
        for r in range(job.round):
            rec = self.round_record(state, job.id, r)
            if rec is not None and rec.clients and not rec.failure:
                out.append(sum(rec.accepted))
        return out

    def system_matches(self, got: Canonical, expected: Canonical) -> bool:
        """Aggregates must be identical except for epsilon, which may differ by 1 micro-
        epsilon (floating-point special functions in the accountant; see fl_privacy)."""
        if isinstance(got, Aggregate) and isinstance(expected, Aggregate):
            # only an epsilon the accountant computed (dp, a round that aggregated) has
            # slack; one copied from state (no dp: 0, a failed round) must match exactly
            computed = expected.epsilon_micro > 0 and not expected.failure
            eps_ok = (
                epsilon_close(got.epsilon_micro, expected.epsilon_micro)
                if computed
                else got.epsilon_micro == expected.epsilon_micro
            )
            return eps_ok and encoding.encode(
                msgspec.structs.replace(got, epsilon_micro=0)
            ) == encoding.encode(msgspec.structs.replace(expected, epsilon_micro=0))
        return super().system_matches(got, expected)

    def handle_system(self, ctx: Context, msg: Canonical) -> None:
        if not isinstance(msg, Aggregate):
            raise MsgError(f"fl has no system message {type(msg).__name__}", Code.UNKNOWN_MSG)
        state = ctx.state
        job = self._require_job(state, msg.job_id)
        if job.status != JobStatus.CLOSING or job.round != msg.round:
            raise MsgError(f"job {job.id} round {msg.round} is not awaiting its aggregate")
        ups = self.updates(state, job.id, job.round)
        if [a for a, _ in ups] != msg.clients:
            raise MsgError("aggregate lists other clients than those who submitted")
        n = len(ups)
        if len(msg.accepted) != n or len(msg.agreement_ppm) != n or len(msg.model) != 32:
            raise MsgError("aggregate fields do not match the number of submitted updates")
        if msg.failure and (any(msg.accepted) or msg.model != job.model):
            raise MsgError("a failed aggregate accepts no update and keeps the model")
        if job.spec.dp is None and msg.epsilon_micro:
            raise MsgError("aggregate reports epsilon for a job without dp")
        if msg.epsilon_micro < job.epsilon_micro:
            raise MsgError("epsilon cannot decrease")
        rep = _reputation(ctx)
        samples = capped_samples([u.samples for _, u in ups])
        # rewards
        rounds_left = job.spec.rounds - job.round
        share = job.escrow_left // rounds_left
        fee = share * job.spec.proposer_fee_bps // 10_000
        pool = share - fee
        weights = [
            (rep.score(state, a) if rep else 1_000_000) * s if ok else 0
            for (a, _), s, ok in zip(ups, samples, msg.accepted, strict=True)
        ]
        total_w = sum(weights)
        paid = [pool * w // total_w for w in weights] if total_w else [0] * n
        # remainders of the integer split go to the proposer; with no accepted client
        # the pool stays in escrow for later rounds (or the creator's refund)
        proposer_paid = fee + (pool - sum(paid) if total_w else 0)
        proposer = ctx.proposer
        if len(proposer) != ADDRESS_LEN:
            proposer_paid = 0
        for (a, _), amount in zip(ups, paid, strict=True):
            if amount:
                BankModule.transfer(ctx, ESCROW, a, amount, what="fl reward")
        if proposer_paid:
            BankModule.transfer(ctx, ESCROW, proposer, proposer_paid, what="aggregation fee")
        spent = sum(paid) + proposer_paid
        state.set_int(_ESCROW_TOTAL, state.get_int(_ESCROW_TOTAL) - spent)
        job = msgspec.structs.replace(job, escrow_left=job.escrow_left - spent)
        # reputation
        if rep is not None:
            for (a, _), ok, agree in zip(ups, msg.accepted, msg.agreement_ppm, strict=True):
                if ok:
                    target = 1_000_000 if agree >= 0 else 500_000
                    rep.record(
                        ctx,
                        a,
                        RepEvent.CLIENT_ACCEPTED,
                        value_ppm=target,
                        job_id=job.id,
                        round=job.round,
                    )
                else:
                    rep.record(ctx, a, RepEvent.CLIENT_REJECTED, job_id=job.id, round=job.round)
            for a in msg.stragglers:
                rep.record(ctx, a, RepEvent.CLIENT_STRAGGLER, job_id=job.id, round=job.round)
            members = set(self.members(state, job.id))
            for a in sorted(set(msg.blamed) & (members - set(msg.clients))):
                rep.record(ctx, a, RepEvent.CLIENT_REJECTED, job_id=job.id, round=job.round)
        job = msgspec.structs.replace(job, epsilon_micro=msg.epsilon_micro)
        record = RoundRecord(
            job.round,
            msg.model,
            msg.clients,
            msg.accepted,
            msg.agreement_ppm,
            msg.stragglers,
            paid,
            proposer,
            proposer_paid,
            ctx.height,
            msg.epsilon_micro,
            msg.blamed,
            msg.failure,
        )
        state.set_obj(_round_prefix(_ROUND, job.id, job.round), record)
        ctx.emit(
            "fl_aggregate",
            job_id=job.id,
            round=job.round,
            model=msg.model,
            accepted=sum(msg.accepted),
            rejected=n - sum(msg.accepted),
            stragglers=len(msg.stragglers),
            epsilon_micro=msg.epsilon_micro,
            failure=msg.failure,
        )
        self._advance(ctx, job, msg.model)

    # ------------------------------------------------------------ helpers

    def invariants(self, ctx: Context) -> None:
        total = ctx.state.get_int(_ESCROW_TOTAL)
        held = BankModule.balance(ctx.state, ESCROW)
        if total != held:
            raise InvariantViolation(
                f"fl escrow: jobs hold {total} ucif but the escrow account has {held} ucif"
            )

    @staticmethod
    def _put(state: StateOverlay, job: Job) -> None:
        state.set_obj(_job_key(job.id), job)

    def _require_job(self, state: StateOverlay, job_id: int) -> Job:
        job = self.job(state, job_id)
        if job is None:
            raise MsgError(f"no job {job_id}", Code.NOT_FOUND)
        return job


def _decode(raw: bytes, typ: type[Any]) -> Any:
    return encoding.decode(raw, typ)


def _validate_create(msg: CreateJob) -> None:
    def bad(text: str) -> MsgError:
        return MsgError(f"CreateJob: {text}", Code.INVALID_MSG)

    if not msg.name or len(msg.name) > MAX_TEXT:
        raise bad(f"name must be 1..{MAX_TEXT} characters")
    if not msg.model or len(msg.model) > MAX_TEXT:
        raise bad("model must name a trainer recipe, e.g. 'mlp:32'")
    if not msg.input_shape or len(msg.input_shape) > 4 or min(msg.input_shape) < 1:
        raise bad("input_shape must be 1 to 4 positive integers")
    if not 2 <= msg.num_classes <= 100_000:
        raise bad("num_classes must be in 2..100000")
    if len(msg.initial_model) != 32:
        raise bad("initial_model must be the 32-byte SHA-256 of the initial weights blob")
    from cifer.app.fl_engine import onchain_rule

    try:
        onchain_rule(msg.rule)
    except ValueError as exc:
        raise bad(str(exc)) from None
    for d, label in ((msg.rule_params, "rule_params"), (msg.train, "train")):
        if len(d) > MAX_PARAM_ENTRIES or any(
            len(k) > 64 or len(v) > MAX_TEXT for k, v in d.items()
        ):
            raise bad(f"{label}: at most {MAX_PARAM_ENTRIES} short entries")
    try:
        validate_job(
            privacy=msg.privacy,
            rule=onchain_rule(msg.rule),
            min_clients=msg.min_clients,
            max_clients=msg.max_clients,
            rounds=msg.rounds,
            model_params=msg.model_params,
            secagg=msg.secagg,
            ckks=msg.ckks,
            dp=msg.dp,
        )
    except PrivacyError as exc:
        raise bad(str(exc)) from None
    if not 0 <= msg.model_params <= 10**9:
        raise bad("model_params must be in 0..10^9")
    if not 1 <= msg.rounds <= MAX_ROUNDS:
        raise bad(f"rounds must be in 1..{MAX_ROUNDS}")
    if not 1 <= msg.min_clients <= msg.max_clients <= MAX_CLIENTS:
        raise bad(f"need 1 <= min_clients <= max_clients <= {MAX_CLIENTS}")
    if not 0 <= msg.byzantine < msg.min_clients:
        raise bad("byzantine must be >= 0 and below min_clients")
    if not 1 <= msg.round_blocks <= 100_000:
        raise bad("round_blocks must be in 1..100000")
    if not 0 < msg.reward <= TOTAL_SUPPLY:
        raise bad("reward must be a positive amount of ucif")
    if not 0 <= msg.min_reputation_ppm <= 1_000_000:
        raise bad("min_reputation_ppm must be in 0..1000000")
    if len(msg.allow_list) > MAX_ALLOW_LIST or any(len(a) != ADDRESS_LEN for a in msg.allow_list):
        raise bad(f"allow_list: at most {MAX_ALLOW_LIST} {ADDRESS_LEN}-byte addresses")
    check_purpose(msg.purpose, "CreateJob: purpose")
    if len(msg.assets) > MAX_JOB_ASSETS or len(set(msg.assets)) != len(msg.assets):
        raise bad(f"assets: at most {MAX_JOB_ASSETS} distinct asset ids")
    if any(len(a) != 32 for a in msg.assets):
        raise bad("assets are 32-byte asset ids")
    if len(msg.licences) > MAX_JOB_ASSETS or len(set(msg.licences)) != len(msg.licences):
        raise bad(f"licences: at most {MAX_JOB_ASSETS} distinct licence ids")
    if msg.licences and not msg.assets:
        raise bad("licences are given for the job's assets, and the job declares none")
    if not 0 <= msg.proposer_fee_bps <= 10_000:
        raise bad("proposer_fee_bps must be in 0..10000")
    _check_rule_runs(msg)


def _check_rule_runs(msg: CreateJob) -> None:
    """Refuse a job whose rule cannot run with its own parameters on min_clients updates
    (unknown parameter names, Krum with n < 2f + 3 ...): better now than at round 0."""
    import numpy as np

    from cifer.app.fl_engine import onchain_rule, parse_params
    from cifer.compute.fl.aggregators.base import AggContext, AggregationError
    from cifer.compute.fl.aggregators.registry import aggregate

    n = msg.min_clients
    ctx = AggContext(
        f=msg.byzantine,
        params=parse_params(msg.rule_params),
        reputation=np.full(n, 1_000_000, dtype=np.int64),
        rng=np.random.default_rng(0),
    )
    rows = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    try:
        aggregate(onchain_rule(msg.rule), rows, np.ones(n), ctx, allow_plugins=False)
    except (AggregationError, ValueError, TypeError) as exc:
        raise MsgError(
            f"CreateJob: rule {msg.rule!r} cannot run on {n} clients with these parameters: {exc}",
            Code.INVALID_MSG,
        ) from None


def create_job_msg(**fields: Any) -> AnyMsg:
    return pack("fl/CreateJob", CreateJob(**fields))


def join_job_msg(job_id: int, dataset: bytes = b"", enc_key: bytes = b"") -> AnyMsg:
    return pack("fl/JoinJob", JoinJob(job_id, dataset, enc_key))


def submit_update_msg(job_id: int, round_: int, update: bytes, samples: int) -> AnyMsg:
    return pack("fl/SubmitUpdate", SubmitUpdate(job_id, round_, update, samples))

"""reputation: one score per address, in parts per million, moved by what the chain sees.

DESIGN.md, "Reputation (from the seeds)": R in [0, 1] with five states, New -> Initial ->
Trusted / Normal / Unreliable. State holds integers only, so R is stored as ``score_ppm``
in ``0..1_000_000`` (R = score_ppm / 10^6); nothing here reads a clock or a float.

Update rule
-----------
Each event moves the score part of the way towards the event's target (an integer EMA)::

    score' = score + ema_step(target - score, alpha)

where :func:`ema_step` is ``(target - score) * alpha / 10^6`` rounded *away from zero*
(towards the target): the same distance up or down moves the same amount, unlike Python's
``//``, which floors negative numbers and would make decline faster than recovery. Rounding
towards the target also means a repeated target is eventually reached exactly instead of
stalling a few ppm short, and since ``alpha <= 10^6`` the step never overshoots it.

========================  ===========================  ==================
event                     target                       alpha
========================  ===========================  ==================
CLIENT_ACCEPTED           ``value_ppm`` (default 10^6) alpha
CLIENT_REJECTED           0                            alpha
CLIENT_STRAGGLER          0                            alpha // 2
VALIDATOR_MISSED_VOTE     0                            alpha // 20
VALIDATOR_SIGNED          10^6                         alpha // 20
VALIDATOR_FAILED_PROPOSAL 0                            alpha // 4
EVIDENCE                  score := 0, Unreliable at once
========================  ===========================  ==================

With the defaults (start 0.5, alpha 0.3, warmup 2) a client is Trusted after 3 accepted
rounds (0.65, 0.755, 0.8285) and Unreliable after 2 rejected ones (0.35, 0.245).

States
------
No record: New, with ``default_score_ppm``. After 1..warmup-1 events: Initial (the score is
preliminary). From ``warmup`` events on the state follows the score both ways: Trusted if
``>= trusted_ppm``, Unreliable if ``< unreliable_ppm``, Normal in between, so a client that
recovers is promoted again. Evidence skips the warm-up: the equivocator is Unreliable at
once and can only climb back through the score.

Validators
----------
:meth:`ReputationModule.begin_block` scores the previous height's precommits: every active
validator is VALIDATOR_SIGNED or VALIDATOR_MISSED_VOTE depending on whether
``block.last_commit`` carries its signature. A commit holds only the > 2/3 the proposer
collected, so a late precommit counts as missed; the small alpha makes that noise cheap.
The active set is the validators module's current record (updates it queued at the previous
height are counted one height early; harmless at this step size). Committed equivocation
evidence is EVIDENCE. A validator whose round of the previous height decided nothing (its
proposal was refused as invalid, never arrived, or came too late) is
VALIDATOR_FAILED_PROPOSAL, once per height however many of its rounds failed. The executor
names these proposers from the block's ``last_commit.round`` and the previous height's
proposer rotation (``Context.failed_proposers``); the chain cannot tell an invalid proposal
from a missing one, so both cost the same, and the larger step than a missed vote reflects
that a proposer's failure costs the whole network a round. VALIDATOR_SIGNED happens for
every validator at every block, so it updates the score but writes no history entry and
emits no event; each address keeps at most :data:`HISTORY_LIMIT` history entries (the
oldest are pruned), so an offline validator's misses cannot grow state without bound.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, Final

import msgspec

from cifer.app.contracts.validators import ValidatorsModule
from cifer.app.module import Context, InvariantViolation, Module
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import Block
from cifer.base.crypto.keys import ADDRESS_LEN, to_bech32
from cifer.base.encoding import Canonical

PPM: Final = 1_000_000

DEFAULT_SCORE_PPM: Final = 500_000
DEFAULT_ALPHA_PPM: Final = 300_000
DEFAULT_WARMUP: Final = 2
DEFAULT_TRUSTED_PPM: Final = 800_000
DEFAULT_UNRELIABLE_PPM: Final = 300_000
MAX_WARMUP: Final = 1_000

#: History entries kept per address; older ones are deleted as new ones are written.
HISTORY_LIMIT: Final = 1_000

_PARAMS: Final = b"reputation/params"
_REC: Final = b"reputation/rec/"
_HIST: Final = b"reputation/hist/"


class RepState(IntEnum):
    NEW = 0
    INITIAL = 1
    TRUSTED = 2
    NORMAL = 3
    UNRELIABLE = 4

    @property
    def label(self) -> str:
        """The spelling of DESIGN.md and the API: "Trusted", "Unreliable" ..."""
        return self.name.capitalize()


class RepEvent(IntEnum):
    CLIENT_ACCEPTED = 1
    CLIENT_REJECTED = 2
    CLIENT_STRAGGLER = 3
    VALIDATOR_MISSED_VOTE = 4
    VALIDATOR_SIGNED = 5
    EVIDENCE = 6
    VALIDATOR_FAILED_PROPOSAL = 7


# --------------------------------------------------------------------------- state records


class RepParams(Canonical, frozen=True):
    default_score_ppm: int = DEFAULT_SCORE_PPM
    alpha_ppm: int = DEFAULT_ALPHA_PPM
    warmup: int = DEFAULT_WARMUP
    trusted_ppm: int = DEFAULT_TRUSTED_PPM
    unreliable_ppm: int = DEFAULT_UNRELIABLE_PPM


DEFAULT_PARAMS: Final = RepParams()


class RepRecord(Canonical, frozen=True):
    """An address's standing; ``seq`` is the number of history entries ever written."""

    score_ppm: int
    state: int  # RepState
    events: int
    seq: int


class HistoryEntry(Canonical, frozen=True):
    height: int
    event: int  # RepEvent
    job_id: int
    round: int
    old_score_ppm: int
    new_score_ppm: int
    state: int  # RepState after the event


# --------------------------------------------------------------------------- genesis


class ReputationGenesis(msgspec.Struct, forbid_unknown_fields=True):
    """``app_state["reputation"]``: optional; every field defaults."""

    default_score_ppm: int = DEFAULT_SCORE_PPM
    alpha_ppm: int = DEFAULT_ALPHA_PPM
    warmup: int = DEFAULT_WARMUP
    trusted_ppm: int = DEFAULT_TRUSTED_PPM
    unreliable_ppm: int = DEFAULT_UNRELIABLE_PPM


def parse_genesis(section: Any) -> RepParams:
    """Validate the reputation genesis section (``None`` = defaults); ValueError says why."""
    if section is None:
        return DEFAULT_PARAMS
    try:
        g = msgspec.convert(section, ReputationGenesis)
    except msgspec.ValidationError as exc:
        raise ValueError(f"reputation genesis: {exc}") from None
    if not 0 <= g.default_score_ppm <= PPM:
        raise ValueError(
            f"reputation genesis: default_score_ppm must be in 0..{PPM}, got {g.default_score_ppm}"
        )
    if not 1 <= g.alpha_ppm <= PPM:
        raise ValueError(f"reputation genesis: alpha_ppm must be in 1..{PPM}, got {g.alpha_ppm}")
    if not 1 <= g.warmup <= MAX_WARMUP:
        raise ValueError(f"reputation genesis: warmup must be in 1..{MAX_WARMUP}, got {g.warmup}")
    if not 1 <= g.unreliable_ppm < g.trusted_ppm <= PPM:
        raise ValueError(
            f"reputation genesis: need 1 <= unreliable_ppm < trusted_ppm <= {PPM}, got "
            f"unreliable_ppm={g.unreliable_ppm}, trusted_ppm={g.trusted_ppm}"
        )
    return RepParams(g.default_score_ppm, g.alpha_ppm, g.warmup, g.trusted_ppm, g.unreliable_ppm)


# --------------------------------------------------------------------------- pure rules


def ema_step(delta: int, alpha_ppm: int) -> int:
    """``delta * alpha_ppm / 10^6`` rounded away from zero: symmetric, and never stalls."""
    mag = -(-abs(delta) * alpha_ppm // PPM)  # ceil of the magnitude
    return mag if delta >= 0 else -mag


def apply_event(score: int, event: RepEvent, value_ppm: int | None, p: RepParams) -> int:
    """The score after ``event`` (see the table in the module docstring)."""
    if value_ppm is not None and event is not RepEvent.CLIENT_ACCEPTED:
        raise ValueError(f"value_ppm applies only to CLIENT_ACCEPTED, not {event.name}")
    if event is RepEvent.EVIDENCE:
        return 0
    if event is RepEvent.CLIENT_ACCEPTED:
        target = PPM if value_ppm is None else value_ppm
        if type(target) is not int or not 0 <= target <= PPM:
            raise ValueError(f"value_ppm must be an int in 0..{PPM}, got {value_ppm!r}")
        alpha = p.alpha_ppm
    elif event is RepEvent.CLIENT_REJECTED:
        target, alpha = 0, p.alpha_ppm
    elif event is RepEvent.CLIENT_STRAGGLER:
        target, alpha = 0, p.alpha_ppm // 2
    elif event is RepEvent.VALIDATOR_MISSED_VOTE:
        target, alpha = 0, p.alpha_ppm // 20
    elif event is RepEvent.VALIDATOR_SIGNED:
        target, alpha = PPM, p.alpha_ppm // 20
    elif event is RepEvent.VALIDATOR_FAILED_PROPOSAL:
        target, alpha = 0, p.alpha_ppm // 4
    else:  # pragma: no cover - exhaustive over RepEvent
        raise ValueError(f"unknown reputation event {event!r}")
    return score + ema_step(target - score, alpha)


def state_for(score: int, events: int, p: RepParams) -> RepState:
    """The state of an address with ``events`` evaluated events and this score."""
    if events == 0:
        return RepState.NEW
    if events < p.warmup:
        return RepState.INITIAL
    if score >= p.trusted_ppm:
        return RepState.TRUSTED
    if score < p.unreliable_ppm:
        return RepState.UNRELIABLE
    return RepState.NORMAL


def format_score(score_ppm: int) -> str:
    """``830000`` -> ``"0.830000"``: exact, no float."""
    return f"{score_ppm // PPM}.{score_ppm % PPM:06d}"


# --------------------------------------------------------------------------- API views


class HistoryInfo(msgspec.Struct):
    """A history entry as the API shows it."""

    height: int
    event: str  # RepEvent name, lower case
    job_id: int
    round: int
    old_score_ppm: int
    new_score_ppm: int
    state: str  # RepState label


class ReputationInfo(msgspec.Struct):
    """An address's reputation as the API shows it (history newest first)."""

    address: str
    score_ppm: int
    score: str  # "0.830000"
    state: str  # "New", "Initial", "Trusted", "Normal", "Unreliable"
    events: int
    history: list[HistoryInfo]


# --------------------------------------------------------------------------- module


def _check_addr(addr: bytes) -> None:
    if not isinstance(addr, bytes) or len(addr) != ADDRESS_LEN:
        raise ValueError(f"reputation address must be {ADDRESS_LEN} raw bytes")


def _hist_key(addr: bytes, seq: int) -> bytes:
    return _HIST + addr + seq.to_bytes(8, "big")


class ReputationModule(Module):
    """Scores written only by other modules (fl) and by the block hooks; no messages."""

    name: ClassVar[str] = "reputation"

    # ------------------------------------------------------------ reads

    @staticmethod
    def params(state: StateOverlay) -> RepParams:
        return state.get_obj(_PARAMS, RepParams, DEFAULT_PARAMS)

    @staticmethod
    def _record(state: StateOverlay, addr: bytes) -> RepRecord | None:
        raw = state.get(_REC + addr)
        return None if raw is None else encoding.decode_trusted(raw, RepRecord)

    @classmethod
    def score(cls, state: StateOverlay, addr: bytes) -> int:
        r = cls._record(state, addr)
        return cls.params(state).default_score_ppm if r is None else r.score_ppm

    @classmethod
    def status(cls, state: StateOverlay, addr: bytes) -> RepState:
        r = cls._record(state, addr)
        return RepState.NEW if r is None else RepState(r.state)

    @classmethod
    def history(cls, state: StateOverlay, addr: bytes, limit: int = 100) -> list[HistoryEntry]:
        """The last ``limit`` entries, newest first (read by sequence number, not a scan)."""
        r = cls._record(state, addr)
        if r is None or limit <= 0:
            return []
        out: list[HistoryEntry] = []
        for seq in range(r.seq - 1, max(-1, r.seq - 1 - limit), -1):
            raw = state.get(_hist_key(addr, seq))
            if raw is None:  # pruned beyond HISTORY_LIMIT
                break
            out.append(encoding.decode_trusted(raw, HistoryEntry))
        return out

    @classmethod
    def info(cls, state: StateOverlay, addr: bytes, limit: int = 100) -> ReputationInfo:
        r = cls._record(state, addr)
        score = cls.score(state, addr)
        return ReputationInfo(
            address=to_bech32(addr),
            score_ppm=score,
            score=format_score(score),
            state=cls.status(state, addr).label,
            events=0 if r is None else r.events,
            history=[
                HistoryInfo(
                    height=h.height,
                    event=RepEvent(h.event).name.lower(),
                    job_id=h.job_id,
                    round=h.round,
                    old_score_ppm=h.old_score_ppm,
                    new_score_ppm=h.new_score_ppm,
                    state=RepState(h.state).label,
                )
                for h in cls.history(state, addr, limit)
            ],
        )

    @classmethod
    def can_join(cls, state: StateOverlay, addr: bytes, min_score_ppm: int) -> str:
        """``""`` if ``addr`` may join a job needing ``min_score_ppm``, else the reason.

        Unreliable addresses never may, whatever the job's minimum.
        """
        if type(min_score_ppm) is not int or not 0 <= min_score_ppm <= PPM:
            raise ValueError(f"min_score_ppm must be an int in 0..{PPM}, got {min_score_ppm!r}")
        score = cls.score(state, addr)
        st = cls.status(state, addr)
        if st is RepState.UNRELIABLE:
            limit = cls.params(state).unreliable_ppm
            return (
                f"reputation of {to_bech32(addr)} is {st.label} "
                f"({format_score(score)} < {format_score(limit)})"
            )
        if score < min_score_ppm:
            return (
                f"reputation of {to_bech32(addr)} is {format_score(score)}, below the job's "
                f"minimum {format_score(min_score_ppm)}"
            )
        return ""

    # ------------------------------------------------------------ writes

    @classmethod
    def record(
        cls,
        ctx: Context,
        addr: bytes,
        event: RepEvent,
        *,
        value_ppm: int | None = None,
        job_id: int = 0,
        round: int = 0,
    ) -> int:
        """Apply one event to ``addr``; return the new score. ValueError on bad arguments."""
        _check_addr(addr)
        event = RepEvent(event)
        state = ctx.state
        p = cls.params(state)
        r = cls._record(state, addr)
        old = p.default_score_ppm if r is None else r.score_ppm
        events = 0 if r is None else r.events
        seq = 0 if r is None else r.seq
        new = apply_event(old, event, value_ppm, p)
        if event is RepEvent.EVIDENCE:
            events = max(events, p.warmup - 1)  # skip the warm-up: follow the score from now
        events += 1
        st = state_for(new, events, p)
        if event is not RepEvent.VALIDATOR_SIGNED:
            entry = HistoryEntry(ctx.height, int(event), job_id, round, old, new, int(st))
            state.set_obj(_hist_key(addr, seq), entry)
            if seq >= HISTORY_LIMIT:
                state.delete(_hist_key(addr, seq - HISTORY_LIMIT))
            seq += 1
            ctx.emit(
                "reputation",
                address=addr,
                event=event.name.lower(),
                score_ppm=new,
                score=format_score(new),
                state=st.label,
            )
        state.set_obj(_REC + addr, RepRecord(new, int(st), events, seq))
        return new

    # ------------------------------------------------------------ hooks

    def init_genesis(self, ctx: Context, section: Any) -> None:
        ctx.state.set_obj(_PARAMS, parse_genesis(section))

    def begin_block(self, ctx: Context, block: Block) -> None:
        if block.header.height > 1 and block.last_commit is not None:
            vals = next((m for m in ctx.modules if isinstance(m, ValidatorsModule)), None)
            if vals is not None:
                signed = {cs.validator for cs in block.last_commit.signatures}
                for addr in sorted(v.address for v in vals.active(ctx.state)):
                    ev = (
                        RepEvent.VALIDATOR_SIGNED
                        if addr in signed
                        else RepEvent.VALIDATOR_MISSED_VOTE
                    )
                    self.record(ctx, addr, ev)
        for addr in sorted(set(ctx.failed_proposers)):
            self.record(ctx, addr, RepEvent.VALIDATOR_FAILED_PROPOSAL)
        punished: set[bytes] = set()  # several vote pairs in one block: one entry
        for evidence in block.evidence:
            if evidence.validator not in punished:
                punished.add(evidence.validator)
                self.record(ctx, evidence.validator, RepEvent.EVIDENCE)

    def invariants(self, ctx: Context) -> None:
        for key, raw in ctx.state.iter_prefix(_REC):
            r = encoding.decode_trusted(raw, RepRecord)
            if not 0 <= r.score_ppm <= PPM:
                addr = key[len(_REC) :]
                raise InvariantViolation(
                    f"reputation of {addr.hex()} is {r.score_ppm} ppm, outside 0..{PPM}"
                )

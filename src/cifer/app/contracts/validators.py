"""validators: the app's record of the validator set, and jailing on equivocation.

The chain layer verifies :class:`DuplicateVoteEvidence` before it goes in a block; this
module only acts on committed evidence: the offender's power drops to 0 (a
``ValidatorUpdate(pubkey, 0)`` from finalize_block, effective at h+2) and it is recorded as
jailed, permanently: :meth:`ValidatorsModule.set_power` refuses it and the app drops any
later non-zero update for it. A later staking module changes powers only through
:meth:`ValidatorsModule.set_power`, so this record stays the single source of truth.

Jailing never empties the set: if the offender is the last validator with power, it is
recorded as jailed but keeps its power (a chain with no validators cannot even halt
cleanly; with one validator left, equivocation is moot anyway).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from cifer.app.module import Context, InvariantViolation, Module
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.abci import ValidatorUpdate
from cifer.base.chain.types import Block, DuplicateVoteEvidence, Validator
from cifer.base.crypto.keys import address_bytes, to_bech32
from cifer.base.encoding import Canonical

_VAL: Final = b"validators/val/"
_UPD: Final = b"validators/upd/"


class ValidatorRecord(Canonical, frozen=True):
    pubkey: bytes
    power: int
    jailed_height: int = 0  # 0 = not jailed (blocks start at height 1)
    evidence_hash: bytes = b""


class ValidatorInfo(msgspec.Struct):
    """A validator as the API shows it."""

    address: str
    pubkey: str  # hex
    power: int
    jailed: bool
    jailed_height: int
    evidence_hash: str  # hex, "" if not jailed


class ValidatorsModule(Module):
    name: ClassVar[str] = "validators"

    # ------------------------------------------------------------ reads

    @staticmethod
    def record(state: StateOverlay, address: bytes) -> ValidatorRecord | None:
        raw = state.get(_VAL + address)
        return None if raw is None else encoding.decode(raw, ValidatorRecord)

    @staticmethod
    def records(state: StateOverlay) -> list[ValidatorRecord]:
        """Every validator ever known (jailed and zero-power ones included), by address."""
        return [encoding.decode(raw, ValidatorRecord) for _, raw in state.iter_prefix(_VAL)]

    @classmethod
    def active(cls, state: StateOverlay) -> list[Validator]:
        return [Validator(r.pubkey, r.power) for r in cls.records(state) if r.power > 0]

    @classmethod
    def is_jailed(cls, state: StateOverlay, address: bytes) -> bool:
        r = cls.record(state, address)
        return r is not None and r.jailed_height > 0

    @classmethod
    def infos(cls, state: StateOverlay) -> list[ValidatorInfo]:
        return [
            ValidatorInfo(
                address=to_bech32(address_bytes(r.pubkey)),
                pubkey=r.pubkey.hex(),
                power=r.power,
                jailed=r.jailed_height > 0,
                jailed_height=r.jailed_height,
                evidence_hash=r.evidence_hash.hex(),
            )
            for r in cls.records(state)
        ]

    # ------------------------------------------------------------ writes

    @staticmethod
    def _put(state: StateOverlay, r: ValidatorRecord, *, update: bool) -> None:
        addr = address_bytes(r.pubkey)
        state.set_obj(_VAL + addr, r)
        if update:
            state.set_obj(_UPD + addr, ValidatorUpdate(r.pubkey, r.power))

    @classmethod
    def set_power(cls, ctx: Context, pubkey: bytes, power: int) -> None:
        """Change a validator's power (emitted as an update at end of block)."""
        if power < 0:
            raise ValueError("validator power cannot be negative")
        r = cls.record(ctx.state, address_bytes(pubkey))
        if r is not None and r.jailed_height > 0:
            raise ValueError(f"validator {to_bech32(address_bytes(pubkey))} is jailed for good")
        if r is None:
            r = ValidatorRecord(pubkey, power)
        else:
            r = ValidatorRecord(r.pubkey, power, r.jailed_height, r.evidence_hash)
        cls._put(ctx.state, r, update=True)

    def jail(self, ctx: Context, ev: DuplicateVoteEvidence) -> None:
        """Apply committed evidence: zero the offender's power and jail it for good."""
        state = ctx.state
        r = self.record(state, ev.validator)
        if r is None or r.jailed_height > 0:
            return  # unknown to the app, or already punished: nothing more to do
        others = sum(v.power for v in self.active(state) if v.pubkey != r.pubkey)
        power = 0 if others > 0 else r.power
        self._put(
            state,
            ValidatorRecord(r.pubkey, power, ctx.height, ev.hash()),
            update=power != r.power,
        )
        ctx.emit(
            "jail",
            validator=ev.validator,
            evidence=ev.hash(),
            infraction_height=ev.height,
            power=power,
        )

    # ------------------------------------------------------------ hooks

    def init_genesis(self, ctx: Context, section: Any) -> None:
        if section is not None:
            raise ValueError("validators take no app_state section; use genesis.validators")
        if ctx.genesis is None:
            raise ValueError("validators genesis needs the genesis document")
        for v in ctx.genesis.validator_set().validators:
            self._put(ctx.state, ValidatorRecord(v.pubkey, v.power), update=False)

    def begin_block(self, ctx: Context, block: Block) -> None:
        for ev in block.evidence:
            self.jail(ctx, ev)

    def end_block(self, ctx: Context) -> list[ValidatorUpdate]:
        state = ctx.state
        pending = list(state.iter_prefix(_UPD))
        for key, _ in pending:
            state.delete(key)
        return [encoding.decode(raw, ValidatorUpdate) for _, raw in pending]

    def filter_updates(self, ctx: Context, updates: list[ValidatorUpdate]) -> list[ValidatorUpdate]:
        """Last update per key wins; non-zero updates for jailed validators are dropped."""
        last: dict[bytes, int] = {}
        for u in updates:
            last[u.pubkey] = u.power
        out = []
        for pubkey, power in last.items():
            if power > 0 and self.is_jailed(ctx.state, address_bytes(pubkey)):
                continue
            out.append(ValidatorUpdate(pubkey, power))
        return out

    def invariants(self, ctx: Context) -> None:
        for r in self.records(ctx.state):
            if r.power < 0:
                raise InvariantViolation(f"validator {r.pubkey.hex()} has power {r.power}")
        if not self.active(ctx.state):
            raise InvariantViolation("the validator set is empty")

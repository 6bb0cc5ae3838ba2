"""Genesis document: the chain's id, first validators, consensus parameters and app state.

Stored as JSON (people edit it); validated strictly on load. ``app_state`` is opaque here and
interpreted by the application's modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from cifer.base.chain.types import ValidationError, Validator, ValidatorSet


class GenesisValidator(msgspec.Struct, forbid_unknown_fields=True):
    pubkey: str  # hex
    power: int
    name: str = ""


class ConsensusParams(msgspec.Struct, forbid_unknown_fields=True):
    max_block_bytes: int = 4 * 1024 * 1024
    max_block_txs: int = 10_000
    max_evidence_age: int = 100  # heights
    #: Timeouts in milliseconds: base + delta * round (Tendermint's growing timeouts).
    timeout_propose_ms: int = 3000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 1000
    timeout_prevote_delta_ms: int = 500
    timeout_precommit_ms: int = 1000
    timeout_precommit_delta_ms: int = 500
    timeout_commit_ms: int = 200


class Genesis(msgspec.Struct, forbid_unknown_fields=True):
    chain_id: str
    genesis_time_ms: int
    validators: list[GenesisValidator]
    consensus: ConsensusParams = msgspec.field(default_factory=ConsensusParams)
    app_state: dict[str, Any] = msgspec.field(default_factory=dict)

    def validator_set(self) -> ValidatorSet:
        vals: list[Validator] = []
        for i, gv in enumerate(self.validators):
            try:
                pk = bytes.fromhex(gv.pubkey)
            except ValueError:
                raise ValidationError(f"genesis validator {i}: pubkey is not hex") from None
            if gv.power <= 0:
                raise ValidationError(f"genesis validator {i}: power must be positive")
            vals.append(Validator(pk, gv.power))
        return ValidatorSet(vals)

    def validate(self) -> None:
        if not self.chain_id or len(self.chain_id) > 64:
            raise ValidationError("genesis chain_id must be 1..64 characters")
        if self.genesis_time_ms < 0:
            raise ValidationError("genesis_time_ms must not be negative")
        c = self.consensus
        for name in ConsensusParams.__struct_fields__:
            value = getattr(c, name)
            if value < 0:
                raise ValidationError(f"consensus.{name} must not be negative")
        if c.max_block_bytes < 1024 or c.max_block_txs < 1 or c.max_evidence_age < 1:
            raise ValidationError(
                "consensus.max_block_bytes must be >= 1024, max_block_txs and max_evidence_age >= 1"
            )
        vset = self.validator_set()
        # N >= 3f+1 with f >= 0 holds for any set, but tolerating even one fault needs the
        # largest single validator to hold less than 1/3 of the power.
        top = max(v.power for v in vset.validators)
        if len(vset) >= 4 and top > vset.max_faulty_power():
            raise ValidationError(
                f"one validator holds {top} of {vset.total_power} power: more than the "
                f"{vset.max_faulty_power()} a 3f+1 set tolerates"
            )

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)


def load_genesis(path: Path) -> Genesis:
    try:
        g = msgspec.json.decode(path.read_bytes(), type=Genesis)
    except FileNotFoundError:
        raise ValidationError(f"no genesis file at {path}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"genesis {path}: {exc}") from None
    g.validate()
    return g


def byzantine_tolerance(n_validators: int) -> int:
    """f for N equal-power validators: the largest f with N >= 3f+1."""
    return (n_validators - 1) // 3

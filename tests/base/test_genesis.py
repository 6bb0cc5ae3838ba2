"""Genesis documents: strict JSON decoding and validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cifer.base.chain.genesis import (
    ConsensusParams,
    Genesis,
    GenesisValidator,
    byzantine_tolerance,
    load_genesis,
)
from cifer.base.chain.types import ValidationError, ValidatorSet
from cifer.base.crypto.keys import PrivateKey

KEYS = [PrivateKey.from_secret(f"genesis-{i}") for i in range(8)]


def gdoc(powers: list[int] | None = None, **kw: Any) -> dict[str, Any]:
    powers = [10, 10, 10, 10] if powers is None else powers
    doc: dict[str, Any] = {
        "chain_id": "cifer-local",
        "genesis_time_ms": 1_700_000_000_000,
        "validators": [
            {"pubkey": k.public.raw.hex(), "power": p, "name": f"v{i}"}
            for i, (k, p) in enumerate(zip(KEYS, powers, strict=False))
        ],
    }
    doc.update(kw)
    return doc


def write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "genesis.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_load_valid_genesis_with_defaults(tmp_path: Path) -> None:
    g = load_genesis(write(tmp_path, gdoc()))
    assert g.chain_id == "cifer-local"
    assert g.consensus == ConsensusParams()
    assert g.consensus.timeout_commit_ms == 200
    assert g.app_state == {}
    vs = g.validator_set()
    assert isinstance(vs, ValidatorSet)
    assert vs.total_power == 40
    assert {v.address for v in vs.validators} == {k.address for k in KEYS[:4]}


def test_json_round_trip(tmp_path: Path) -> None:
    doc = gdoc(
        consensus={"max_block_txs": 7, "timeout_propose_ms": 1234},
        app_state={"bank": {"balances": [["cif1x", 5]]}},
    )
    g = load_genesis(write(tmp_path, doc))
    assert g.consensus.max_block_txs == 7 and g.consensus.timeout_propose_ms == 1234
    again = tmp_path / "again.json"
    again.write_bytes(g.to_json())
    assert load_genesis(again) == g
    assert g.to_json() == load_genesis(again).to_json()
    assert b"\n  " in g.to_json()  # indented for humans


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no genesis file"):
        load_genesis(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", "null", '{"chain_id": "x"}', "\xff"],
)
def test_malformed_json(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError, match="genesis"):
        load_genesis(write(tmp_path, text))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra=1),
        lambda d: d["validators"][0].update(extra=1),
        lambda d: d.update(consensus={"timeout_typo_ms": 5}),
        lambda d: d.pop("chain_id"),
        lambda d: d.pop("validators"),
        lambda d: d.pop("genesis_time_ms"),
        lambda d: d["validators"][0].pop("pubkey"),
        lambda d: d["validators"][0].update(power=10.0),
        lambda d: d["validators"][0].update(power="10"),
        lambda d: d.update(genesis_time_ms=1.5),
        lambda d: d.update(chain_id=5),
        lambda d: d.update(app_state=[]),
    ],
)
def test_schema_violations(tmp_path: Path, mutate: Any) -> None:
    doc = gdoc()
    mutate(doc)
    with pytest.raises(ValidationError):
        load_genesis(write(tmp_path, doc))


@pytest.mark.parametrize(
    "doc,match",
    [
        (gdoc(chain_id=""), "chain_id"),
        (gdoc(chain_id="x" * 65), "chain_id"),
        (gdoc(validators=[]), "empty"),
        (gdoc([10, 0, 10, 10]), "validator 1: power must be positive"),
        (gdoc([10, 10, -3, 10]), "validator 2: power must be positive"),
    ],
)
def test_validation_errors(tmp_path: Path, doc: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        load_genesis(write(tmp_path, doc))


def test_chain_id_length_boundaries(tmp_path: Path) -> None:
    load_genesis(write(tmp_path, gdoc(chain_id="x" * 64)))
    load_genesis(write(tmp_path, gdoc(chain_id="x")))


def test_pubkey_not_hex(tmp_path: Path) -> None:
    doc = gdoc()
    doc["validators"][3]["pubkey"] = "zz" * 32
    with pytest.raises(ValidationError, match="validator 3: pubkey is not hex"):
        load_genesis(write(tmp_path, doc))


def test_duplicate_validator(tmp_path: Path) -> None:
    doc = gdoc()
    doc["validators"][1]["pubkey"] = doc["validators"][0]["pubkey"]
    with pytest.raises(ValidationError, match="duplicate"):
        load_genesis(write(tmp_path, doc))
    # Same key spelled in upper-case hex is still the same validator.
    doc = gdoc()
    doc["validators"][1]["pubkey"] = doc["validators"][0]["pubkey"].upper()
    with pytest.raises(ValidationError, match="duplicate"):
        load_genesis(write(tmp_path, doc))


@pytest.mark.parametrize("nbytes", [31, 33, 0])
def test_wrong_length_pubkey_is_a_validation_error(tmp_path: Path, nbytes: int) -> None:
    doc = gdoc()
    doc["validators"][0]["pubkey"] = "ab" * nbytes
    with pytest.raises(ValidationError):
        load_genesis(write(tmp_path, doc))


def test_wrong_length_pubkey_is_rejected(tmp_path: Path) -> None:
    # Whatever the exception class, a short key must never load.
    doc = gdoc()
    doc["validators"][0]["pubkey"] = "ab" * 31
    with pytest.raises(ValueError):
        load_genesis(write(tmp_path, doc))


def test_power_concentration_rule(tmp_path: Path) -> None:
    # Four or more validators: no single one may exceed the tolerated faulty power.
    # [10, 10, 10, 15]: total 45, f = 14, 15 > 14 -> rejected.
    with pytest.raises(ValidationError, match="one validator holds 15 of 45"):
        load_genesis(write(tmp_path, gdoc([10, 10, 10, 15])))
    # [10, 10, 10, 14]: total 44, f = 14, 14 == f -> accepted (boundary).
    load_genesis(write(tmp_path, gdoc([10, 10, 10, 14])))
    # Fewer than four validators cannot tolerate a fault anyway; any split is allowed.
    load_genesis(write(tmp_path, gdoc([1, 100])))
    load_genesis(write(tmp_path, gdoc([1, 1, 100])))
    load_genesis(write(tmp_path, gdoc([100])))
    with pytest.raises(ValidationError, match="one validator"):
        load_genesis(write(tmp_path, gdoc([1, 1, 1, 1, 1, 1, 1, 100])))


def test_validate_on_struct_directly() -> None:
    g = Genesis(
        chain_id="c",
        genesis_time_ms=0,
        validators=[GenesisValidator(KEYS[0].public.raw.hex(), 1)],
    )
    g.validate()
    assert g.validator_set().total_power == 1
    bad = Genesis(chain_id="", genesis_time_ms=0, validators=g.validators)
    with pytest.raises(ValidationError):
        bad.validate()


@pytest.mark.parametrize(
    "n,f", [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 2), (10, 3), (100, 33)]
)
def test_byzantine_tolerance(n: int, f: int) -> None:
    assert byzantine_tolerance(n) == f
    assert n >= 3 * f + 1 and n < 3 * (f + 1) + 1

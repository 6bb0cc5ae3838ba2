"""Genesis allocation: nine exact tranches, strict validation, builder output."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts.bank import (
    TOTAL_SUPPLY,
    TRANCHE_PERCENT,
    GenesisError,
    parse_genesis,
    tranche_amount,
)
from cifer.app.genesis_builder import account_key, make_genesis, tranche_key
from cifer.base.chain.genesis import Genesis, load_genesis
from cifer.base.crypto.keys import to_bech32
from cifer.base.store.state import StateStore

from .helpers import FUND, KEYS, genesis


def bank_section(g: Genesis) -> dict[str, Any]:
    return copy.deepcopy(g.app_state["bank"])


def test_supply_and_tranche_percentages_are_exact() -> None:
    assert TOTAL_SUPPLY == 1_024_000_000 * 10**6
    assert TRANCHE_PERCENT == {
        "founders": 30,
        "staking_validators": 15,
        "community_ecosystem": 15,
        "research_development": 10,
        "strategic_reserve": 10,
        "advisors": 5,
        "partnerships": 5,
        "public_sale": 5,
        "private_sale": 5,
    }
    assert tranche_amount("founders") == 307_200_000 * 10**6
    assert tranche_amount("advisors") == 51_200_000 * 10**6
    assert sum(tranche_amount(n) for n in TRANCHE_PERCENT) == TOTAL_SUPPLY


def test_genesis_balances_match_tranches(app: CiferApp) -> None:
    for name in TRANCHE_PERCENT:
        want = tranche_amount(name)
        if name == "community_ecosystem":  # test accounts were carved out of it
            want -= FUND * (len(KEYS) + 1)
        assert app.balance(tranche_key(name).address) == want, name
    assert app.balance(KEYS[0].address) == FUND
    founders = app.account(tranche_key("founders").address)
    assert founders.vesting is not None and founders.locked == tranche_amount("founders")
    app.check_invariants()


def test_tranche_off_by_one_ucif_is_rejected() -> None:
    sec = bank_section(genesis())
    sec["tranches"]["founders"]["accounts"][0]["amount"] -= 1
    sec["tranches"]["advisors"]["accounts"][0]["amount"] += 1  # total still equals supply
    with pytest.raises(GenesisError, match=r"'founders'.*exactly 30% of supply.*off by -1"):
        parse_genesis(sec)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["tranches"].pop("advisors"), r"missing \['advisors'\]"),
        (lambda s: s["tranches"].update(extra=s["tranches"]["advisors"]), r"unknown \['extra'\]"),
        (
            lambda s: s["tranches"]["advisors"]["accounts"][0].update(address="cosmos1xyz"),
            "advisors.*invalid bech32",
        ),
        (
            lambda s: s["tranches"]["advisors"]["accounts"].append(
                {"address": to_bech32(account_key(77).address), "amount": 0}
            ),
            "amount must be a positive",
        ),
        (lambda s: s["tranches"]["founders"].pop("vesting"), "must have a vesting schedule"),
        (
            lambda s: s["tranches"]["founders"]["vesting"].update(cliff_height=5, end_height=4),
            "start_height <= cliff_height <= end_height",
        ),
        (
            lambda s: s["tranches"]["partnerships"]["accounts"].append(
                dict(s["tranches"]["advisors"]["accounts"][0])
            ),
            "appears twice",
        ),
        (lambda s: s["tranches"]["founders"]["accounts"][0].update(amount=1.5), "bank genesis"),
        (lambda s: s.update(min_fee=-1), "min_fee"),
    ],
)
def test_bad_genesis_is_rejected_with_a_reason(mutate: Any, message: str) -> None:
    sec = bank_section(genesis())
    mutate(sec)
    with pytest.raises(GenesisError, match=message):
        parse_genesis(sec)


def test_bad_genesis_leaves_store_uninitialised() -> None:
    g = genesis()
    g.app_state["bank"]["tranches"]["founders"]["accounts"][0]["amount"] += 1
    store = StateStore(":memory:")
    app = CiferApp(store)
    with pytest.raises(GenesisError):
        app.init_chain(g)
    assert store.height == 0 and store.app_hash == b"" and app.chain_id == ""
    assert list(store.iter_prefix(b"")) == []


def test_unknown_app_state_section_is_rejected() -> None:
    g = genesis()
    g.app_state["stakin"] = {}
    with pytest.raises(ValueError, match="stakin"):
        CiferApp(StateStore(":memory:")).init_chain(g)


def test_json_round_trip_gives_same_app_hash(tmp_path: Path) -> None:
    g = genesis()
    path = tmp_path / "genesis.json"
    path.write_bytes(g.to_json())
    h1 = CiferApp(StateStore(":memory:")).init_chain(g).app_hash
    h2 = CiferApp(StateStore(":memory:")).init_chain(load_genesis(path)).app_hash
    assert h1 == h2
    h3 = CiferApp(StateStore(":memory:")).init_chain(genesis(min_fee=7)).app_hash
    assert h3 != h1


def test_builder_rejects_funds_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        make_genesis("x", 1, [account_key(0).address], fund_amount=TOTAL_SUPPLY)
    with pytest.raises(ValueError, match="distinct"):
        make_genesis("x", 1, [account_key(0).address] * 2)


def test_init_chain_returns_genesis_validators_and_is_idempotent_at_height_0() -> None:
    g = genesis()
    app = CiferApp(StateStore(":memory:"))
    res = app.init_chain(g)
    assert sorted(v.pubkey.hex() for v in res.validators) == sorted(v.pubkey for v in g.validators)
    assert app.init_chain(g) == res  # crash before block 1: same answer, nothing reloaded
    g2 = make_genesis("other-chain", 4)
    with pytest.raises(ValueError, match="belongs to chain"):
        app.init_chain(g2)

"""Ready-made genesis documents for localnets, simulators, tests and benchmarks.

Every key here is derived deterministically (``PrivateKey.from_secret``), so a simulator,
a test and a CLI command that build the same genesis get the same chain, and any of them can
sign for any account. Never use these keys for anything of value.

Typical use::

    g = make_genesis("sim", 4, funded_accounts=[account_key(i).address for i in range(10)])
    app = CiferApp(StateStore(":memory:"))
    app.init_chain(g)
    # validator i signs with validator_key(i); account i with account_key(i)
"""

from __future__ import annotations

from collections.abc import Sequence

from cifer.app.contracts.bank import (
    DEFAULT_MIN_FEE,
    TRANCHE_PERCENT,
    UCIF_PER_CIF,
    VESTED_TRANCHES,
    tranche_amount,
)
from cifer.base.chain.genesis import ConsensusParams, Genesis, GenesisValidator
from cifer.base.crypto.keys import ADDRESS_LEN, PrivateKey, to_bech32

#: What each extra funded account receives unless told otherwise: 10,000 CIF.
DEFAULT_FUND_AMOUNT = 10_000 * UCIF_PER_CIF
#: Tranche the funded accounts are carved out of (its own address keeps the remainder).
DEFAULT_FUND_TRANCHE = "community_ecosystem"


def validator_key(i: int) -> PrivateKey:
    """Consensus key of localnet validator ``i``."""
    return PrivateKey.from_secret(f"validator-{i}")


def tranche_key(name: str) -> PrivateKey:
    """Key of the single account holding genesis tranche ``name``."""
    if name not in TRANCHE_PERCENT:
        raise ValueError(f"unknown tranche {name!r}; tranches are {sorted(TRANCHE_PERCENT)}")
    return PrivateKey.from_secret(f"tranche-{name}")


def account_key(i: int) -> PrivateKey:
    """Key of test account ``i`` (pass ``account_key(i).address`` as a funded account)."""
    return PrivateKey.from_secret(f"account-{i}")


def make_genesis(
    chain_id: str = "cifer-localnet",
    n_validators: int = 4,
    funded_accounts: Sequence[bytes] = (),
    *,
    fund_amount: int = DEFAULT_FUND_AMOUNT,
    fund_tranche: str = DEFAULT_FUND_TRANCHE,
    validator_power: int = 10,
    founders_cliff_height: int = 100,
    founders_end_height: int = 1_000,
    min_fee: int = DEFAULT_MIN_FEE,
    genesis_time_ms: int = 0,
    consensus: ConsensusParams | None = None,
    validator_pubkeys: Sequence[bytes] | None = None,
) -> Genesis:
    """A valid genesis: ``n_validators`` equal-power validators, nine tranches, test funds.

    Each tranche goes to ``tranche_key(name)``; each address in ``funded_accounts`` (20 raw
    bytes) gets ``fund_amount`` ucif taken out of ``fund_tranche``. The founders' tranche
    vests from height 0 with a cliff at ``founders_cliff_height``, fully unlocked at
    ``founders_end_height``. ``validator_pubkeys`` replaces the ``validator_key(i)`` keys
    (e.g. a simulator's own keys; ``n_validators`` is then ignored). Raises ValueError if
    the funds do not fit in the tranche.
    """
    pubkeys = (
        list(validator_pubkeys)
        if validator_pubkeys is not None
        else [validator_key(i).public.raw for i in range(n_validators)]
    )
    if not pubkeys:
        raise ValueError("need at least one validator")
    if fund_tranche not in TRANCHE_PERCENT or fund_tranche in VESTED_TRANCHES:
        raise ValueError(f"cannot fund test accounts from tranche {fund_tranche!r}")
    if fund_amount <= 0 and funded_accounts:
        raise ValueError("fund_amount must be positive")
    funded = list(funded_accounts)
    if any(len(a) != ADDRESS_LEN for a in funded):
        raise ValueError(f"funded accounts must be {ADDRESS_LEN}-byte addresses")
    tranche_addrs = {tranche_key(n).address for n in TRANCHE_PERCENT}
    if len(set(funded)) != len(funded) or tranche_addrs & set(funded):
        raise ValueError("funded accounts must be distinct and not tranche addresses")

    tranches: dict[str, object] = {}
    for name in TRANCHE_PERCENT:
        total = tranche_amount(name)
        accounts: list[dict[str, object]] = []
        if name == fund_tranche:
            carved = fund_amount * len(funded)
            if carved > total:
                raise ValueError(
                    f"{len(funded)} accounts x {fund_amount} ucif = {carved} ucif does not fit "
                    f"in tranche {name!r} ({total} ucif)"
                )
            accounts = [{"address": to_bech32(a), "amount": fund_amount} for a in funded]
            total -= carved
        if total > 0:
            accounts.insert(0, {"address": tranche_key(name).public.bech32, "amount": total})
        section: dict[str, object] = {"accounts": accounts}
        if name in VESTED_TRANCHES:
            section["vesting"] = {
                "start_height": 0,
                "cliff_height": founders_cliff_height,
                "end_height": founders_end_height,
            }
        tranches[name] = section

    validators = [
        GenesisValidator(pubkey=pk.hex(), power=validator_power, name=f"validator-{i}")
        for i, pk in enumerate(pubkeys)
    ]
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        validators=validators,
        consensus=consensus or ConsensusParams(),
        app_state={"bank": {"tranches": tranches, "min_fee": min_fee}},
    )
    genesis.validate()
    return genesis

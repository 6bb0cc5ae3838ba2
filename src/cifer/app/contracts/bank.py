"""bank: $CIF balances, transfers, fees, nonces and vesting.

Amounts are integers in ucif (1 CIF = 10^6 ucif); the supply is fixed at genesis to
1,024,000,000 CIF and never changes, so every ucif lives in exactly one account: user
accounts, multisig accounts, and module accounts (fee collector, and later pools and
escrows, which other modules must hold *here* through :meth:`BankModule.transfer` rather
than in their own state). That is what makes the supply invariant checkable: the sum of
all balances equals :data:`TOTAL_SUPPLY` after every block.

Decisions
---------
* Self-sends are rejected (stateless, before any fee is paid): they move nothing, and a
  sender naming itself as recipient has almost certainly pasted the wrong address.
* A zero balance is stored as an absent key, so state holds no dead accounts' balances.
* Multisig accounts need no registration: a tx whose signer is a multisig policy address
  is authorised by :func:`cifer.base.chain.types.verify_tx_signatures`; funds sent to that
  address are spendable by k of its n members.
* Vesting is by block height, never wall-clock time (see :class:`Vesting`). Locked funds
  cannot leave the account, neither by transfer nor as fee. Funds received later are not
  locked.
* The ante step (nonce, fee) lives here because the bank owns accounts; the app calls it
  for every tx before its messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, TypeVar

import msgspec

from cifer.app.module import (
    Code,
    Context,
    InvariantViolation,
    Module,
    MsgError,
    module_address,
    pack,
)
from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg, TxBody
from cifer.base.crypto.keys import ADDRESS_LEN, CryptoError, from_bech32, to_bech32
from cifer.base.encoding import Canonical, EncodingError

T = TypeVar("T")

DENOM: Final = "ucif"
UCIF_PER_CIF: Final = 10**6
TOTAL_SUPPLY_CIF: Final = 1_024_000_000
TOTAL_SUPPLY: Final = TOTAL_SUPPLY_CIF * UCIF_PER_CIF  # ucif

#: Genesis tranches and their share of supply in percent (DESIGN.md, "Application layer").
TRANCHE_PERCENT: Final[dict[str, int]] = {
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
#: Tranches whose accounts must carry a vesting schedule.
VESTED_TRANCHES: Final = frozenset({"founders"})

#: Default minimum fee per tx (0.001 CIF): makes mempool spam cost something.
DEFAULT_MIN_FEE: Final = 1_000

FEE_COLLECTOR: Final = module_address("fee_collector")

SEND: Final = "bank/Send"

_BAL: Final = b"bank/bal/"
_NONCE: Final = b"bank/nonce/"
_VEST: Final = b"bank/vest/"
_MIN_FEE: Final = b"bank/params/min_fee"


def tranche_amount(name: str) -> int:
    """Exact ucif amount of a tranche (every percentage divides the supply exactly)."""
    return TOTAL_SUPPLY * TRANCHE_PERCENT[name] // 100


assert sum(TRANCHE_PERCENT.values()) == 100
assert all(TOTAL_SUPPLY * p % 100 == 0 for p in TRANCHE_PERCENT.values())


# --------------------------------------------------------------------------- messages


class Send(Canonical, frozen=True):
    """Move ``amount`` ucif from the tx signer to ``to``."""

    to: bytes
    amount: int


def send_msg(to: bytes | str, amount: int) -> AnyMsg:
    """A ``bank/Send`` ready for a tx; ``to`` is 20 raw bytes or a ``cif1...`` address."""
    raw = from_bech32(to) if isinstance(to, str) else to
    return pack(SEND, Send(raw, amount))


# --------------------------------------------------------------------------- vesting


class Vesting(Canonical, frozen=True):
    """Linear vesting with a cliff, in block heights.

    ``locked(h)`` is ``total`` before ``cliff_height``, 0 from ``end_height`` on, and in
    between ``total - floor(total * (h - start) / (end - start))``: the amount accrued since
    ``start_height`` is released at the cliff, then the rest block by block (rounding keeps
    the locked part up, so nothing unlocks early). With ``start == cliff`` the release
    simply starts at the cliff.
    """

    total: int
    start_height: int
    cliff_height: int
    end_height: int

    def locked(self, height: int) -> int:
        if height < self.cliff_height:
            return self.total
        if height >= self.end_height:
            return 0
        span = self.end_height - self.start_height
        return self.total - self.total * (height - self.start_height) // span


# --------------------------------------------------------------------------- genesis


class GenesisError(ValueError):
    """The bank section of the genesis app_state is invalid."""


class GenesisAccount(msgspec.Struct, forbid_unknown_fields=True):
    address: str  # cif1...
    amount: int  # ucif


class VestingParams(msgspec.Struct, forbid_unknown_fields=True):
    cliff_height: int
    end_height: int
    start_height: int = 0


class Tranche(msgspec.Struct, forbid_unknown_fields=True):
    accounts: list[GenesisAccount]
    vesting: VestingParams | None = None


class BankGenesis(msgspec.Struct, forbid_unknown_fields=True):
    """``app_state["bank"]``: the nine tranches and the minimum fee."""

    tranches: dict[str, Tranche]
    min_fee: int = DEFAULT_MIN_FEE


def parse_genesis(section: Any) -> tuple[BankGenesis, dict[bytes, int], dict[bytes, Vesting]]:
    """Validate the bank genesis; return it with balances and vesting by raw address."""
    if section is None:
        raise GenesisError("genesis app_state has no 'bank' section")
    try:
        gen = msgspec.convert(section, BankGenesis)
    except msgspec.ValidationError as exc:
        raise GenesisError(f"bank genesis: {exc}") from None
    if gen.min_fee < 0:
        raise GenesisError("bank genesis: min_fee must be >= 0")
    missing = sorted(set(TRANCHE_PERCENT) - set(gen.tranches))
    unknown = sorted(set(gen.tranches) - set(TRANCHE_PERCENT))
    if missing or unknown:
        raise GenesisError(
            f"bank genesis tranches must be exactly {sorted(TRANCHE_PERCENT)}; "
            f"missing {missing}, unknown {unknown}"
        )
    balances: dict[bytes, int] = {}
    vesting: dict[bytes, Vesting] = {}
    total = 0
    for name, pct in TRANCHE_PERCENT.items():
        tranche = gen.tranches[name]
        want = tranche_amount(name)
        if not tranche.accounts:
            raise GenesisError(f"tranche {name!r} has no accounts")
        v = tranche.vesting
        if name in VESTED_TRANCHES and v is None:
            raise GenesisError(f"tranche {name!r} must have a vesting schedule")
        if v is not None and not 0 <= v.start_height <= v.cliff_height <= v.end_height:
            raise GenesisError(
                f"tranche {name!r} vesting needs 0 <= start_height <= cliff_height <= "
                f"end_height, got {v.start_height}, {v.cliff_height}, {v.end_height}"
            )
        got = 0
        for i, acct in enumerate(tranche.accounts):
            where = f"tranche {name!r} account {i}"
            try:
                addr = from_bech32(acct.address)
            except CryptoError as exc:
                raise GenesisError(f"{where}: {exc}") from None
            if acct.amount <= 0:
                raise GenesisError(f"{where}: amount must be a positive number of ucif")
            if addr in balances:
                raise GenesisError(f"{where}: address {acct.address} appears twice in genesis")
            balances[addr] = acct.amount
            got += acct.amount
            if v is not None:
                vesting[addr] = Vesting(acct.amount, v.start_height, v.cliff_height, v.end_height)
        if got != want:
            raise GenesisError(
                f"tranche {name!r} allocates {got} ucif; it must be exactly {pct}% of supply "
                f"= {want} ucif (off by {got - want:+d})"
            )
        total += got
    if total != TOTAL_SUPPLY:  # implied by the per-tranche checks; kept as a guard
        raise GenesisError(f"genesis allocates {total} ucif, supply is {TOTAL_SUPPLY}")
    return gen, balances, vesting


# --------------------------------------------------------------------------- queries


class AccountInfo(msgspec.Struct):
    """An account as the API shows it (amounts in ucif; locked/spendable at ``height``)."""

    address: str
    balance: int
    nonce: int
    locked: int
    spendable: int
    height: int
    vesting: Vesting | None = None


# --------------------------------------------------------------------------- module


class BankModule(Module):
    name = "bank"
    msgs: ClassVar[Mapping[str, type[Canonical]]] = {SEND: Send}

    # ------------------------------------------------------------ reads

    @staticmethod
    def balance(state: StateOverlay, addr: bytes) -> int:
        return state.get_int(_BAL + addr)

    @staticmethod
    def nonce(state: StateOverlay, addr: bytes) -> int:
        return state.get_int(_NONCE + addr)

    @staticmethod
    def vesting(state: StateOverlay, addr: bytes) -> Vesting | None:
        raw = state.get(_VEST + addr)
        return None if raw is None else encoding.decode(raw, Vesting)

    @classmethod
    def locked(cls, state: StateOverlay, addr: bytes, height: int) -> int:
        v = cls.vesting(state, addr)
        return 0 if v is None else v.locked(height)

    @classmethod
    def spendable(cls, state: StateOverlay, addr: bytes, height: int) -> int:
        return max(0, cls.balance(state, addr) - cls.locked(state, addr, height))

    @staticmethod
    def min_fee(state: StateOverlay) -> int:
        return state.get_int(_MIN_FEE)

    @classmethod
    def account_info(cls, state: StateOverlay, addr: bytes, height: int) -> AccountInfo:
        bal = cls.balance(state, addr)
        locked = cls.locked(state, addr, height)
        return AccountInfo(
            address=to_bech32(addr),
            balance=bal,
            nonce=cls.nonce(state, addr),
            locked=locked,
            spendable=max(0, bal - locked),
            height=height,
            vesting=cls.vesting(state, addr),
        )

    @staticmethod
    def total_balances(state: StateOverlay) -> int:
        return sum(encoding.decode(raw, int) for _, raw in state.iter_prefix(_BAL))

    # ------------------------------------------------------------ writes

    @staticmethod
    def _set_balance(state: StateOverlay, addr: bytes, amount: int) -> None:
        if amount < 0:
            raise InvariantViolation(f"balance of {addr.hex()} would become {amount}")
        if amount == 0:
            state.delete(_BAL + addr)
        else:
            state.set_int(_BAL + addr, amount)

    @classmethod
    def transfer(
        cls, ctx: Context, sender: bytes, to: bytes, amount: int, *, what: str = "transfer"
    ) -> None:
        """Move ``amount`` from ``sender``'s spendable balance to ``to``; MsgError if it can't.

        Other modules escrow funds by transferring to their :func:`module_address`.
        """
        if type(amount) is not int or amount <= 0:
            raise MsgError(f"{what} amount must be a positive integer of ucif", Code.INVALID_MSG)
        if len(to) != ADDRESS_LEN:
            raise MsgError(
                f"{what} recipient must be a {ADDRESS_LEN}-byte address", Code.INVALID_MSG
            )
        state = ctx.state
        bal = cls.balance(state, sender)
        if bal < amount:
            raise MsgError(
                f"insufficient funds for {what}: balance {bal} ucif, need {amount} ucif",
                Code.INSUFFICIENT_FUNDS,
            )
        locked = cls.locked(state, sender, ctx.height)
        if bal - locked < amount:
            raise MsgError(
                f"funds locked by vesting: {what} needs {amount} ucif, spendable is "
                f"{max(0, bal - locked)} of balance {bal} ({locked} locked at height {ctx.height})",
                Code.FUNDS_LOCKED,
            )
        if sender == to:
            return
        cls._set_balance(state, sender, bal - amount)
        cls._set_balance(state, to, cls.balance(state, to) + amount)

    def ante(self, ctx: Context, body: TxBody) -> None:
        """Check and apply a tx's nonce and fee; MsgError (nothing written) if either fails."""
        state = ctx.state
        signer = body.signer
        expected = self.nonce(state, signer)
        if body.nonce != expected:
            hint = "already used" if body.nonce < expected else "too high (gap)"
            raise MsgError(
                f"bad nonce: account expects {expected}, tx has {body.nonce} ({hint})",
                Code.BAD_NONCE,
            )
        min_fee = self.min_fee(state)
        if body.fee < min_fee:
            raise MsgError(
                f"fee {body.fee} ucif is below the minimum {min_fee} ucif", Code.FEE_TOO_LOW
            )
        if body.fee > TOTAL_SUPPLY:
            raise MsgError(f"fee {body.fee} ucif exceeds the total supply", Code.INSUFFICIENT_FUNDS)
        with state.atomic():
            if body.fee > 0:
                self.transfer(ctx, signer, FEE_COLLECTOR, body.fee, what="fee")
            state.set_int(_NONCE + signer, expected + 1)
        if body.fee > 0:
            ctx.emit("fee", payer=signer, amount=body.fee)

    # ------------------------------------------------------------ module hooks

    def init_genesis(self, ctx: Context, section: Any) -> None:
        gen, balances, vesting = parse_genesis(section)
        state = ctx.state
        state.set_int(_MIN_FEE, gen.min_fee)
        for addr, amount in balances.items():
            self._set_balance(state, addr, amount)
        for addr, v in vesting.items():
            state.set_obj(_VEST + addr, v)

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        if isinstance(msg, Send):
            if len(msg.to) != ADDRESS_LEN:
                raise MsgError(
                    f"send recipient must be a {ADDRESS_LEN}-byte address", Code.INVALID_MSG
                )
            if msg.amount <= 0:
                raise MsgError("send amount must be a positive integer of ucif", Code.INVALID_MSG)
            if msg.amount > TOTAL_SUPPLY:
                raise MsgError(
                    f"send amount {msg.amount} exceeds the total supply", Code.INVALID_MSG
                )
            if msg.to == sender:
                raise MsgError(
                    "self-send is not allowed (recipient is the signer)", Code.INVALID_MSG
                )

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        if not isinstance(msg, Send):
            raise MsgError(f"bank does not handle {type(msg).__name__}", Code.UNKNOWN_MSG)
        self.transfer(ctx, sender, msg.to, msg.amount, what="send")
        ctx.emit("transfer", sender=sender, recipient=msg.to, amount=msg.amount)

    def invariants(self, ctx: Context) -> None:
        state = ctx.state
        total = 0
        for key, raw in state.iter_prefix(_BAL):
            amount = _decode_state(key, raw, int)
            if amount <= 0:
                raise InvariantViolation(f"stored balance {amount} for {key[len(_BAL) :].hex()}")
            total += amount
        if total != TOTAL_SUPPLY:
            raise InvariantViolation(
                f"supply invariant broken at height {ctx.height}: balances sum to {total} ucif, "
                f"supply is {TOTAL_SUPPLY} ucif (difference {total - TOTAL_SUPPLY:+d})"
            )
        for key, raw in state.iter_prefix(_VEST):
            addr = key[len(_VEST) :]
            locked = _decode_state(key, raw, Vesting).locked(ctx.height)
            bal = self.balance(state, addr)
            if bal < locked:
                raise InvariantViolation(
                    f"vesting account {addr.hex()} holds {bal} ucif but {locked} must stay "
                    f"locked at height {ctx.height}"
                )


def _decode_state(key: bytes, raw: bytes, typ: type[T]) -> T:
    try:
        return encoding.decode(raw, typ)
    except EncodingError as exc:
        raise InvariantViolation(f"undecodable state at {key!r}: {exc}") from None

"""The plug-in surface for contracts: modules, their messages, the execution context.

A module (bank, validators, later fl, registry, staking, reputation ...) owns a key prefix
in state and a set of message types. The application routes each :class:`AnyMsg` to its
module by type string, so adding a contract never touches consensus or the app's core:
write a :class:`Module` subclass and add it to the module list.

Modules are stateless objects: everything they remember lives in the state overlay of the
:class:`Context` they are handed, so the same module instance can simulate a proposal and
execute a block without either run leaking into the other.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, ClassVar, TypeVar

from cifer.app.state import StateOverlay
from cifer.base import encoding
from cifer.base.chain.abci import Attr, Event, ValidatorUpdate
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import AnyMsg, Block
from cifer.base.crypto.keys import ADDRESS_LEN, to_bech32
from cifer.base.encoding import Canonical, EncodingError

M = TypeVar("M", bound="Module")

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*/[A-Z][A-Za-z0-9]*$")


class Code(IntEnum):
    """Result codes of check_tx and tx results; 0 is success, as in ABCI."""

    OK = 0
    MALFORMED_TX = 1  # bytes do not decode, or the tx breaks a stateless rule
    WRONG_CHAIN = 2
    BAD_SIGNATURE = 3
    UNKNOWN_MSG = 4  # no module handles the message type
    INVALID_MSG = 5  # message bytes do not decode, or fail the module's stateless check
    BAD_NONCE = 6
    FEE_TOO_LOW = 7
    INSUFFICIENT_FUNDS = 8
    FUNDS_LOCKED = 9  # enough balance, but part of it is locked by vesting
    MSG_FAILED = 10  # a message was rejected by its module (generic)
    UNAUTHORIZED = 11
    NOT_FOUND = 12
    INTERNAL = 13  # a module raised something other than MsgError: a bug, logged
    UNAVAILABLE = 14  # something a message references outside state (a blob) is missing or bad


class MsgError(Exception):
    """A message (or the ante step) is rejected; becomes a tx result with ``code`` and ``log``.

    ``log`` goes into the block's results hash, so it must be deterministic: no addresses of
    objects, no timings, nothing that differs between nodes.
    """

    def __init__(self, log: str, code: int = Code.MSG_FAILED) -> None:
        super().__init__(log)
        self.log = log
        self.code = int(code)


class InvariantViolation(RuntimeError):
    """State broke a rule that must always hold (e.g. supply). A bug: the node must halt."""


class ExecMode(Enum):
    """Why module code runs.

    ``BLOCK`` covers prepare_proposal, process_proposal and finalize_block alike: a
    validator must re-execute a proposal exactly as it will be finalized (that is how an
    aggregate is verified), and the app reuses process_proposal's execution in
    finalize_block. ``CHECK`` is mempool admission, where a module may skip work whose
    outcome cannot be known before the block (it must still reject what is surely invalid).
    """

    GENESIS = "genesis"
    CHECK = "check"
    BLOCK = "block"
    QUERY = "query"


def module_address(name: str) -> bytes:
    """Address of a module account (fee collector, pools, escrows): no key can sign for it."""
    return hashlib.sha256(b"cifer/module/v1/" + name.encode()).digest()[:ADDRESS_LEN]


@dataclass
class Context:
    """What a module sees while it runs: state, block coordinates, events, other modules."""

    state: StateOverlay
    height: int
    chain_id: str
    proposer: bytes
    mode: ExecMode
    modules: ModuleSet
    events: list[Event] = field(default_factory=list)
    genesis: Genesis | None = None  # set only during init_chain
    record_events: bool = True  # off where events are thrown away (check_tx, prepare)
    #: True where a node checks what lies outside state (blobs a message references) before
    #: it admits, proposes or votes for a tx: check_tx, prepare_proposal, process_proposal.
    #: False when it applies an already-committed block (replay, block sync), which must
    #: not depend on anything but the block and state.
    external: bool = False
    #: proposers of the previous height's failed rounds (set for blocks by the executor)
    failed_proposers: tuple[bytes, ...] = ()

    def emit(self, type: str, **attrs: object) -> None:
        """Record an event. ``bytes`` of address length render as bech32, others as hex."""
        if self.record_events:
            self.events.append(Event(type, [Attr(k, _attr_str(v)) for k, v in attrs.items()]))

    def module(self, typ: type[M]) -> M:
        """The loaded module of class ``typ`` (e.g. ``ctx.module(BankModule)``)."""
        return self.modules.get(typ)


@functools.lru_cache(maxsize=65536)
def _bech32(addr: bytes) -> str:
    # bech32's pure-Python checksum dominated block execution before this cache
    return to_bech32(addr)


def _attr_str(v: object) -> str:
    if isinstance(v, bytes):
        return _bech32(v) if len(v) == ADDRESS_LEN else v.hex()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | str):
        return str(v)
    raise TypeError(f"event attributes are str, int, bool or bytes, got {type(v).__name__}")


class SystemUnavailable(Exception):
    """A module cannot compute the system messages a block needs (e.g. a blob is missing).

    The proposer then proposes without them (validators will vote nil) and a validator
    votes nil: the height waits for a round in which the inputs are available.
    """


class Module:
    """Base class of a contract. Override what the module needs; the defaults do nothing.

    * ``name``: unique; also the prefix of the module's message types and state keys.
    * ``msgs``: message type string (``"<name>/<Msg>"``) -> Canonical struct type.
    * ``system_msgs``: types only a block proposer creates (e.g. ``fl/Aggregate``): they
      are never accepted from a user tx. A block starts with the system messages that
      :meth:`propose_system` returns for it; every validator recomputes them and votes nil
      for a block whose system messages differ (this is the proof of aggregation).
    """

    name: ClassVar[str] = ""
    msgs: ClassVar[Mapping[str, type[Canonical]]] = {}
    system_msgs: ClassVar[Mapping[str, type[Canonical]]] = {}

    def propose_system(self, ctx: Context) -> list[Canonical]:
        """System messages the block at ``ctx.height`` must start with, computed from the
        committed state in ``ctx``; raise :class:`SystemUnavailable` if inputs are missing."""
        return []

    def handle_system(self, ctx: Context, msg: Canonical) -> None:
        """Apply a system message (already verified, or part of a committed block)."""
        raise MsgError(f"module {self.name!r} has no system messages", Code.UNKNOWN_MSG)

    def system_matches(self, got: Canonical, expected: Canonical) -> bool:
        """Whether a proposer's system message equals this validator's recomputation.
        Byte equality unless a module knows a field is allowed a stated tolerance."""
        return encoding.encode(got) == encoding.encode(expected)

    def admissible(self, ctx: Context, msg: Canonical, sender: bytes) -> str:
        """Checks outside state (only where ``ctx.external``): "" or why a block may not
        contain ``msg``. Unlike a MsgError this makes the whole tx inadmissible, so the
        outcome of a committed tx never depends on what a node happened to hold."""
        return ""

    def init_genesis(self, ctx: Context, section: Any) -> None:
        """Load ``app_state[name]`` (``None`` if absent); raise ValueError on bad input."""
        if section is not None:
            raise ValueError(f"module {self.name!r} takes no genesis state")

    def validate_msg(self, msg: Canonical, sender: bytes) -> None:
        """Stateless checks (amount > 0, lengths ...); raise MsgError(..., Code.INVALID_MSG)."""

    def handle(self, ctx: Context, msg: Canonical, sender: bytes) -> None:
        """Execute ``msg`` signed by ``sender``; raise :class:`MsgError` to reject it."""
        raise MsgError(
            f"module {self.name!r} does not handle {type(msg).__name__}", Code.UNKNOWN_MSG
        )

    def begin_block(self, ctx: Context, block: Block) -> None:
        """Runs before the block's txs (e.g. to apply committed evidence)."""

    def end_block(self, ctx: Context) -> list[ValidatorUpdate]:
        """Runs after the block's txs; may return validator power changes."""
        return []

    def invariants(self, ctx: Context) -> None:
        """Raise :class:`InvariantViolation` if this module's state is inconsistent."""


class ModuleSet:
    """The loaded modules in execution order, with message routing by type string."""

    def __init__(self, modules: Iterable[Module]) -> None:
        self.modules: tuple[Module, ...] = tuple(modules)
        self._by_name: dict[str, Module] = {}
        self._by_type: dict[type[Module], Module] = {}
        self._routes: dict[str, tuple[Module, type[Canonical]]] = {}
        self._system: dict[str, tuple[Module, type[Canonical]]] = {}
        for m in self.modules:
            if not m.name or not re.fullmatch(r"[a-z][a-z0-9_]*", m.name):
                raise ValueError(f"module name {m.name!r} must match [a-z][a-z0-9_]*")
            if m.name in self._by_name:
                raise ValueError(f"two modules named {m.name!r}")
            if type(m) in self._by_type:
                raise ValueError(f"module class {type(m).__name__} loaded twice")
            self._by_name[m.name] = m
            self._by_type[type(m)] = m
            for type_str, struct in m.msgs.items():
                if not _TYPE_RE.match(type_str) or not type_str.startswith(m.name + "/"):
                    raise ValueError(
                        f"message type {type_str!r} of module {m.name!r} must look like "
                        f"'{m.name}/MsgName'"
                    )
                if type_str in self._routes:
                    raise ValueError(f"message type {type_str!r} registered twice")
                if not issubclass(struct, Canonical):
                    raise ValueError(f"message type {type_str!r} is not a Canonical struct")
                self._routes[type_str] = (m, struct)
            for type_str, struct in m.system_msgs.items():
                if not _TYPE_RE.match(type_str) or not type_str.startswith(m.name + "/"):
                    raise ValueError(f"system message type {type_str!r} of {m.name!r} is malformed")
                if type_str in self._routes or type_str in self._system:
                    raise ValueError(f"message type {type_str!r} registered twice")
                self._system[type_str] = (m, struct)
        self._system_types = {struct: t for t, (_, struct) in self._system.items()}

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def by_name(self, name: str) -> Module:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no module named {name!r} is loaded") from None

    def get(self, typ: type[M]) -> M:
        m = self._by_type.get(typ)
        if m is None:
            raise KeyError(f"module {typ.__name__} is not loaded")
        assert isinstance(m, typ)
        return m

    def message_types(self) -> list[str]:
        return sorted(self._routes)

    def decode(self, msg: AnyMsg, sender: bytes) -> tuple[Module, Canonical]:
        """Route and decode one message and run its stateless check; MsgError says why not."""
        route = self._routes.get(msg.type)
        if route is None:
            if msg.type in self._system:
                raise MsgError(
                    f"{msg.type} is created by block proposers only, not sent in a tx",
                    Code.UNAUTHORIZED,
                )
            raise MsgError(f"unknown message type {msg.type[:64]!r}", Code.UNKNOWN_MSG)
        module, struct = route
        try:
            obj = encoding.decode(msg.value, struct)
        except EncodingError as exc:
            raise MsgError(f"{msg.type}: {exc}", Code.INVALID_MSG) from None
        module.validate_msg(obj, sender)
        return module, obj

    def decode_system(self, msg: AnyMsg) -> tuple[Module, Canonical]:
        """Route and decode a system message (MsgError if it is not one)."""
        route = self._system.get(msg.type)
        if route is None:
            raise MsgError(f"{msg.type[:64]!r} is not a system message type", Code.UNKNOWN_MSG)
        module, struct = route
        try:
            return module, encoding.decode(msg.value, struct)
        except EncodingError as exc:
            raise MsgError(f"{msg.type}: {exc}", Code.INVALID_MSG) from None

    def pack_system(self, msg: Canonical) -> AnyMsg:
        """Wrap a system message by its registered type string."""
        type_str = self._system_types.get(type(msg))
        if type_str is None:
            raise KeyError(f"{type(msg).__name__} is not a registered system message")
        return AnyMsg(type_str, encoding.encode(msg))

    def decode_all(self, msgs: Sequence[AnyMsg], sender: bytes) -> list[tuple[Module, Canonical]]:
        out = []
        for i, m in enumerate(msgs):
            try:
                out.append(self.decode(m, sender))
            except MsgError as exc:
                raise MsgError(f"message {i}: {exc.log}", exc.code) from None
        return out


#: System txs start with a 0x00 byte, which no canonical SignedTx does (it is a MessagePack
#: array), so a system tx can never be mistaken for, or smuggled in as, a user tx.
SYSTEM_TX_PREFIX = b"\x00cifer/system/v1\x00"


def encode_system_tx(msg: AnyMsg) -> bytes:
    return SYSTEM_TX_PREFIX + encoding.encode(msg)


def is_system_tx(raw: bytes) -> bool:
    return raw.startswith(SYSTEM_TX_PREFIX)


def decode_system_tx(raw: bytes) -> AnyMsg:
    """The message of a system tx; MsgError if the bytes are not one."""
    if not is_system_tx(raw):
        raise MsgError("not a system tx", Code.MALFORMED_TX)
    try:
        return encoding.decode(raw[len(SYSTEM_TX_PREFIX) :], AnyMsg)
    except EncodingError as exc:
        raise MsgError(f"malformed system tx: {exc}", Code.MALFORMED_TX) from None


def pack(type_str: str, msg: Canonical) -> AnyMsg:
    """Wrap a module message for a tx."""
    return AnyMsg(type_str, encoding.encode(msg))

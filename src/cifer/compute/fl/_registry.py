"""Name -> function registries shared by aggregators and attacks.

A rule is found by its registered name (``"krum"``) or, for experiments, by an import path
``"package.module:function"``. Plug-in paths import code, so anything that resolves names
coming from the network (job specs on chain) must pass ``allow_plugins=False``: a validator
must never import a module because a transaction named it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True, slots=True)
class Entry(Generic[F]):
    """A registered function with the parameter names it reads from its context."""

    name: str
    fn: F
    params: frozenset[str]
    summary: str


class Registry(Generic[F]):
    """A small name registry; ``error`` is the exception type raised on bad look-ups."""

    def __init__(self, kind: str, error: type[ValueError]) -> None:
        self._kind = kind
        self._error = error
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, fn: F, params: Iterable[str] = (), summary: str = "") -> F:
        """Add ``fn`` under ``name``; re-registering a name is an error (no silent override)."""
        if not name or ":" in name or name != name.strip():
            raise self._error(f"invalid {self._kind} name {name!r}")
        if name in self._entries:
            raise self._error(f"{self._kind} {name!r} is already registered")
        self._entries[name] = Entry(name, fn, frozenset(params), summary)
        return fn

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def entry(self, name: str) -> Entry[F] | None:
        """The registered entry, or None for unknown names and plug-in paths."""
        return self._entries.get(name)

    def get(self, name: str, *, allow_plugins: bool = True) -> F:
        """Resolve a registered name or a ``module:function`` path."""
        entry = self._entries.get(name)
        if entry is not None:
            return entry.fn
        if ":" in name:
            if not allow_plugins:
                raise self._error(f"plug-in {self._kind} paths are disabled here: {name!r}")
            return self._load(name)
        known = ", ".join(self._entries)
        raise self._error(f"unknown {self._kind} {name!r}; known: {known}")

    def check_params(self, name: str, params: Mapping[str, object]) -> None:
        """Reject parameter names the rule does not read (catches typos in job specs)."""
        entry = self._entries.get(name)
        if entry is None:
            return  # plug-ins declare nothing; they validate themselves
        unknown = sorted(set(params) - entry.params)
        if unknown:
            allowed = ", ".join(sorted(entry.params)) or "none"
            raise self._error(
                f"{self._kind} {name!r} has no parameter(s) {', '.join(unknown)}; "
                f"allowed: {allowed}"
            )

    def _load(self, path: str) -> F:
        module_name, _, attr = path.partition(":")
        if not module_name or not attr:
            raise self._error(f"plug-in path must be 'package.module:function', got {path!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self._error(f"cannot import plug-in module {module_name!r}: {exc}") from exc
        obj: object = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise self._error(f"plug-in {path!r}: {module_name} has no {attr!r}") from exc
        if not callable(obj):
            raise self._error(f"plug-in {path!r} is not callable")
        return obj  # type: ignore[return-value]

"""Shared types for model-poisoning attacks (used by the simulator and robustness tests).

An attack has one signature, ``attack(honest[h, d], ctx: AttackContext) -> byz[f, d]``:
it sees the honest clients' updates of the round (the omniscient threat model of the
papers) and returns the f Byzantine clients' updates, in the order of
``ctx.byzantine``. :func:`assemble` places honest and Byzantine rows at their client
indices so an aggregator can be run on the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
F64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


class AttackError(ValueError):
    """Invalid input to an attack."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackContext:
    """What an attacker knows besides the honest updates.

    ``n`` clients in total, ``f`` of them Byzantine at indices ``byzantine``; ``rng`` for
    randomised attacks; ``aggregator`` names the rule under attack (attacks may adapt to
    it); ``params`` holds attack parameters; ``own_updates`` (f x d, optional) are the
    updates the attackers would have sent honestly (for "negate/scale your own update").
    """

    n: int
    f: int
    byzantine: IntArray
    rng: np.random.Generator | None = None
    aggregator: str | None = None
    params: Mapping[str, object] = field(default_factory=dict)
    own_updates: FloatArray | None = None

    @classmethod
    def first(cls, n: int, f: int, **kwargs: Any) -> AttackContext:
        """Context with the first f clients Byzantine (the usual simulation layout)."""
        return cls(n=n, f=f, byzantine=np.arange(f, dtype=np.intp), **kwargs)

    def with_(self, **changes: Any) -> AttackContext:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def param_float(self, name: str, default: float) -> float:
        """Finite real parameter ``name``."""
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise AttackError(f"attack parameter {name!r} must be a number, got {value!r}")
        out = float(value)
        if not np.isfinite(out):
            raise AttackError(f"attack parameter {name!r} must be finite, got {out}")
        return out

    def param_int(self, name: str, default: int) -> int:
        """Integer parameter ``name``."""
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise AttackError(f"attack parameter {name!r} must be an integer, got {value!r}")
        return int(value)

    def param_str(self, name: str, default: str, choices: tuple[str, ...] = ()) -> str:
        """String parameter ``name`` from ``choices``."""
        value = self.params.get(name, default)
        if not isinstance(value, str) or (choices and value not in choices):
            raise AttackError(f"attack parameter {name!r} must be one of {choices}, got {value!r}")
        return value

    def require_rng(self, attack: str) -> np.random.Generator:
        """The Generator, or a clear error for randomised attacks."""
        if self.rng is None:
            raise AttackError(f"{attack}: ctx.rng (a seeded numpy Generator) is required")
        return self.rng


Attack = Callable[[FloatArray, AttackContext], FloatArray]


def check_honest(honest: object, ctx: AttackContext, attack: str) -> FloatArray:
    """Validate the honest matrix against the context; return it."""
    if not isinstance(honest, np.ndarray) or honest.ndim != 2:
        shape = getattr(honest, "shape", None)
        raise AttackError(f"{attack}: honest updates must be a 2-D array, got shape {shape}")
    if honest.dtype not in (np.float32, np.float64):
        raise AttackError(f"{attack}: honest updates must be float32/float64, got {honest.dtype}")
    if ctx.f < 0 or ctx.f > ctx.n:
        raise AttackError(f"{attack}: need 0 <= f <= n, got n={ctx.n}, f={ctx.f}")
    h = honest.shape[0]
    if h != ctx.n - ctx.f:
        raise AttackError(f"{attack}: expected n - f = {ctx.n - ctx.f} honest updates, got {h}")
    byz = np.asarray(ctx.byzantine)
    if byz.shape != (ctx.f,):
        raise AttackError(f"{attack}: byzantine must list f={ctx.f} indices, got {byz.shape}")
    if ctx.f and (byz.min() < 0 or byz.max() >= ctx.n or np.unique(byz).size != ctx.f):
        raise AttackError(f"{attack}: byzantine indices must be distinct and in [0, {ctx.n})")
    if not np.isfinite(honest).all():
        raise AttackError(f"{attack}: honest updates contain NaN or inf")
    return honest


def need_honest(honest: FloatArray, minimum: int, attack: str) -> None:
    """Attacks built on honest statistics need a few honest updates."""
    if honest.shape[0] < minimum:
        raise AttackError(f"{attack}: needs at least {minimum} honest updates")


def tile(vec: npt.NDArray[Any], f: int, dtype: np.dtype[Any]) -> FloatArray:
    """f identical rows of ``vec`` (most attacks send one vector from every attacker)."""
    out: FloatArray = np.broadcast_to(vec.astype(dtype), (f, vec.shape[0])).copy()
    return out


def assemble(honest: FloatArray, byzantine: FloatArray, ctx: AttackContext) -> FloatArray:
    """The n x d matrix of all clients' updates: Byzantine rows at ``ctx.byzantine``,
    honest rows in order elsewhere."""
    d = honest.shape[1]
    if byzantine.shape != (ctx.f, d):
        raise AttackError(f"attack returned shape {byzantine.shape}, expected ({ctx.f}, {d})")
    out = np.empty((ctx.n, d), dtype=honest.dtype)
    mask = np.zeros(ctx.n, dtype=np.bool_)
    mask[np.asarray(ctx.byzantine, dtype=np.intp)] = True
    out[mask] = byzantine[np.argsort(np.asarray(ctx.byzantine), kind="stable")]
    out[~mask] = honest
    return out

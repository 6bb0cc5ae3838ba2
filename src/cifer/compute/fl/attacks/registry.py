"""Attack registry: attacks by name, plug-ins by ``module:function`` path, and
:func:`run_attack`, which validates the output and assembles the full update matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.compute.fl._registry import Registry
from cifer.compute.fl.attacks.base import (
    Attack,
    AttackContext,
    AttackError,
    FloatArray,
    assemble,
)
from cifer.compute.fl.attacks.data import flip_labels
from cifer.compute.fl.attacks.simple import gaussian, ipm, mimic, scaling, sign_flip
from cifer.compute.fl.attacks.statistical import alie, min_max, min_sum

DataAttack = Callable[..., npt.NDArray[Any]]

_ATTACKS: Registry[Attack] = Registry("attack", AttackError)
_ATTACKS.register("sign_flip", sign_flip, ("mode",), "minus the honest mean / own update")
_ATTACKS.register("gaussian", gaussian, ("sigma", "mu"), "Gaussian noise")
_ATTACKS.register("ipm", ipm, ("epsilon",), "inner product manipulation, Xie et al. 2019")
_ATTACKS.register("alie", alie, ("z", "ddof"), "a little is enough, Baruch et al. 2019")
_ATTACKS.register("mimic", mimic, ("target",), "copy one honest client, Karimireddy et al.")
_MINMAX = ("deviation", "gamma_init", "tol")
_ATTACKS.register("min_max", min_max, _MINMAX, "Shejwalkar & Houmansadr 2021")
_ATTACKS.register("min_sum", min_sum, _MINMAX, "Shejwalkar & Houmansadr 2021")
_ATTACKS.register("scaling", scaling, ("scale",), "scaling / model replacement")
_ATTACKS.register("backdoor", scaling, ("scale",), "alias of scaling")

_DATA_ATTACKS: Registry[DataAttack] = Registry("data attack", AttackError)
_DATA_ATTACKS.register("label_flip", flip_labels, ("num_classes",), "y -> C - 1 - y")


def register_attack(name: str, fn: Attack, params: Iterable[str] = (), summary: str = "") -> Attack:
    """Register a model-poisoning attack under a new name."""
    return _ATTACKS.register(name, fn, params, summary)


def get_attack(name: str, *, allow_plugins: bool = True) -> Attack:
    """The attack registered as ``name`` or the function at a ``module:function`` path."""
    if _DATA_ATTACKS.entry(name) is not None:
        raise AttackError(f"{name!r} is a data-level attack; use get_data_attack({name!r})")
    return _ATTACKS.get(name, allow_plugins=allow_plugins)


def get_data_attack(name: str, *, allow_plugins: bool = True) -> DataAttack:
    """A data-level attack (applied to a Byzantine client's dataset before training)."""
    return _DATA_ATTACKS.get(name, allow_plugins=allow_plugins)


def attack_names() -> tuple[str, ...]:
    """Registered model-poisoning attack names."""
    return _ATTACKS.names()


def data_attack_names() -> tuple[str, ...]:
    """Registered data-level attack names."""
    return _DATA_ATTACKS.names()


def run_attack(
    attack: str | Attack,
    honest: FloatArray,
    ctx: AttackContext,
    *,
    allow_plugins: bool = True,
) -> FloatArray:
    """Run ``attack`` and return all n updates (Byzantine rows at ``ctx.byzantine``).

    Checks parameter names for registered attacks and that the attack returned f finite
    rows of the right length (an attack may send huge values, never NaN: a NaN would only
    test input validation, which has its own tests).
    """
    if isinstance(attack, str):
        _ATTACKS.check_params(attack, ctx.params)
        fn = get_attack(attack, allow_plugins=allow_plugins)
    else:
        fn = attack
    byz = np.asarray(fn(honest, ctx))
    if byz.shape != (ctx.f, honest.shape[1]):
        raise AttackError(
            f"attack returned shape {byz.shape}, expected ({ctx.f}, {honest.shape[1]})"
        )
    return assemble(honest, byz.astype(honest.dtype, copy=False), ctx)

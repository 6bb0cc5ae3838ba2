"""Model-poisoning attacks for evaluation and robustness tests, with one signature:
``attack(honest[n - f, d], ctx: AttackContext) -> byzantine[f, d]``; plus data-level
attacks (label flipping) that act on a client's dataset. Same plug-in style as the
aggregators: :func:`get_attack` by name or ``"package.module:function"``."""

from cifer.compute.fl.attacks.base import Attack, AttackContext, AttackError, assemble
from cifer.compute.fl.attacks.data import flip_labels
from cifer.compute.fl.attacks.registry import (
    attack_names,
    data_attack_names,
    get_attack,
    get_data_attack,
    register_attack,
    run_attack,
)
from cifer.compute.fl.attacks.simple import (
    gaussian,
    ipm,
    mimic,
    scaling,
    sign_flip,
    top_variance_client,
)
from cifer.compute.fl.attacks.statistical import alie, alie_z, min_max, min_sum

__all__ = [
    "Attack",
    "AttackContext",
    "AttackError",
    "alie",
    "alie_z",
    "assemble",
    "attack_names",
    "data_attack_names",
    "flip_labels",
    "gaussian",
    "get_attack",
    "get_data_attack",
    "ipm",
    "mimic",
    "min_max",
    "min_sum",
    "register_attack",
    "run_attack",
    "scaling",
    "sign_flip",
    "top_variance_client",
]

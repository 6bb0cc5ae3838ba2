"""Data-level attacks: the attacker poisons its training data, not its update.

They act before local training, so the simulator applies them to a Byzantine client's
dataset and the client then trains honestly on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cifer.compute.fl.attacks.base import AttackError


def flip_labels(y: npt.NDArray[Any], num_classes: int = 10) -> npt.NDArray[Any]:
    """Label flip: y -> (num_classes - 1) - y (for 10 classes, y -> 9 - y).

    Returns a new array of the same dtype; labels must be integers in [0, num_classes).
    """
    if num_classes < 2:
        raise AttackError(f"label_flip: num_classes must be >= 2, got {num_classes}")
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise AttackError(f"label_flip: labels must be integers, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
        raise AttackError(
            f"label_flip: labels must lie in [0, {num_classes}), got "
            f"[{int(arr.min())}, {int(arr.max())}]"
        )
    out: npt.NDArray[Any] = (num_classes - 1 - arr).astype(arr.dtype)
    return out

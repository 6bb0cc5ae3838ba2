"""A seeded virtual network and clock.

Every source of nondeterminism (delays, drops, duplicates, reordering, partitions) comes
from one ``random.Random(seed)``, and events are ordered by (virtual time, sequence number),
so a seed replays the same schedule exactly.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How the network misbehaves while chaos is on. Delays are uniform in [min, max] ms."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay_ms: int = 1
    max_delay_ms: int = 50


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    kind: str = field(compare=False)
    node: int = field(compare=False)
    payload: Any = field(compare=False)


class VirtualNetwork:
    def __init__(self, n_nodes: int, seed: int, chaos: LinkModel, calm: LinkModel) -> None:
        self.n = n_nodes
        self.rng = random.Random(seed)
        self.chaos = chaos
        self.calm = calm
        self.chaotic = True
        self.now = 0
        self._seq = 0
        self._queue: list[_Event] = []
        self.groups: list[set[int]] | None = None  # current partition, None = connected
        self.sent = 0
        self.dropped = 0

    def push(self, time: int, kind: str, node: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(time, self._seq, kind, node, payload))

    def pop(self) -> _Event | None:
        if not self._queue:
            return None
        ev = heapq.heappop(self._queue)
        self.now = max(self.now, ev.time)
        return ev

    def __len__(self) -> int:
        return len(self._queue)

    def connected(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def partition(self, groups: list[set[int]]) -> None:
        self.groups = groups

    def heal(self) -> None:
        self.groups = None

    def send(self, src: int, dst: int, msg: Any) -> None:
        """Queue a delivery of ``msg`` subject to the current link model and partition."""
        self.sent += 1
        if src == dst:
            self.push(self.now, "deliver", dst, (src, msg))
            return
        model = self.chaos if self.chaotic else self.calm
        if not self.connected(src, dst) or self.rng.random() < model.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < model.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(model.min_delay_ms, model.max_delay_ms)
            self.push(self.now + delay, "deliver", dst, (src, msg))

    def random_partition(self) -> list[set[int]]:
        nodes = list(range(self.n))
        self.rng.shuffle(nodes)
        cut = self.rng.randint(1, self.n - 1)
        return [set(nodes[:cut]), set(nodes[cut:])]

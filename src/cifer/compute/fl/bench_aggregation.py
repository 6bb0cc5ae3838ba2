"""Wall-clock timing of every registered aggregation rule on synthetic updates.

Not a test: it tells us roughly where we stand for a given (n, d, f) on this machine, and
the CLI's ``bench`` command calls :func:`time_rules`. Run it directly with
``python -m cifer.compute.fl.bench_aggregation --n 50 --d 1000000 --f 10``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from cifer.compute.fl.aggregators import AggContext, aggregate, aggregator_names

#: Aliases are timed once under their canonical name.
_SKIP = frozenset({"rfa"})


def _contexts(n: int, d: int, f: int, updates: np.ndarray, seed: int) -> dict[str, AggContext]:
    honest_mean = updates[f:].mean(axis=0, dtype=np.float64).astype(np.float32)
    base = AggContext(f=f)
    return {
        "centered_clipping": base.with_(previous=np.zeros(d, dtype=np.float32)),
        "fltrust": base.with_(root_update=honest_mean),
        "reputation": base.with_(
            reputation=np.full(n, 900_000, dtype=np.int64), params={"clip_norm": 1e3}
        ),
        "bucketing": base.with_(
            params={"inner": "median", "bucket_size": 2}, rng=np.random.default_rng(seed)
        ),
    }


def make_updates(n: int, d: int, f: int, seed: int) -> np.ndarray:
    """n x d float32 updates: n - f honest N(0, 1) rows, then f rows at -10 x honest mean."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    if f:
        x[:f] = -10.0 * x[f:].mean(axis=0, dtype=np.float64).astype(np.float32)
    return x


def time_rules(
    n: int = 50,
    d: int = 1_000_000,
    f: int = 10,
    repeats: int = 1,
    seed: int = 0,
    rules: Sequence[str] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each rule (``repeats`` calls each) on one synthetic matrix.

    Rules whose requirements (n vs f) are not met are skipped. The bucketing Generator is
    re-seeded per call so each repeat does the same work.
    """
    updates = make_updates(n, d, f, seed)
    weights = np.ones(n, dtype=np.float64)
    contexts = _contexts(n, d, f, updates, seed)
    names = [r for r in (rules or aggregator_names()) if r not in _SKIP]
    out: dict[str, list[float]] = {}
    for name in names:
        times: list[float] = []
        for _ in range(repeats):
            ctx = contexts.get(name, AggContext(f=f))
            if ctx.rng is not None:
                ctx = ctx.with_(rng=np.random.default_rng(seed))
            start = time.perf_counter()
            try:
                aggregate(name, updates, weights, ctx)
            except ValueError:
                break  # requirement not met for this (n, f)
            times.append(time.perf_counter() - start)
        if times:
            out[name] = times
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Print a timing table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--f", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    res = time_rules(a.n, a.d, a.f, a.repeats, a.seed)
    print(f"n={a.n} d={a.d} f={a.f} float32, seconds per call (min / all)")
    for name, times in res.items():
        print(f"{name:20s} {min(times):8.3f}   {' '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()

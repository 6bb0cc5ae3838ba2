"""Byzantine-robust aggregation rules with one signature:
``rule(updates[n, d], weights[n], ctx: AggContext) -> AggResult``.

Find rules by name with :func:`get_aggregator` (or pass ``"package.module:function"`` for a
plug-in) and run them through :func:`aggregate`, which also checks parameter names and the
result. Per-rule semantics of ``scores``/``accepted`` and of client weights are in each
rule's docstring.
"""

from cifer.compute.fl.aggregators.base import (
    AggContext,
    AggregationError,
    Aggregator,
    AggResult,
    gram,
    sq_distances,
)
from cifer.compute.fl.aggregators.bucketing import bucketing
from cifer.compute.fl.aggregators.clipping import centered_clipping
from cifer.compute.fl.aggregators.coordinate import coordinate_median, trimmed_mean
from cifer.compute.fl.aggregators.fltrust import fltrust
from cifer.compute.fl.aggregators.geomed import geometric_median
from cifer.compute.fl.aggregators.krum import bulyan, krum, krum_scores, multi_krum
from cifer.compute.fl.aggregators.mean import fedavg, reputation_weighted
from cifer.compute.fl.aggregators.registry import (
    ROBUST_RULES,
    aggregate,
    aggregator_names,
    check_aggregator_params,
    get_aggregator,
    register_aggregator,
)

__all__ = [
    "ROBUST_RULES",
    "AggContext",
    "AggResult",
    "AggregationError",
    "Aggregator",
    "aggregate",
    "aggregator_names",
    "bucketing",
    "bulyan",
    "centered_clipping",
    "check_aggregator_params",
    "coordinate_median",
    "fedavg",
    "fltrust",
    "geometric_median",
    "get_aggregator",
    "gram",
    "krum",
    "krum_scores",
    "multi_krum",
    "register_aggregator",
    "reputation_weighted",
    "sq_distances",
    "trimmed_mean",
]

"""Federated learning engine (off-chain): model parameters and their wire format
(:mod:`.params`), Byzantine-robust aggregation rules (:mod:`.aggregators`), attacks for
evaluation (:mod:`.attacks`) and a timing helper (:mod:`.bench_aggregation`).

Nothing here knows about the chain; the fl contract calls in by rule name."""

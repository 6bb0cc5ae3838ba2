"""Random schedules through the deterministic simulator; the soak runs many more (see README)."""

from __future__ import annotations

import pytest

from cifer.base.consensus.sim.byzantine import BEHAVIOURS
from cifer.base.consensus.sim.runner import SimConfig, run

CI_SEEDS = 150  # per validator count: 300 schedules in CI


@pytest.mark.parametrize("n", [4, 7])
def test_random_schedules_keep_safety_and_liveness(n: int) -> None:
    failures = []
    for seed in range(CI_SEEDS):
        r = run(SimConfig(validators=n, byzantine=(n - 1) // 3, heights=4, seed=seed))
        if not r.ok:
            failures.append((seed, r.byzantine, r.violations))
    assert failures == []


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_each_byzantine_behaviour_is_tolerated(behaviour: str) -> None:
    for seed in range(8):
        r = run(SimConfig(validators=4, byzantine=1, behaviours=(behaviour,), heights=5, seed=seed))
        assert r.ok, (seed, r.violations)
        assert min(r.heights) >= 5


def test_negative_control_one_third_byzantine_breaks_safety() -> None:
    """With >= 1/3 Byzantine power the checker must see a fork, or it proves nothing."""
    forks = sum(
        not run(SimConfig(validators=4, byzantine=2, heights=3, seed=s, split_brain=True)).safe
        for s in range(10)
    )
    assert forks == 10


def test_same_split_with_less_than_one_third_stays_safe() -> None:
    for seed in range(10):
        r = run(SimConfig(validators=4, byzantine=1, heights=3, seed=seed, split_brain=True))
        assert r.safe and r.live, r.violations


def test_equivocation_is_committed_as_evidence() -> None:
    r = run(SimConfig(validators=4, byzantine=1, behaviours=("double_vote",), heights=6, seed=3))
    assert r.ok and r.evidence >= 1


def test_a_seed_replays_exactly() -> None:
    a = run(SimConfig(validators=7, byzantine=2, heights=4, seed=11))
    b = run(SimConfig(validators=7, byzantine=2, heights=4, seed=11))
    assert (a.heights, a.rounds, a.messages, a.dropped, a.virtual_ms) == (
        b.heights,
        b.rounds,
        b.messages,
        b.dropped,
        b.virtual_ms,
    )


def test_no_progress_without_quorum_is_a_liveness_failure_not_a_safety_one() -> None:
    """Two of four silent: nobody may commit; the checker reports liveness, not safety."""
    r = run(
        SimConfig(
            validators=4,
            byzantine=2,
            behaviours=("silent", "silent"),
            heights=2,
            seed=1,
            liveness_budget_ms=20_000,
        )
    )
    assert r.safe
    assert not r.live
    assert max(r.heights) == 0


def test_proposals_with_malformed_txs_never_commit() -> None:
    for seed in range(6):
        r = run(
            SimConfig(
                validators=4, byzantine=1, behaviours=("invalid_block",), heights=8, seed=seed
            )
        )
        assert r.ok, (seed, r.violations)
    # the Byzantine proposer's turns cost a round: some height must have needed round >= 1
    r = run(SimConfig(validators=4, byzantine=1, behaviours=("invalid_block",), heights=12, seed=0))
    assert max(r.rounds) >= 1


def test_validity_checker_catches_an_app_that_accepts_anything(monkeypatch) -> None:
    from cifer.base.chain.abci import ProcessResult
    from cifer.base.chain.kvstore import KVStoreApp

    monkeypatch.setattr(
        KVStoreApp, "process_proposal", lambda self, block, failed=(): ProcessResult(True)
    )
    results = [
        run(SimConfig(validators=4, byzantine=1, behaviours=("invalid_block",), heights=8, seed=s))
        for s in range(4)
    ]
    assert any(any(v.startswith("validity") for v in r.violations) for r in results)

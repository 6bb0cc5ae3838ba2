"""The reputation contract: the integer EMA, state transitions, block hooks and genesis."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from cifer.app.application import CiferApp
from cifer.app.contracts import reputation
from cifer.app.contracts.bank import BankModule
from cifer.app.contracts.reputation import (
    PPM,
    RepEvent,
    RepParams,
    RepRecord,
    RepState,
    ReputationInfo,
    ReputationModule,
    ema_step,
    parse_genesis,
)
from cifer.app.contracts.validators import ValidatorsModule
from cifer.app.genesis_builder import account_key, validator_key
from cifer.app.module import Context, ExecMode, InvariantViolation, ModuleSet
from cifer.app.state import StateOverlay
from cifer.base.chain.genesis import Genesis
from cifer.base.chain.types import (
    PRECOMMIT,
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Header,
    Vote,
    commit_hash,
    data_hash,
    evidence_hash,
    make_evidence,
    vote_sign_bytes,
)
from cifer.base.crypto.keys import to_bech32
from cifer.base.store.state import StateStore

from .helpers import CHAIN_ID, genesis

R = ReputationModule
ALICE = account_key(0).address
BOB = account_key(1).address
VALS = [validator_key(i).address for i in range(4)]


def make_ctx(section: object = None, height: int = 7) -> Context:
    """A context over a fresh in-memory state with the reputation params loaded."""
    state = StateOverlay(StateStore(":memory:"))
    modules = ModuleSet([ReputationModule()])
    ctx = Context(state, 0, CHAIN_ID, b"", ExecMode.GENESIS, modules)
    modules.get(ReputationModule).init_genesis(ctx, section)
    ctx.height, ctx.mode = height, ExecMode.BLOCK
    return ctx


def run_events(ctx: Context, addr: bytes, events: Sequence[RepEvent]) -> list[tuple[int, RepState]]:
    out = []
    for ev in events:
        score = R.record(ctx, addr, ev)
        out.append((score, R.status(ctx.state, addr)))
    return out


ACC, REJ = RepEvent.CLIENT_ACCEPTED, RepEvent.CLIENT_REJECTED


# --------------------------------------------------------------------------- the rule


def test_ema_step_is_symmetric_rounds_towards_the_target_and_never_overshoots() -> None:
    assert ema_step(100, 300_000) == 30 and ema_step(-100, 300_000) == -30
    # 7 * 0.3 = 2.1: floor division would give 2 up but -3 down; we move 3 both ways
    assert ema_step(7, 300_000) == 3 and ema_step(-7, 300_000) == -3
    assert ema_step(1, 1) == 1 and ema_step(-1, 1) == -1  # never stalls short of the target
    assert ema_step(0, 300_000) == 0 and ema_step(5, 0) == 0
    for delta in range(-2_000, 2_001, 7):
        for alpha in (1, 15_000, 300_000, 999_999, PPM):
            step = ema_step(delta, alpha)
            assert abs(step) <= abs(delta) and step == -ema_step(-delta, alpha)


def test_new_address_has_the_default_score_and_no_history() -> None:
    ctx = make_ctx()
    assert R.score(ctx.state, ALICE) == 500_000
    assert R.status(ctx.state, ALICE) is RepState.NEW
    assert R.history(ctx.state, ALICE) == []
    info = R.info(ctx.state, ALICE)
    assert (info.score, info.state, info.events, info.history) == ("0.500000", "New", 0, [])


def test_three_accepted_rounds_make_a_client_trusted() -> None:
    ctx = make_ctx()
    assert run_events(ctx, ALICE, [ACC] * 3) == [
        (650_000, RepState.INITIAL),
        (755_000, RepState.NORMAL),
        (828_500, RepState.TRUSTED),
    ]


def test_two_rejected_rounds_make_a_client_unreliable() -> None:
    ctx = make_ctx()
    assert run_events(ctx, ALICE, [REJ] * 2) == [
        (350_000, RepState.INITIAL),
        (245_000, RepState.UNRELIABLE),
    ]


def test_states_follow_the_score_both_ways() -> None:
    ctx = make_ctx()
    run_events(ctx, ALICE, [ACC] * 3)
    down = [st for _, st in run_events(ctx, ALICE, [REJ] * 4)]
    # 0.8285 -> 0.57995 -> 0.405965 -> 0.284176 -> ...
    assert down == [RepState.NORMAL, RepState.NORMAL, RepState.UNRELIABLE, RepState.UNRELIABLE]
    up = [st for _, st in run_events(ctx, ALICE, [ACC] * 6)]
    assert RepState.NORMAL in up and up[-1] is RepState.TRUSTED
    assert up.index(RepState.NORMAL) < up.index(RepState.TRUSTED)
    assert all(st is not RepState.INITIAL for st in down + up)  # warm-up happens once


def test_agreement_straggler_and_validator_step_sizes() -> None:
    ctx = make_ctx()
    assert R.record(ctx, ALICE, ACC, value_ppm=400_000) == 470_000  # 0.5 + (0.4-0.5)*0.3
    assert R.record(ctx, BOB, RepEvent.CLIENT_STRAGGLER) == 425_000  # half alpha
    v0, v1 = VALS[0], VALS[1]
    assert R.record(ctx, v0, RepEvent.VALIDATOR_MISSED_VOTE) == 492_500  # alpha / 20
    assert R.record(ctx, v1, RepEvent.VALIDATOR_SIGNED) == 507_500


def test_bad_record_arguments_are_rejected() -> None:
    ctx = make_ctx()
    with pytest.raises(ValueError, match="value_ppm must be"):
        R.record(ctx, ALICE, ACC, value_ppm=1_000_001)
    with pytest.raises(ValueError, match="value_ppm must be"):
        R.record(ctx, ALICE, ACC, value_ppm=-1)
    with pytest.raises(ValueError, match="only to CLIENT_ACCEPTED"):
        R.record(ctx, ALICE, REJ, value_ppm=0)
    with pytest.raises(ValueError, match="20 raw bytes"):
        R.record(ctx, b"short", ACC)
    assert len(ctx.state) == 1  # only the params: nothing was written


def test_repeated_signing_converges_to_exactly_one_and_stays_in_range() -> None:
    ctx = make_ctx()
    v = VALS[0]
    score = 0
    for _ in range(2_000):
        score = R.record(ctx, v, RepEvent.VALIDATOR_SIGNED)
        assert 0 <= score <= PPM
    assert score == PPM
    assert R.status(ctx.state, v) is RepState.TRUSTED
    assert R.history(ctx.state, v) == []  # signing writes no history
    assert ctx.events == []  # ... and emits no event


def test_evidence_zeroes_the_score_and_is_unreliable_at_once() -> None:
    ctx = make_ctx()
    assert R.record(ctx, VALS[2], RepEvent.EVIDENCE) == 0  # the very first event
    assert R.status(ctx.state, VALS[2]) is RepState.UNRELIABLE
    # warm-up is skipped: the next event does not make it Initial again
    R.record(ctx, VALS[2], RepEvent.VALIDATOR_SIGNED)
    assert R.status(ctx.state, VALS[2]) is RepState.UNRELIABLE
    run_events(ctx, ALICE, [ACC] * 5)
    assert R.record(ctx, ALICE, RepEvent.EVIDENCE) == 0
    assert R.status(ctx.state, ALICE) is RepState.UNRELIABLE


def test_history_is_newest_first_with_a_limit_and_events_are_emitted() -> None:
    ctx = make_ctx(height=12)
    R.record(ctx, ALICE, ACC, job_id=3, round=1)
    ctx.height = 13
    R.record(ctx, ALICE, REJ, job_id=3, round=2)
    ctx.height = 14
    R.record(ctx, ALICE, ACC, value_ppm=900_000, job_id=3, round=3)
    hist = R.history(ctx.state, ALICE)
    assert [(h.height, h.event, h.job_id, h.round) for h in hist] == [
        (14, RepEvent.CLIENT_ACCEPTED, 3, 3),
        (13, RepEvent.CLIENT_REJECTED, 3, 2),
        (12, RepEvent.CLIENT_ACCEPTED, 3, 1),
    ]
    assert [(h.old_score_ppm, h.new_score_ppm) for h in reversed(hist)] == [
        (500_000, 650_000),
        (650_000, 455_000),
        (455_000, 588_500),
    ]
    assert [RepState(h.state) for h in reversed(hist)] == [
        RepState.INITIAL,
        RepState.NORMAL,
        RepState.NORMAL,
    ]
    assert R.history(ctx.state, ALICE, limit=1) == hist[:1]
    assert R.history(ctx.state, ALICE, limit=0) == []
    ev = ctx.events[-1]
    assert ev.type == "reputation"
    assert {a.key: a.value for a in ev.attrs} == {
        "address": to_bech32(ALICE),
        "event": "client_accepted",
        "score_ppm": "588500",
        "score": "0.588500",
        "state": "Normal",
    }


def test_history_is_pruned_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reputation, "HISTORY_LIMIT", 3)
    ctx = make_ctx()
    for r in range(5):
        R.record(ctx, VALS[0], RepEvent.VALIDATOR_MISSED_VOTE, round=r)
    assert [h.round for h in R.history(ctx.state, VALS[0])] == [4, 3, 2]
    assert len(list(ctx.state.iter_prefix(b"reputation/hist/"))) == 3
    assert R.info(ctx.state, VALS[0]).events == 5


def test_info_is_an_api_struct() -> None:
    ctx = make_ctx()
    run_events(ctx, ALICE, [ACC] * 3)
    info = R.info(ctx.state, ALICE, limit=2)
    assert isinstance(info, ReputationInfo)
    assert (info.address, info.score_ppm, info.score, info.state, info.events) == (
        to_bech32(ALICE),
        828_500,
        "0.828500",
        "Trusted",
        3,
    )
    assert [(h.event, h.state) for h in info.history] == [
        ("client_accepted", "Trusted"),
        ("client_accepted", "Normal"),
    ]
    doc = msgspec.json.decode(msgspec.json.encode(info))
    assert doc["history"][0]["new_score_ppm"] == 828_500


def test_same_events_give_the_same_state_bytes() -> None:
    seq = [ACC, REJ, RepEvent.CLIENT_STRAGGLER, ACC, RepEvent.EVIDENCE, ACC]

    def changes() -> dict[bytes, bytes | None]:
        ctx = make_ctx()
        for i, ev in enumerate(seq):
            R.record(ctx, ALICE, ev, job_id=1, round=i)
            R.record(ctx, BOB, ACC, value_ppm=123_457 * i % PPM, job_id=1, round=i)
        return ctx.state.changeset()

    first = changes()
    assert first == changes()
    assert any(k.startswith(b"reputation/hist/") for k in first)


# --------------------------------------------------------------------------- can_join


def test_can_join_reasons() -> None:
    ctx = make_ctx()
    assert R.can_join(ctx.state, ALICE, 500_000) == ""  # New, default score
    assert R.can_join(ctx.state, ALICE, 600_000) == (
        f"reputation of {to_bech32(ALICE)} is 0.500000, below the job's minimum 0.600000"
    )
    run_events(ctx, ALICE, [REJ] * 2)
    # Unreliable never joins, not even a job with no minimum
    assert R.can_join(ctx.state, ALICE, 0) == (
        f"reputation of {to_bech32(ALICE)} is Unreliable (0.245000 < 0.300000)"
    )
    run_events(ctx, BOB, [ACC] * 3)
    assert R.can_join(ctx.state, BOB, 800_000) == ""
    with pytest.raises(ValueError, match="min_score_ppm"):
        R.can_join(ctx.state, BOB, PPM + 1)


# --------------------------------------------------------------------------- genesis


def test_genesis_defaults_and_custom_params_are_stored() -> None:
    assert R.params(make_ctx().state) == RepParams()
    section = {"alpha_ppm": 500_000, "warmup": 1, "default_score_ppm": 400_000}
    ctx = make_ctx(section)
    assert R.params(ctx.state) == RepParams(400_000, 500_000, 1, 800_000, 300_000)
    assert R.score(ctx.state, ALICE) == 400_000
    assert R.record(ctx, ALICE, ACC) == 700_000
    assert R.status(ctx.state, ALICE) is RepState.NORMAL  # warmup 1: no Initial state


@pytest.mark.parametrize(
    ("section", "msg"),
    [
        ({"alpha_ppm": 0}, "alpha_ppm must be in 1..1000000, got 0"),
        ({"alpha_ppm": 1_000_001}, "alpha_ppm must be in"),
        ({"default_score_ppm": -1}, "default_score_ppm must be in 0..1000000"),
        ({"warmup": 0}, "warmup must be in 1..1000"),
        ({"trusted_ppm": 300_000}, "need 1 <= unreliable_ppm < trusted_ppm"),
        ({"unreliable_ppm": 0}, "need 1 <= unreliable_ppm < trusted_ppm"),
        ({"trusted_ppm": 1_000_001}, "need 1 <= unreliable_ppm < trusted_ppm"),
        ({"alpha": 1}, "unknown field `alpha`"),
        ({"alpha_ppm": 0.3}, "Expected `int`, got `float`"),
        ({"warmup": True}, "Expected `int`, got `bool`"),
        ([1, 2], "Expected `object`"),
    ],
)
def test_genesis_params_are_validated(section: object, msg: str) -> None:
    with pytest.raises(ValueError, match="reputation genesis") as err:
        parse_genesis(section)
    assert msg in str(err.value)


# --------------------------------------------------------------------------- in the app


def rep_genesis(section: object = None) -> Genesis:
    g = genesis()
    if section is not None:
        g.app_state["reputation"] = section
    return g


def new_app(section: object = None) -> CiferApp:
    app = CiferApp(
        StateStore(":memory:"), modules=[BankModule(), ValidatorsModule(), ReputationModule()]
    )
    app.init_chain(rep_genesis(section))
    return app


def block(
    app: CiferApp, signers: Sequence[bytes], evidence: Sequence[DuplicateVoteEvidence] = ()
) -> Block:
    height = app.info().last_height + 1
    sigs = [CommitSig(a, b"\x00" * 64) for a in sorted(signers)]
    last_commit = None if height == 1 else Commit(height - 1, 0, b"\x01" * 32, sigs)
    header = Header(
        chain_id=CHAIN_ID,
        height=height,
        time_ms=1_000 * height,
        last_block_hash=b"",
        last_commit_hash=commit_hash(last_commit),
        data_hash=data_hash([]),
        app_hash=app.info().last_app_hash,
        last_results_hash=b"",
        validators_hash=b"",
        next_validators_hash=b"",
        evidence_hash=evidence_hash(list(evidence)),
        proposer=VALS[0],
    )
    return Block(header, [], last_commit, list(evidence))


def run(
    app: CiferApp, signers: Sequence[bytes], evidence: Sequence[DuplicateVoteEvidence] = ()
) -> bytes:
    res = app.finalize_block(block(app, signers, evidence))
    app.commit()
    return res.app_hash


def view(app: CiferApp) -> StateOverlay:
    return StateOverlay(app.store)


def vote(i: int, height: int, block_hash: bytes) -> Vote:
    key = validator_key(i)
    sig = key.sign(vote_sign_bytes(CHAIN_ID, PRECOMMIT, height, 0, block_hash))
    return Vote(PRECOMMIT, height, 0, block_hash, key.address, sig)


def test_app_genesis_rejects_a_bad_section_and_stores_a_good_one() -> None:
    with pytest.raises(ValueError, match="warmup must be in"):
        new_app({"warmup": 0})
    app = new_app({"alpha_ppm": 200_000})
    assert R.params(view(app)).alpha_ppm == 200_000
    assert R.params(view(new_app())) == RepParams()


def test_missed_votes_from_last_commit() -> None:
    app = new_app()
    run(app, [])  # height 1 has no last commit: nothing is scored
    assert all(R.status(view(app), v) is RepState.NEW for v in VALS)
    res = app.finalize_block(block(app, VALS[:3]))  # validator 3's precommit is missing
    app.commit()
    s = view(app)
    assert [R.score(s, v) for v in VALS] == [507_500, 507_500, 507_500, 492_500]
    assert R.history(s, VALS[0]) == []
    [missed] = R.history(s, VALS[3])
    assert (missed.height, missed.event) == (2, RepEvent.VALIDATOR_MISSED_VOTE)
    rep_events = [e for e in res.events if e.type == "reputation"]
    assert len(rep_events) == 1 and rep_events[0].attrs[0].value == to_bech32(VALS[3])
    app.check_invariants()


def test_evidence_in_a_block_zeroes_the_offender() -> None:
    app = new_app()
    run(app, [])
    ev = make_evidence(vote(2, 1, b"\x01" * 32), vote(2, 1, b"\x02" * 32))
    ev2 = make_evidence(vote(2, 1, b"\x01" * 32), vote(2, 1, b"\x03" * 32))
    run(app, VALS, [ev, ev2])
    s = view(app)
    assert R.score(s, VALS[2]) == 0 and R.status(s, VALS[2]) is RepState.UNRELIABLE
    assert [h.event for h in R.history(s, VALS[2])] == [RepEvent.EVIDENCE]  # once per block
    assert R.can_join(s, VALS[2], 0).endswith("is Unreliable (0.000000 < 0.300000)")
    # jailed, so out of the active set: its absence from later commits is not scored
    run(app, [v for v in VALS if v != VALS[2]])
    assert R.score(view(app), VALS[2]) == 0
    assert R.score(view(app), VALS[0]) > 507_500


def test_same_blocks_give_the_same_app_hash() -> None:
    ev = make_evidence(vote(1, 2, b"\x01" * 32), vote(1, 2, b"\x02" * 32))
    hashes = []
    for _ in range(2):
        app = new_app()
        trail = [run(app, []), run(app, VALS[:3]), run(app, VALS[1:], [ev]), run(app, VALS)]
        hashes.append(trail)
    assert hashes[0] == hashes[1]


def test_invariant_catches_a_score_out_of_range() -> None:
    ctx = make_ctx()
    ReputationModule().invariants(ctx)
    ctx.state.set_obj(b"reputation/rec/" + ALICE, RepRecord(PPM + 1, 2, 3, 0))
    with pytest.raises(InvariantViolation, match=r"outside 0\.\.1000000"):
        ReputationModule().invariants(ctx)

"""Node API routes for federated training jobs and reputation (read-only views of state).

Writes go through ``POST /txs`` like any other transaction, and blobs through
``PUT /blobs/{hash}``; these routes only show what the chain holds, with hashes in hex and
addresses in bech32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import FastAPI, HTTPException

from cifer.app.contracts.fl import FlModule, Job, JobStatus, RoundRecord
from cifer.app.contracts.fl_privacy import CKKS, INPUT, PHASES, SECAGG, describe
from cifer.app.contracts.reputation import ReputationModule
from cifer.app.state import StateOverlay
from cifer.base.crypto.keys import CryptoError, from_bech32, to_bech32
from cifer.compute.privacy.ckks import CkksParams

if TYPE_CHECKING:
    from cifer.app.node.runtime import Node


def job_json(job: Job, state: StateOverlay, height: int) -> dict[str, Any]:
    s = job.spec
    submitted = [to_bech32(a) for a, _ in FlModule.updates(state, job.id, job.round)]
    return {
        "id": job.id,
        "creator": to_bech32(job.creator),
        "name": s.name,
        "model": s.model,
        "input_shape": list(s.input_shape),
        "num_classes": s.num_classes,
        "initial_model": s.initial_model.hex(),
        "rule": s.rule,
        "rule_params": dict(s.rule_params),
        "byzantine": s.byzantine,
        "privacy": s.privacy,
        "privacy_mode": describe(s.privacy, s.dp),
        "model_params": s.model_params,
        "secagg": _fields(s.secagg),
        "ckks": _fields(s.ckks or CkksParams()) if s.privacy == CKKS else None,
        "dp": _fields(s.dp),
        "enc_keys": {
            to_bech32(a): m.enc_key.hex()
            for a in FlModule.members(state, job.id)
            if (m := FlModule.member(state, job.id, a)) is not None and m.enc_key
        },
        "phase": PHASES[job.phase] if s.privacy == SECAGG else None,
        "ckks_context": job.ckks_context.context_id.hex() if job.ckks_context else None,
        "epsilon_micro": job.epsilon_micro if s.dp is not None else None,
        "note": job.note,
        "rounds": s.rounds,
        "min_clients": s.min_clients,
        "max_clients": s.max_clients,
        "round_blocks": s.round_blocks,
        "reward": s.reward,
        "min_reputation_ppm": s.min_reputation_ppm,
        "purpose": s.purpose,
        "train": dict(s.train),
        "status": JobStatus.NAMES[job.status],
        "round": job.round,
        "round_start": job.round_start,
        "deadline": job.deadline if job.status not in (JobStatus.OPEN, JobStatus.DONE) else None,
        "model_hash": job.model.hex(),
        "escrow_left": job.escrow_left,
        "members": job.members,
        "member_list": [to_bech32(a) for a in FlModule.members(state, job.id)],
        "submitted": submitted if job.status == JobStatus.RUNNING else [],
        "created": job.created,
        "finished": job.finished,
        "height": height,
    }


def _fields(obj: Any) -> dict[str, Any] | None:
    """A Canonical struct as a JSON object (its wire form is an array)."""
    if obj is None:
        return None
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in msgspec.structs.asdict(obj).items()
    }


def encoding_hex(obj: Any) -> str:
    from cifer.base import encoding

    return encoding.encode(obj).hex()


def round_json(rec: RoundRecord) -> dict[str, Any]:
    return {
        "round": rec.round,
        "model": rec.model.hex(),
        "clients": [to_bech32(a) for a in rec.clients],
        "accepted": list(rec.accepted),
        "agreement_ppm": list(rec.agreement_ppm),
        "stragglers": [to_bech32(a) for a in rec.stragglers],
        "paid": list(rec.paid),
        "proposer": to_bech32(rec.proposer) if rec.proposer else None,
        "proposer_paid": rec.proposer_paid,
        "height": rec.height,
        "epsilon_micro": rec.epsilon_micro,
        "blamed": [to_bech32(a) for a in rec.blamed],
        "failure": rec.failure,
    }


def add_fl_routes(api: FastAPI, node: Node) -> None:
    app = node.app
    view = app.view

    def get_job(state: StateOverlay, job_id: int) -> Job:
        job = FlModule.job(state, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @api.get("/fl/jobs", summary="All federated training jobs")
    async def jobs() -> dict[str, Any]:
        state, height = view()
        return {"jobs": [job_json(j, state, height) for j in FlModule.jobs(state)]}

    @api.get("/fl/jobs/{job_id}", summary="One job: spec, status, current round and model")
    async def job(job_id: int) -> dict[str, Any]:
        state, height = view()
        return job_json(get_job(state, job_id), state, height)

    @api.get("/fl/jobs/{job_id}/rounds/{round_}", summary="A closed round's aggregate record")
    async def round_(job_id: int, round_: int) -> dict[str, Any]:
        state, _ = view()
        get_job(state, job_id)
        rec = FlModule.round_record(state, job_id, round_)
        if rec is None:
            raise HTTPException(404, f"round {round_} of job {job_id} has not closed")
        return round_json(rec)

    @api.get(
        "/fl/jobs/{job_id}/secagg/{round_}/{phase}",
        summary="A secagg phase's committed messages (hex payloads by sender)",
    )
    async def secagg_phase(job_id: int, round_: int, phase: str) -> dict[str, Any]:
        state, height = view()
        job = get_job(state, job_id)
        if job.spec.privacy != SECAGG:
            raise HTTPException(400, f"job {job_id} is {job.spec.privacy}, not secagg")
        if phase not in PHASES:
            raise HTTPException(400, f"phase must be one of {', '.join(PHASES)}")
        p = PHASES.index(phase)
        senders = FlModule.phase_senders(state, job_id, round_, p)
        payloads = [] if p == INPUT else FlModule.phase_msgs(state, job_id, round_, p)
        return {
            "job_id": job_id,
            "round": round_,
            "phase": phase,
            "senders": [to_bech32(a) for a in senders],
            "payloads": [raw.hex() for raw in payloads],
            "height": height,
        }

    @api.get("/fl/jobs/{job_id}/context", summary="A ckks job's published context and key bundle")
    async def ckks_context(job_id: int) -> dict[str, Any]:
        state, _ = view()
        get_job(state, job_id)
        ctx = FlModule.context(state, job_id)
        if ctx is None:
            raise HTTPException(404, f"job {job_id} has no published ckks context")
        return {
            "job_id": job_id,
            "info": encoding_hex(ctx.info),
            "context_id": ctx.info.context_id.hex(),
            "public_context": ctx.info.public_context_sha256.hex(),
            "key_shares": ctx.key_shares.hex(),
        }

    @api.get(
        "/fl/jobs/{job_id}/provenance",
        summary="The final model's asset record: initial model, every aggregate, contributors",
    )
    async def provenance(job_id: int) -> dict[str, Any]:
        state, _ = view()
        get_job(state, job_id)
        prov = FlModule.provenance(state, job_id)
        if prov is None:
            raise HTTPException(404, f"job {job_id} has not finished")
        return {
            "asset_id": prov.asset_id.hex() or None,
            "job_id": prov.job_id,
            "model": prov.model.hex(),
            "initial_model": prov.initial_model.hex(),
            "round_models": [m.hex() for m in prov.round_models],
            "contributors": [to_bech32(a) for a in prov.contributors],
            "height": prov.height,
        }

    @api.get("/reputation/{address}", summary="Reputation score, state and history of an address")
    async def reputation(address: str, limit: int = 100) -> dict[str, Any]:
        try:
            addr = from_bech32(address)
        except (CryptoError, ValueError) as exc:
            raise HTTPException(400, f"not a cif1... address: {exc}") from None
        if not 1 <= limit <= 1000:
            raise HTTPException(400, "limit must be in 1..1000")
        state, _ = view()
        info = ReputationModule.info(state, addr, limit)
        out: dict[str, Any] = msgspec.to_builtins(info)
        return out

    if node.config.fault_injection:

        @api.post(
            "/debug/tamper_aggregates",
            summary="TEST ONLY: make this node propose wrong aggregates (a Byzantine proposer)",
        )
        async def tamper(on: bool = True) -> dict[str, Any]:
            app.tamper_system = tamper_aggregates if on else None
            return {"tamper_aggregates": on}


def tamper_aggregates(msgs: list[Any]) -> list[Any]:
    """Replace every proposed aggregate's model hash: what a Byzantine proposer would do."""
    from cifer.app.contracts.fl import Aggregate
    from cifer.base.chain.types import AnyMsg
    from cifer.base.encoding import decode, encode

    out = []
    for m in msgs:
        if m.type == "fl/Aggregate":
            agg = decode(m.value, Aggregate)
            m = AnyMsg(m.type, encode(msgspec.structs.replace(agg, model=bytes(32))))
        out.append(m)
    return out

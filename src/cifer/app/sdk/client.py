"""A node client for on-chain federated learning: create jobs, join them, train, submit.

The ledger only ever sees hashes: weights and updates travel as safetensors blobs
(``PUT /blobs/{sha256}``) and a transaction names the hash. A client therefore does three
things per round: download the global model blob the job points at, train on its own
data, and upload its *delta* (``trained - global``, the form :mod:`cifer.app.fl_engine`
aggregates) before sending ``SubmitUpdate``. Raw training data never leaves the process.

:meth:`Client.run` is that loop, made robust to what happens on a real network: the node
restarting (requests are retried for ``retry_s``), a round closing before the update
lands (the client straggles and waits for the next round instead of failing), a tx lost
from a restarted node's mempool (resubmitted after a few blocks; the contract refuses
duplicates, so resubmitting is safe).

Example::

    from cifer import Client
    c = Client("http://127.0.0.1:26657", key)
    job_id = c.create_job(name="digits", model="logreg", input_shape=[1, 8, 8],
                          num_classes=10, initial_params=params, min_clients=3,
                          reward=1_000_000)
    result = c.run(job_id, trainer, x, y)   # on each client, with its own data
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from cifer.app.contracts.fl import create_job_msg, join_job_msg, submit_update_msg
from cifer.app.sdk.assets import AssetOps, parse_asset_id
from cifer.app.sdk.private import (
    PrivacyRequirement,
    PrivateParticipant,
    check_requirement,
    is_plaintext_update,
)
from cifer.app.txbuilder import DEFAULT_FEE, make_tx
from cifer.base.chain.types import AnyMsg
from cifer.base.crypto.keys import CryptoError, PrivateKey, from_bech32
from cifer.compute.fl.params import F32Array, ParamError, ParamSpec, from_bytes, to_bytes
from cifer.compute.fl.trainers import Trainer, TrainerError, local_update, param_spec
from cifer.compute.privacy.ckks import CkksError, CkksParams
from cifer.compute.privacy.dp import DpConfig
from cifer.compute.privacy.secagg import SecAggParams

log = logging.getLogger(__name__)

#: Local training defaults when neither the caller nor the job's ``train`` hints set them
#: (the simulator's defaults).
DEFAULT_EPOCHS = 1
DEFAULT_LR = 0.1
DEFAULT_BATCH = 32
#: How often :meth:`Client.run` polls the job (seconds).
POLL_S = 0.2
#: Blocks to wait for an accepted update to show up before sending it again (a restarted
#: node forgets its mempool).
RESUBMIT_BLOCKS = 3
#: Read timeout of a ``mode=commit`` broadcast: the node waits up to 30 s for the block.
COMMIT_READ_S = 45.0
#: Pause between uploading an update blob and sending the tx that names it. The tx gossips
#: to the other validators faster than the node replicates the blob to them, and a
#: validator that sees the tx first must fetch the blob while it checks the tx (slow, and
#: under load it can time out), so a moment's head start for the blob pays for itself.
REPLICATE_WAIT_S = 0.25
#: Answers that mean "try again shortly" (rate limit, node restarting behind a proxy).
RETRY_STATUS = frozenset({429, 502, 503, 504})

DeltaTransform = Callable[[F32Array, int], npt.NDArray[Any]]


class ClientError(RuntimeError):
    """The node refused a request (its reason is in the message and in ``log``) or the
    client could not complete it. ``status`` is the HTTP status, if there was one."""

    def __init__(self, message: str, *, status: int | None = None, log: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.log = log or message


class NodeUnreachable(ClientError):
    """The node did not answer for the whole retry window."""


@dataclass(frozen=True, slots=True)
class TrainHints:
    """Local training settings: explicit arguments, else the job's ``train`` hints, else
    the defaults. Keys read from a job: ``epochs``, ``lr``, ``batch`` (aliases
    ``local_epochs``, ``batch_size``) and ``steps``; others are ignored so that newer jobs
    do not break older clients."""

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch: int = DEFAULT_BATCH
    steps: int | None = None

    @classmethod
    def from_job(
        cls,
        train: Mapping[str, str],
        *,
        epochs: int | None = None,
        lr: float | None = None,
        batch: int | None = None,
    ) -> TrainHints:
        def pick(*names: str) -> str | None:
            for n in names:
                if n in train:
                    return str(train[n])
            return None

        def num(text: str | None, kind: type[int] | type[float], name: str) -> Any:
            if text is None:
                return None
            try:
                return kind(text)
            except ValueError:
                raise ClientError(
                    f"job's training hint {name}={text!r} is not a valid {kind.__name__}"
                ) from None

        e = epochs if epochs is not None else num(pick("epochs", "local_epochs"), int, "epochs")
        r = lr if lr is not None else num(pick("lr"), float, "lr")
        b = batch if batch is not None else num(pick("batch", "batch_size"), int, "batch")
        s = num(pick("steps", "local_steps"), int, "steps")
        hints = cls(
            DEFAULT_EPOCHS if e is None else int(e),
            DEFAULT_LR if r is None else float(r),
            DEFAULT_BATCH if b is None else int(b),
            s,
        )
        if hints.steps is None and hints.epochs < 1:
            raise ClientError(f"epochs must be >= 1, got {hints.epochs}")
        if hints.steps is not None and hints.steps < 1:
            raise ClientError(f"steps must be >= 1, got {hints.steps}")
        if not math.isfinite(hints.lr) or hints.lr <= 0:
            raise ClientError(f"lr must be a positive number, got {hints.lr}")
        if hints.batch < 1:
            raise ClientError(f"batch must be >= 1, got {hints.batch}")
        return hints


@dataclass(slots=True)
class RoundReport:
    """One closed round as this client saw it. ``submitted``: our update was among the
    round's inputs; ``accepted``/``agreement_ppm``/``paid`` come from the round record
    (None / 0 when we did not submit). Timings are seconds; 0 for rounds we did not train."""

    round: int
    submitted: bool
    accepted: bool | None
    agreement_ppm: int | None
    paid: int
    model: str
    samples: int = 0
    loss: float | None = None
    download_s: float = 0.0
    train_s: float = 0.0
    submit_s: float = 0.0  # upload of the delta blob + SubmitUpdate


@dataclass(slots=True)
class RunResult:
    """What :meth:`Client.run` did: one report per round that closed while it ran."""

    job_id: int
    address: str
    status: str  # last job status seen: "done", or whatever it was when stopped
    final_model: str  # hex hash of the global model at the end
    #: ckks jobs: the final model in the clear, decrypted here (the chain holds it encrypted)
    final_params: dict[str, F32Array] | None = None
    rounds: list[RoundReport] = field(default_factory=list)
    wall_s: float = 0.0
    stopped: bool = False

    @property
    def rounds_submitted(self) -> int:
        return sum(r.submitted for r in self.rounds)

    @property
    def rounds_skipped(self) -> int:
        """Rounds that closed without our update (training too slow, node down ...)."""
        return sum(not r.submitted for r in self.rounds)

    def timings(self) -> list[dict[str, float]]:
        return [
            {
                "round": r.round,
                "download_s": r.download_s,
                "train_s": r.train_s,
                "submit_s": r.submit_s,
            }
            for r in self.rounds
        ]


@dataclass(slots=True)
class _Attempt:
    """Our update for one round: trained once, sent (and if need be re-sent) until it
    appears on chain or the round closes."""

    round: int
    model: str
    delta: F32Array | None
    blob: bytes
    hash: str
    samples: int
    loss: float
    download_s: float
    train_s: float
    submit_s: float = 0.0
    sent_height: int | None = None
    gave_up: bool = False


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300] or r.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("log") or body)
    return str(body)


def _addr(a: str | bytes) -> bytes:
    if isinstance(a, bytes):
        return a
    try:
        return from_bech32(a)
    except CryptoError as exc:
        raise ClientError(f"{a!r} is not a cif1... address: {exc}") from None


def _closed_text(text: str) -> bool:
    """The contract's wording for "this round no longer takes updates"."""
    return "is closed" in text or "closed at height" in text or "not taking updates" in text


class Client(AssetOps):
    """One account talking to one node. Thread-safe for its own txs (nonces come from the
    node's ``pending_nonce``, taken under a lock); use one Client per key."""

    def __init__(
        self,
        node: str,
        key: PrivateKey,
        *,
        timeout_s: float = 30.0,
        retry_s: float = 60.0,
        fee: int = DEFAULT_FEE,
        replicate_wait_s: float = REPLICATE_WAIT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.node = node.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.fee = fee
        self.replicate_wait_s = replicate_wait_s
        self._http = httpx.Client(base_url=self.node, timeout=timeout_s, transport=transport)
        self._chain_id: str | None = None
        self._tx_lock = threading.Lock()
        self._model_cache: tuple[str, dict[str, F32Array]] | None = None
        self._privacy: dict[int, str] = {}  # job id -> privacy mode (fixed at creation)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """This client's cif1... address."""
        return self.key.public.bech32

    # ------------------------------------------------------------ HTTP

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send, retrying connection failures and busy answers for ``retry_s``. A
        non-idempotent request (a tx) is retried only if it never reached the node."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            try:
                r = self._http.request(
                    method,
                    path,
                    json=json,
                    content=content,
                    timeout=timeout or self.timeout_s,
                    headers={"content-type": "application/octet-stream"} if content else None,
                )
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not never_sent and not idempotent:
                    raise ClientError(
                        f"lost the connection to {self.node} during {method} {path} "
                        f"({type(exc).__name__}); the node may or may not have taken it"
                    ) from exc
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if r.status_code not in RETRY_STATUS:
                    return r
                last = f"HTTP {r.status_code}: {_detail(r)}"
            if time.monotonic() + delay > deadline:
                raise NodeUnreachable(
                    f"node {self.node} did not answer {method} {path} for "
                    f"{self.retry_s:g} s (last error: {last})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _get_json(self, path: str, what: str) -> Any:
        r = self._request("GET", path)
        if r.status_code >= 400:
            detail = _detail(r)
            raise ClientError(f"{what}: {detail}", status=r.status_code, log=detail)
        return r.json()

    # ------------------------------------------------------------ reads

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self._get_json("/status", "node status")
        return out

    @property
    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = str(self.status()["chain_id"])
        return self._chain_id

    def genesis(self) -> dict[str, Any]:
        """The node's genesis document (a light client should also have its own copy)."""
        out: dict[str, Any] = self._get_json("/genesis", "genesis")
        return out

    def account(self, address: str | None = None) -> dict[str, Any]:
        a = address or self.address
        out: dict[str, Any] = self._get_json(f"/accounts/{a}", f"account {a}")
        return out

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the node's ``GET /fl/jobs/{id}`` shows it (status, round, model ...)."""
        out: dict[str, Any] = self._get_json(f"/fl/jobs/{job_id}", f"job {job_id}")
        return out

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._get_json("/fl/jobs", "jobs")["jobs"])

    def round(self, job_id: int, r: int) -> dict[str, Any]:
        """A closed round's record: clients, accepted, agreement, stragglers, payouts."""
        out: dict[str, Any] = self._get_json(
            f"/fl/jobs/{job_id}/rounds/{r}", f"job {job_id} round {r}"
        )
        return out

    def provenance(self, job_id: int) -> dict[str, Any]:
        """The finished job's asset record (404, as ClientError, until it is done)."""
        out: dict[str, Any] = self._get_json(
            f"/fl/jobs/{job_id}/provenance", f"job {job_id} provenance"
        )
        return out

    def reputation(self, address: str | None = None) -> dict[str, Any]:
        a = address or self.address
        out: dict[str, Any] = self._get_json(f"/reputation/{a}", f"reputation of {a}")
        return out

    # ------------------------------------------------------------ blobs

    def get_blob(self, hash_hex: str) -> bytes:
        """A blob by hash; its bytes are checked against the hash (the node is not trusted)."""
        r = self._request("GET", f"/blobs/{hash_hex}")
        if r.status_code >= 400:
            detail = _detail(r)
            raise ClientError(f"blob {hash_hex}: {detail}", status=r.status_code, log=detail)
        data = r.content
        got = hashlib.sha256(data).hexdigest()
        if got != hash_hex.lower():
            raise ClientError(
                f"blob {hash_hex} from {self.node} hashes to {got}: corrupt or forged, refused"
            )
        return data

    def put_blob(self, data: bytes) -> str:
        """Upload a blob; returns its hex SHA-256 (its name on chain)."""
        h = hashlib.sha256(data).hexdigest()
        r = self._request("PUT", f"/blobs/{h}", content=data)
        if r.status_code not in (200, 201):
            detail = _detail(r)
            raise ClientError(f"upload of blob {h[:16]}…: {detail}", status=r.status_code)
        return h

    def model(self, hash_hex: str) -> dict[str, F32Array]:
        """The model blob ``hash_hex`` as named float32 tensors (hash verified)."""
        cached = self._model_cache
        if cached is not None and cached[0] == hash_hex:
            return {k: v.copy() for k, v in cached[1].items()}
        try:
            params = from_bytes(self.get_blob(hash_hex))
        except ParamError as exc:
            raise ClientError(f"model blob {hash_hex} is not a model: {exc}") from None
        self._model_cache = (hash_hex, params)
        return {k: v.copy() for k, v in params.items()}

    def global_model(self, job_id: int) -> dict[str, F32Array]:
        """The job's current global model (the final one once the job is done)."""
        return self.model(str(self.job(job_id)["model_hash"]))

    # ------------------------------------------------------------ txs

    def _broadcast(self, msgs: Sequence[AnyMsg], *, mode: str, what: str) -> dict[str, Any]:
        with self._tx_lock:
            nonce = int(self.account()["pending_nonce"])
            raw = make_tx(self.key, self.chain_id, nonce, msgs, fee=self.fee)
            r = self._request(
                "POST",
                "/txs",
                json={"tx": base64.b64encode(raw).decode(), "mode": mode},
                timeout=COMMIT_READ_S if mode == "commit" else None,
                idempotent=False,
            )
        try:
            out: dict[str, Any] = r.json()
        except ValueError:
            out = {}
        if r.status_code != 200 or not out.get("accepted"):
            reason = str(out.get("log") or out.get("detail") or _detail(r))
            raise ClientError(
                f"{what} rejected by {self.node}: {reason}", status=r.status_code, log=reason
            )
        return out

    def _commit(self, msgs: Sequence[AnyMsg], what: str) -> dict[str, Any]:
        """Broadcast, wait for the block, and fail unless the tx also succeeded in it (a
        tx that passes check_tx can still fail when the block runs it)."""
        out = self._broadcast(msgs, mode="commit", what=what)
        if not out.get("height"):
            raise ClientError(
                f"{what}: accepted but not committed in time ({out.get('log')}); "
                f"look for tx {out['hash']} later"
            )
        tx = self._get_json(f"/txs/{out['hash']}", f"{what} tx {out['hash']}")
        res = tx.get("result") or {}
        if int(res.get("code", 0)) != 0:
            reason = str(res.get("log"))
            raise ClientError(f"{what} failed in block {tx.get('height')}: {reason}", log=reason)
        result: dict[str, Any] = tx
        return result

    def create_job(
        self,
        *,
        name: str,
        model: str,
        input_shape: Sequence[int],
        num_classes: int,
        initial_params: Mapping[str, npt.NDArray[Any]],
        rule: str = "multi_krum",
        rule_params: Mapping[str, object] | None = None,
        byzantine: int = 0,
        rounds: int = 5,
        min_clients: int,
        max_clients: int | None = None,
        round_blocks: int = 20,
        reward: int,
        min_reputation_ppm: int = 0,
        allow_list: Sequence[str | bytes] = (),
        purpose: str = "train",
        train: Mapping[str, object] | None = None,
        privacy: str = "plain",
        assets: Sequence[str | bytes] = (),
        licences: Sequence[int] = (),
        secagg: SecAggParams | None = None,
        ckks: CkksParams | None = None,
        dp: DpConfig | None = None,
    ) -> int:
        """Upload the initial weights, send ``CreateJob`` (escrowing ``reward`` ucif) and
        return the new job's id once its block is final. ``max_clients`` defaults to
        ``min_clients``; ``train`` holds hints for clients (epochs, lr, batch). ``assets``
        are registered assets the job trains on, each owned by you, consented to you, or
        covered by one of your ``licences`` (whose use is recorded, royalty paid).

        ``privacy`` is ``plain``, ``secagg`` (give ``secagg`` parameters) or ``ckks``;
        ``dp`` adds client-level DP with distributed noise (see cifer.app.contracts.fl_privacy).
        """
        try:
            blob = to_bytes(initial_params)
            n_params = ParamSpec.of(from_bytes(blob)).size
        except ParamError as exc:
            raise ClientError(f"initial_params: {exc}") from None
        initial = self.put_blob(blob)
        msg = create_job_msg(
            name=name,
            model=model,
            input_shape=[int(s) for s in input_shape],
            num_classes=int(num_classes),
            initial_model=bytes.fromhex(initial),
            rule=rule,
            rule_params={str(k): str(v) for k, v in (rule_params or {}).items()},
            byzantine=int(byzantine),
            privacy=privacy,
            rounds=int(rounds),
            min_clients=int(min_clients),
            max_clients=int(min_clients if max_clients is None else max_clients),
            round_blocks=int(round_blocks),
            reward=int(reward),
            min_reputation_ppm=int(min_reputation_ppm),
            allow_list=[_addr(a) for a in allow_list],
            purpose=purpose,
            train={str(k): str(v) for k, v in (train or {}).items()},
            assets=[parse_asset_id(a) for a in assets],
            licences=[int(x) for x in licences],
            model_params=n_params if privacy != "plain" else 0,
            secagg=secagg,
            ckks=ckks,
            dp=dp,
        )
        tx = self._commit([msg], "CreateJob")
        job_id = _event_attr(tx, "fl_job_created", "job_id")
        if job_id is not None:
            return int(job_id)
        # GET /txs does not show events: find the job this tx made by what it recorded.
        height = int(tx["height"])
        mine = [
            int(j["id"])
            for j in self.jobs()
            if j["creator"] == self.address
            and int(j["created"]) == height
            and j["initial_model"] == initial
            and j["name"] == name
        ]
        if not mine:
            raise ClientError(f"CreateJob committed at height {height} but no job shows it")
        return max(mine)

    def join(self, job_id: int, dataset_hash: bytes = b"", enc_key: bytes = b"") -> str:
        """Join a job (allow-list and reputation permitting); returns the tx hash once
        final. ``dataset_hash`` optionally commits to the data you train on; ``enc_key``
        (ckks jobs, set by :meth:`run`) is the X25519 key the job's secret key is sealed to."""
        tx = self._commit([join_job_msg(job_id, dataset_hash, enc_key)], f"JoinJob {job_id}")
        return str(tx["hash"])

    def submit(
        self, job_id: int, round: int, delta: Mapping[str, npt.NDArray[Any]], samples: int
    ) -> str:
        """Upload a model delta and send ``SubmitUpdate`` (checked by the node, not waited
        for); returns the tx hash. Raises ClientError with the node's reason if refused."""
        try:
            blob = to_bytes(delta)
        except ParamError as exc:
            raise ClientError(f"delta: {exc}") from None
        return self.submit_blob(job_id, round, blob, samples)

    def submit_blob(self, job_id: int, round_: int, blob: bytes, samples: int) -> str:
        """Like :meth:`submit` for a delta already serialised (safetensors bytes), or a
        masked / encrypted update in a private job. A plaintext update for a private job is
        refused here, before it leaves the process."""
        privacy = self._privacy.get(job_id)
        if privacy is None:
            privacy = self._privacy[job_id] = str(self.job(job_id).get("privacy", "plain"))
        if privacy != "plain" and is_plaintext_update(blob):
            raise ClientError(
                f"job {job_id} is {privacy}: refusing to send a plaintext update (run the "
                "job with Client.run, which masks or encrypts it)"
            )
        h = self.put_blob(blob)
        if self.replicate_wait_s > 0:
            time.sleep(self.replicate_wait_s)
        msg = submit_update_msg(job_id, round_, bytes.fromhex(h), samples)
        out = self._broadcast([msg], mode="sync", what=f"update for job {job_id} round {round_}")
        return str(out["hash"])

    # ------------------------------------------------------------ the client loop

    def run(
        self,
        job_id: int,
        trainer: Trainer,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        epochs: int | None = None,
        lr: float | None = None,
        batch: int | None = None,
        progress: bool = True,
        on_round: Callable[[RoundReport], None] | None = None,
        transform_update: DeltaTransform | None = None,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
        poll_s: float = POLL_S,
        seed: int | None = None,
        dataset_hash: bytes = b"",
        require_privacy: str | None = None,
    ) -> RunResult:
        """Take part in job ``job_id`` with local data (x, y) until it is done.

        The job's privacy mode is followed (secagg: masked; ckks: encrypted; dp: clipped
        and noised first). ``require_privacy`` (e.g. ``"secagg"``, ``"ckks+dp"``) refuses a
        job whose mode is weaker, before joining.

        Joins if not yet a member, then each round: download the global model, train
        ``trainer`` from it, and submit ``trained - global``. ``transform_update(delta,
        round)`` may rewrite the flat delta first (to simulate a Byzantine client).
        ``on_round`` is called with each round's :class:`RoundReport` once it closes.
        Returns when the job is done, ``stop`` is set, or raises ClientError after
        ``timeout_s`` (None: no limit) or when the node refuses us for a reason other
        than a closed round.
        """
        runner = _Runner(
            self,
            job_id,
            trainer,
            x,
            y,
            epochs=epochs,
            lr=lr,
            batch=batch,
            on_round=on_round,
            transform=transform_update,
            seed=int.from_bytes(self.key.address[:4], "big") if seed is None else seed,
        )
        return runner.run(
            progress=progress,
            stop=stop,
            timeout_s=timeout_s,
            poll_s=poll_s,
            dataset_hash=dataset_hash,
            require_privacy=require_privacy,
        )


def _event_attr(tx: Mapping[str, Any], event: str, attr: str) -> str | None:
    """An attribute of an event in a ``GET /txs`` result, if the node lists events."""
    res = tx.get("result") or {}
    for ev in res.get("events") or []:
        if isinstance(ev, dict) and ev.get("type") == event:
            for a in ev.get("attrs") or []:
                if isinstance(a, dict) and a.get("key") == attr:
                    return str(a.get("value"))
    return None


class _Runner:
    """State of one :meth:`Client.run` (kept out of Client so a Client can run jobs in
    several threads)."""

    def __init__(
        self,
        client: Client,
        job_id: int,
        trainer: Trainer,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        epochs: int | None,
        lr: float | None,
        batch: int | None,
        on_round: Callable[[RoundReport], None] | None,
        transform: DeltaTransform | None,
        seed: int,
    ) -> None:
        self.c = client
        self.job_id = job_id
        self.trainer = trainer
        self.x, self.y = x, y
        self.overrides: tuple[int | None, float | None, int | None] = (epochs, lr, batch)
        self.on_round = on_round
        self.transform = transform
        self.seed = seed
        self.me = client.address
        self.attempts: dict[int, _Attempt] = {}
        self.reports: list[RoundReport] = []
        self.hints = TrainHints()
        self.private: PrivateParticipant | None = None
        self.private_status = ""

    def run(
        self,
        *,
        progress: bool,
        stop: threading.Event | None,
        timeout_s: float | None,
        poll_s: float,
        dataset_hash: bytes,
        require_privacy: str | None,
    ) -> RunResult:
        t0 = time.monotonic()
        c, jid = self.c, self.job_id
        job = c.job(jid)
        if job["status"] == "done":
            raise ClientError(f"job {jid} has already finished")
        try:
            check_requirement(job, require_privacy)
        except (PrivacyRequirement, ValueError) as exc:
            raise ClientError(str(exc)) from None
        if job.get("privacy", "plain") != "plain":
            self.private = PrivateParticipant(c, job)
        epochs, lr, batch = self.overrides
        self.hints = TrainHints.from_job(job.get("train") or {}, epochs=epochs, lr=lr, batch=batch)
        if self.me not in job["member_list"]:
            enc = self.private.enc_key() if self.private and job.get("privacy") == "ckks" else b""
            c.join(jid, dataset_hash, enc)
            job = c.job(jid)
        first = int(job["round"])
        next_report = first
        stopped = False
        with _bar(progress, jid, int(job["rounds"]) - first) as bar:
            while True:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    raise ClientError(
                        f"job {jid} did not finish within {timeout_s:g} s (status "
                        f"{job['status']}, round {job['round']} of {job['rounds']})"
                    )
                job = c.job(jid)
                next_report = self._report_closed(job, next_report, bar)
                if job["status"] == "done":
                    bar(self._describe(job))
                    break
                if self.private is not None:
                    self._private_step(job)
                elif job["status"] == "running":
                    self._maybe_submit(job)
                bar(self._describe(job))
                if stop is not None:
                    stop.wait(poll_s)
                else:
                    time.sleep(poll_s)
        final_model, final_params = str(job["model_hash"]), None
        if self.private is not None and job.get("privacy") == "ckks" and job["status"] == "done":
            final_params = self.private.plain_model(job, int(job["rounds"]))
            final_model = hashlib.sha256(to_bytes(final_params)).hexdigest()
        return RunResult(
            job_id=jid,
            address=self.me,
            status=str(job["status"]),
            final_model=final_model,
            final_params=final_params,
            rounds=self.reports,
            wall_s=time.monotonic() - t0,
            stopped=stopped,
        )

    def _private_step(self, job: Mapping[str, Any]) -> None:
        assert self.private is not None
        if job["status"] not in ("keys", "running"):
            return

        def train(global_params: dict[str, F32Array]) -> tuple[F32Array, int]:
            att = self._train(job, global_params)
            self.attempts[att.round] = att
            assert att.delta is not None
            return att.delta, att.samples

        try:
            self.private_status = self.private.step(job, train)
        except (CkksError, PrivacyRequirement) as exc:
            raise ClientError(f"job {self.job_id}: {exc}") from exc

    def _describe(self, job: Mapping[str, Any]) -> str:
        st, r, total = job["status"], int(job["round"]), int(job["rounds"])
        head = f"job {self.job_id}"
        if st == "open":
            return f"{head} · waiting for clients ({job['members']}/{job['min_clients']})"
        if st == "keys":
            return f"{head} · ckks key setup · {self.private_status or 'waiting'}"
        if self.private is not None and st == "running":
            what = job.get("phase") or job["privacy"]
            return f"{head} · round {r + 1}/{total} · {what} · {self.private_status}"
        if st == "closing":
            return f"{head} · round {r + 1}/{total} · aggregating"
        if st != "running":
            return f"{head} · {st}"
        att = self.attempts.get(r)
        if self.me in job["submitted"]:
            left = int(job["members"]) - len(job["submitted"])
            return f"{head} · round {r + 1}/{total} · submitted, waiting for {left} more"
        if att is not None and att.gave_up:
            return f"{head} · round {r + 1}/{total} · missed, waiting for the next round"
        return f"{head} · round {r + 1}/{total} · training"

    def _report_closed(self, job: Mapping[str, Any], next_report: int, bar: _BarFn) -> int:
        closed = int(job["rounds"]) if job["status"] == "done" else int(job["round"])
        while next_report < closed:
            r = next_report
            try:
                rec: dict[str, Any] | None = self.c.round(self.job_id, r)
            except ClientError as exc:
                if exc.status != 404:
                    raise
                rec = None
            att = self.attempts.pop(r, None)
            clients = list(rec["clients"]) if rec else []
            rep = RoundReport(
                round=r,
                submitted=self.me in clients,
                accepted=None,
                agreement_ppm=None,
                paid=0,
                model=str(rec["model"]) if rec else "",
            )
            if rec is not None and rep.submitted:
                i = clients.index(self.me)
                rep.accepted = bool(rec["accepted"][i])
                rep.agreement_ppm = int(rec["agreement_ppm"][i])
                rep.paid = int(rec["paid"][i])
            if att is not None:
                rep.samples, rep.loss = att.samples, att.loss
                rep.download_s, rep.train_s, rep.submit_s = (
                    att.download_s,
                    att.train_s,
                    att.submit_s,
                )
            self.reports.append(rep)
            if not rep.submitted:
                log.info("job %d round %d closed without our update", self.job_id, r)
            if self.on_round is not None:
                self.on_round(rep)
            bar(None, advance=1)
            next_report += 1
        return next_report

    def _maybe_submit(self, job: Mapping[str, Any]) -> None:
        r = int(job["round"])
        if self.me in job["submitted"]:
            return
        att = self.attempts.get(r)
        if att is not None and att.gave_up:
            return
        height = int(job["height"])
        if att is not None and att.sent_height is not None:
            if height < att.sent_height + RESUBMIT_BLOCKS:
                return  # sent; give it time to land in a block
            log.info("job %d round %d: update not on chain yet, sending again", self.job_id, r)
        deadline = job.get("deadline")
        if deadline is not None and height >= int(deadline):
            return  # the next block is past the round's deadline
        if att is None:
            att = self._train(job)
            self.attempts[r] = att
        t0 = time.perf_counter()
        try:
            self.c.submit_blob(self.job_id, r, att.blob, att.samples)
        except NodeUnreachable:
            raise
        except ClientError as exc:
            att.submit_s += time.perf_counter() - t0
            self._refused(job, att, exc)
            return
        att.submit_s += time.perf_counter() - t0
        att.sent_height = height

    def _refused(self, job: Mapping[str, Any], att: _Attempt, exc: ClientError) -> None:
        """Straggled (the round closed first) -> wait for the next round; our update is
        already in (a resend) -> fine; a dropped connection -> try again next poll;
        anything else is a real refusal and ends the run."""
        r = att.round
        if "already submitted" in exc.log:
            att.sent_height = int(job["height"])
            return
        fresh = self.c.job(self.job_id)
        if self.me in fresh["submitted"] and int(fresh["round"]) == r:
            att.sent_height = int(fresh["height"])
            return
        moved_on = fresh["status"] != "running" or int(fresh["round"]) != r
        if moved_on or _closed_text(exc.log):
            att.gave_up = True
            log.warning("job %d round %d closed before our update: %s", self.job_id, r, exc.log)
            return
        if exc.status is None:
            return  # the tx may or may not have arrived; the next poll will tell
        raise ClientError(
            f"job {self.job_id} round {r}: the node refused our update: {exc.log}",
            status=exc.status,
            log=exc.log,
        ) from exc

    def _train(
        self, job: Mapping[str, Any], global_params: dict[str, F32Array] | None = None
    ) -> _Attempt:
        r = int(job["round"])
        t0 = time.perf_counter()
        model_hash = str(job["model_hash"])
        if global_params is None:
            global_params = self.c.model(model_hash)
        t1 = time.perf_counter()
        spec = ParamSpec.of(global_params)
        mine = param_spec(self.trainer)
        if mine != spec:
            raise ClientError(
                f"the trainer's parameters ({_describe_spec(mine)}) do not match job "
                f"{self.job_id}'s model ({_describe_spec(spec)}); build the trainer from "
                f"the job's model recipe {job['model']!r}"
            )
        w = spec.flatten(global_params)
        h = self.hints
        rng = np.random.default_rng([self.seed, self.job_id, r])
        try:
            delta, loss = local_update(
                self.trainer,
                spec,
                w,
                self.x,
                self.y,
                epochs=h.epochs,
                batch_size=h.batch,
                lr=h.lr,
                rng=rng,
                steps=h.steps,
            )
        except TrainerError as exc:
            raise ClientError(f"local training failed: {exc}") from exc
        if self.transform is not None:
            delta = np.ascontiguousarray(self.transform(delta, r), dtype=np.float32)
            if delta.shape != (spec.size,):
                raise ClientError(
                    f"transform_update returned shape {delta.shape}, expected ({spec.size},)"
                )
        if not np.isfinite(delta).all():
            raise ClientError(
                f"round {r}: the update is not finite (local training diverged; "
                f"try a smaller lr than {h.lr})"
            )
        if self.private is None and job.get("dp"):
            # plain + dp: clip and add this client's share of the noise before upload
            # (private modes do it in PrivateParticipant, before masking or encrypting)
            from cifer.compute.privacy.dp import privatize_update, secure_rng

            dp = DpConfig(**job["dp"])
            delta = privatize_update(delta, dp, secure_rng())
        blob = to_bytes(spec.unflatten(delta))
        t2 = time.perf_counter()
        return _Attempt(
            round=r,
            model=model_hash,
            delta=delta,
            blob=blob,
            hash=hashlib.sha256(blob).hexdigest(),
            samples=len(self.y),
            loss=loss,
            download_s=t1 - t0,
            train_s=t2 - t1,
        )


def _describe_spec(spec: ParamSpec) -> str:
    items = [f"{t.name}{list(t.shape)}" for t in spec.tensors]
    return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")


class _BarFn:
    """Progress callback: ``bar(description)`` and ``bar(None, advance=1)``."""

    def __init__(self, update: Callable[..., None] | None = None) -> None:
        self._update = update

    def __call__(self, description: str | None, *, advance: int = 0) -> None:
        if self._update is None:
            return
        kwargs: dict[str, Any] = {"advance": advance}
        if description is not None:
            kwargs["description"] = description
        self._update(**kwargs)


@contextlib.contextmanager
def _bar(enabled: bool, job_id: int, total: int) -> Iterator[_BarFn]:
    if not enabled:
        yield _BarFn()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as p:
        task = p.add_task(f"job {job_id}", total=max(total, 0))
        yield _BarFn(lambda **kw: p.update(task, **kw))

"""Local networks of real node processes on loopback (for people, tests and benchmarks).

``init_localnet`` writes one genesis and N node homes with free loopback ports and the
full peer mesh; ``Localnet`` starts, signals, restarts and stops the processes. Logs go to
``DIR/nodeI/node.log``. Test accounts ``account_key(i)`` are funded for convenience; their
keys are derivable by anyone, so a localnet is never a place for value.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from cifer.app.genesis_builder import account_key, make_genesis
from cifer.app.node.config import NodeConfig, init_home
from cifer.base.chain.genesis import ConsensusParams
from cifer.base.crypto.keys import PrivateKey

SPEC_FILE = "localnet.json"

#: Timeouts for a loopback network: short, since messages take well under a millisecond.
LOCALNET_CONSENSUS = ConsensusParams(
    timeout_propose_ms=1000,
    timeout_propose_delta_ms=500,
    timeout_prevote_ms=500,
    timeout_prevote_delta_ms=250,
    timeout_precommit_ms=500,
    timeout_precommit_delta_ms=250,
    timeout_commit_ms=250,
)


class NodeSpec(msgspec.Struct):
    index: int
    moniker: str
    home: str
    p2p_port: int
    api_port: int
    node_id: str
    validator: str

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


class LocalnetSpec(msgspec.Struct):
    chain_id: str
    nodes: list[NodeSpec]
    funded_accounts: int


def free_ports(n: int) -> list[int]:
    """Ports the OS says are free now (bound together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def init_localnet(
    directory: Path,
    validators: int = 4,
    *,
    chain_id: str = "cifer-localnet",
    accounts: int = 100,
    fault_injection: bool = False,
    consensus: ConsensusParams = LOCALNET_CONSENSUS,
    base_port: int = 0,
) -> LocalnetSpec:
    """``base_port`` 0 picks free ports; otherwise node i gets p2p base+10i, API base+10i+1."""
    if validators < 1:
        raise ValueError("a localnet needs at least one validator")
    if (directory / SPEC_FILE).exists():
        raise ValueError(f"{directory} already holds a localnet; stop it and remove it first")
    directory.mkdir(parents=True, exist_ok=True)
    vkeys = [PrivateKey.generate() for _ in range(validators)]
    nkeys = [PrivateKey.generate() for _ in range(validators)]
    genesis = make_genesis(
        chain_id,
        validator_pubkeys=[k.public.raw for k in vkeys],
        funded_accounts=[account_key(i).address for i in range(accounts)],
        consensus=consensus,
    )
    if base_port:
        p2p_ports = [base_port + 10 * i for i in range(validators)]
        api_ports = [p + 1 for p in p2p_ports]
    else:
        ports = free_ports(2 * validators)
        p2p_ports, api_ports = ports[:validators], ports[validators:]
    nodes = []
    for i in range(validators):
        peers = [
            f"{nkeys[j].public.raw.hex()}@127.0.0.1:{p2p_ports[j]}"
            for j in range(validators)
            if j != i
        ]
        cfg = NodeConfig(
            moniker=f"node{i}",
            p2p_port=p2p_ports[i],
            api_port=api_ports[i],
            persistent_peers=peers,
            fault_injection=fault_injection,
            blob_peers=[f"http://127.0.0.1:{api_ports[j]}" for j in range(validators) if j != i],
        )
        home = directory / f"node{i}"
        init_home(home, genesis.to_json(), cfg, nkeys[i], vkeys[i])
        nodes.append(
            NodeSpec(
                i,
                cfg.moniker,
                str(home),
                p2p_ports[i],
                api_ports[i],
                nkeys[i].public.raw.hex(),
                vkeys[i].public.bech32,
            )
        )
    spec = LocalnetSpec(chain_id, nodes, accounts)
    (directory / SPEC_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(spec), indent=2))
    return spec


def load_spec(directory: Path) -> LocalnetSpec:
    try:
        return msgspec.json.decode((directory / SPEC_FILE).read_bytes(), type=LocalnetSpec)
    except FileNotFoundError:
        raise ValueError(f"no localnet in {directory} (run `cifer localnet init`)") from None


@dataclass
class Localnet:
    """Processes of a localnet. Use as a context manager so they are always stopped."""

    directory: Path
    spec: LocalnetSpec
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, directory: Path) -> Localnet:
        return cls(directory, load_spec(directory))

    @property
    def pid_file(self) -> Path:
        return self.directory / "pids.json"

    def _pids(self) -> dict[int, int]:
        try:
            return {int(k): int(v) for k, v in json.loads(self.pid_file.read_text()).items()}
        except FileNotFoundError:
            return {}

    def _save_pids(self, pids: dict[int, int]) -> None:
        self.pid_file.write_text(json.dumps({str(k): v for k, v in pids.items()}))

    def start_node(self, i: int) -> int:
        node = self.spec.nodes[i]
        log = open(Path(node.home) / "node.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "cifer", "node", "start", "--home", node.home],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        pids = self._pids()
        pids[i] = proc.pid
        self._save_pids(pids)
        self._children[i] = proc
        return proc.pid

    def start(self, wait_s: float = 60.0) -> None:
        for i in range(len(self.spec.nodes)):
            if not self.alive(i):
                self.start_node(i)
        self.wait_ready(wait_s)

    def wait_ready(self, wait_s: float = 60.0, nodes: list[int] | None = None) -> None:
        deadline = time.monotonic() + wait_s
        for i in nodes if nodes is not None else range(len(self.spec.nodes)):
            while True:
                if not self.alive(i):
                    raise RuntimeError(
                        f"node{i} exited; see {Path(self.spec.nodes[i].home) / 'node.log'}"
                    )
                try:
                    httpx.get(self.spec.nodes[i].api + "/status", timeout=1.0).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"node{i} API did not come up in {wait_s} s") from None
                    time.sleep(0.1)

    def alive(self, i: int) -> bool:
        pid = self._pids().get(i)
        if pid is None:
            return False
        child = self._children.get(i)
        if child is not None and child.pid == pid:
            return child.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, i: int, sig: signal.Signals) -> None:
        pid = self._pids().get(i)
        if pid is not None:
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                self._reap(i, 10.0)

    def stop_node(self, i: int, timeout_s: float = 10.0) -> None:
        pid = self._pids().get(i)
        if pid is None or not self.alive(i):
            return
        os.kill(pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
        os.kill(pid, signal.SIGTERM)
        if not self._reap(i, timeout_s):
            os.kill(pid, signal.SIGKILL)
            self._reap(i, timeout_s)

    def _reap(self, i: int, timeout_s: float) -> bool:
        child = self._children.get(i)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child is not None:
                try:
                    child.wait(timeout=0.1)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self.alive(i):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        for i in list(self._pids()):
            self.stop_node(i)
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> Localnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self, i: int, timeout: float = 2.0) -> dict[str, object]:
        r = httpx.get(self.spec.nodes[i].api + "/status", timeout=timeout)
        r.raise_for_status()
        out: dict[str, object] = r.json()
        return out

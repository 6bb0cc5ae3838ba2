"""The client path end to end on a one-validator localnet: CLI transfer, proof, block stream."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import websockets
from typer.testing import CliRunner

from cifer.app.cli.main import app
from cifer.app.genesis_builder import account_key
from cifer.app.node.localnet import Localnet, init_localnet

runner = CliRunner()


def test_transfer_query_proof_and_block_stream(tmp_path: Path) -> None:
    init_localnet(tmp_path / "net", 1, accounts=2)
    with Localnet.open(tmp_path / "net") as net:
        net.start(60)
        api = net.spec.nodes[0].api
        to = account_key(1).public.bech32
        before = httpx.get(f"{api}/accounts/{to}").json()["balance"]

        async def next_block_with_tx() -> dict[str, object]:
            async with websockets.connect(api.replace("http", "ws") + "/ws/blocks") as ws:
                while True:
                    ev = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if ev["txs"]:
                        return ev  # type: ignore[no-any-return]

        async def run() -> tuple[dict[str, object], str]:
            listener = asyncio.create_task(next_block_with_tx())
            await asyncio.sleep(0.3)
            res = await asyncio.to_thread(
                runner.invoke,
                app,
                [
                    "tx",
                    "transfer",
                    "--from",
                    "test:0",
                    "--to",
                    to,
                    "--amount",
                    "1.5cif",
                    "--node",
                    api,
                ],
            )
            return await listener, res.output

        ev, out = asyncio.run(run())
        assert "committed at height" in out, out
        tx_hash = re.search(r"tx ([0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
        assert ev["txs"] == [tx_hash]
        after = httpx.get(f"{api}/accounts/{to}").json()["balance"]
        assert after - before == 1_500_000
        q = runner.invoke(app, ["query", "tx", tx_hash, "--node", api])
        assert q.exit_code == 0 and "verified" in q.output, q.output
        # the same tx again is refused (replay protection), with a reason
        again = httpx.post(
            f"{api}/txs", json={"tx": httpx.get(f"{api}/txs/{tx_hash}").json()["tx"]}
        )
        assert again.status_code == 422 and again.json()["accepted"] is False
        bad = runner.invoke(
            app,
            [
                "tx",
                "transfer",
                "--from",
                "test:0",
                "--to",
                "cif1bad",
                "--amount",
                "1cif",
                "--node",
                api,
            ],
        )
        assert bad.exit_code != 0
        spec = httpx.get(f"{api}/openapi.json").json()
        assert {"/status", "/txs", "/txs/{tx_hash}", "/blocks/{height}"} <= set(spec["paths"])

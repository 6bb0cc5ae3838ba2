"""``cifer init`` and ``cifer node start``: one node's home and process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer

from cifer.app.node.config import ConfigError, NodeConfig, init_home
from cifer.base.crypto.keys import PrivateKey

app = typer.Typer(help="Run a node.")


def init_command(
    home: Path = typer.Option(..., "--home", help="Directory for the node's config and data."),
    moniker: str = typer.Option("node0", help="A human-readable name for this node."),
    chain_id: str = typer.Option("cifer-local", help="Chain id of a new single-validator chain."),
) -> None:
    """Create a node home with a fresh single-validator genesis (see `localnet init` for N)."""
    from cifer.app.genesis_builder import make_genesis

    vkey = PrivateKey.generate()
    genesis = make_genesis(chain_id, validator_pubkeys=[vkey.public.raw])
    try:
        h = init_home(
            home, genesis.to_json(), NodeConfig(moniker=moniker), PrivateKey.generate(), vkey
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"initialised {h.root}\n  config:  {h.config_file}\n  genesis: {h.genesis_file}")


@app.command()
def start(
    home: Path = typer.Option(..., "--home", help="The node's home directory."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Start the node and run until SIGTERM or Ctrl-C (then stop cleanly)."""
    from cifer.app.node.runtime import Node

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        node = Node(home)
    except (ConfigError, ValueError, OSError) as exc:
        typer.echo(f"error: cannot start node at {home}: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop)

    profile = os.environ.get("CIFER_PROFILE")  # developer aid: cProfile stats at exit
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            asyncio.run(main())
        prof.dump_stats(f"{profile}.{os.getpid()}")
    else:
        asyncio.run(main())

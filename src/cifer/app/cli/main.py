"""The ``cifer`` command. Each group lives in its own module and is mounted here."""

from __future__ import annotations

from importlib import import_module

import typer

from cifer import __version__

app = typer.Typer(
    name="cifer",
    help="Cifer: Byzantine-robust federated learning on a BFT ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

GROUPS = (
    ("cifer.app.cli.keys", "keys"),
    ("cifer.app.cli.localnet", "localnet"),
    ("cifer.app.cli.node", "node"),
    ("cifer.app.cli.fl", "fl"),
    ("cifer.app.cli.bench", "bench"),
    ("cifer.app.cli.fl_client", "client"),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cifer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """Cifer command line."""


def _mount() -> None:
    for mod_name, group in GROUPS:
        try:
            mod = import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # a group not written yet; anything else is a real error
                continue
            raise
        app.add_typer(mod.app, name=group)
    from cifer.app.cli.client import query_app, tx_app
    from cifer.app.cli.demo import demo_command
    from cifer.app.cli.node import init_command

    app.command("init")(init_command)
    app.command("demo")(demo_command)
    app.add_typer(tx_app, name="tx")
    app.add_typer(query_app, name="query")
    from cifer.app.cli.assets import asset_app, consent_app, license_app, market_app

    app.add_typer(asset_app, name="asset")
    app.add_typer(consent_app, name="consent")
    app.add_typer(license_app, name="license")
    app.add_typer(market_app, name="market")


_mount()

"""The ``cifer`` command. Each group lives in its own module and is mounted here."""

from __future__ import annotations

import typer

from cifer import __version__

app = typer.Typer(
    name="cifer",
    help="Cifer: Byzantine-robust federated learning on a BFT ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
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
    # Imported here so that a broken optional group never breaks `cifer --help`.
    from importlib import import_module

    for mod_name, group in (
        ("cifer.app.cli.keys", "keys"),
        ("cifer.app.cli.localnet", "localnet"),
        ("cifer.app.cli.bench", "bench"),
    ):
        try:
            mod = import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue
            raise
        app.add_typer(mod.app, name=group)


_mount()

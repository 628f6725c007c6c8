"""The ``tether`` command: one Typer application with a sub-command per area."""

from __future__ import annotations

import typer

from tether import __version__
from tether.cli import cloud, demo, gateway, net, ops, points, users

app = typer.Typer(
    name="tether",
    help="Link building/IoT edge gateways to their cloud through one outbound TLS port.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(cloud.app, name="cloud")
app.add_typer(gateway.app, name="gateway")
app.add_typer(ops.gateways_app, name="gateways")
app.add_typer(ops.command_app, name="command")
app.add_typer(ops.token_app, name="token")
app.add_typer(points.points_app, name="points")
app.add_typer(points.config_app, name="config")
app.command("logs")(points.logs)
app.add_typer(net.app, name="net")
app.add_typer(users.user_app, name="user")
app.command("audit")(users.audit)
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tether {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """tether: cloud, gateway agent and network tooling."""


def main() -> None:
    app()

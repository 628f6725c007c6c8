"""The ``tether`` command: one Typer application with a sub-command per area.

``tether gateway run`` and ``tether gateway enroll`` are what runs on a gateway, the first for
months: they load the agent's side only, not the operator client's HTTP stack, the cloud or
the network tooling, so the agent's memory goes to its work (``bench/agent_footprint``); and
``run``, once its options are parsed, hands its process over to :mod:`tether.gateway.service`,
which keeps none of the command line's own libraries. Every other command, and ``tether
--help``, builds the whole application (:data:`app`), which says its errors, click's usage errors
too, as one JSON object on stderr when ``--json`` is on the command line.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from tether import __version__

if TYPE_CHECKING:
    import typer

__all__ = ["app", "build_app", "main"]

#: ``tether gateway <these>`` run on the agent's side alone.
AGENT_COMMANDS = frozenset({"enroll", "run", "status"})


def _version(value: bool) -> None:
    import typer

    if value:
        typer.echo(f"tether {__version__}")
        raise typer.Exit()


@functools.cache
def build_app() -> typer.Typer:
    """The whole ``tether`` application (built once)."""
    import typer

    from tether.cli import cloud, demo, gateway, net, ops, points, support, users
    from tether.cli.usage import TetherGroup

    app = typer.Typer(
        cls=TetherGroup,  # with --json, click's usage errors are JSON too
        name="tether",
        help="Link building/IoT edge gateways to their cloud through one outbound TLS port.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
    )
    gateway.app.command("revoke")(ops.revoke)
    # `tether --help` shows the commands in panels, by who uses them.
    run, fleet, site, accounts = (
        "Run tether",
        "Operate the fleet (TETHER_URL, TETHER_TOKEN)",
        "Site network",
        "Accounts and audit (admin)",
    )
    app.command("demo", rich_help_panel=run)(demo.demo)
    app.add_typer(cloud.app, name="cloud", rich_help_panel=run)
    app.add_typer(gateway.app, name="gateway", rich_help_panel=run)
    app.add_typer(ops.gateways_app, name="gateways", rich_help_panel=fleet)
    app.add_typer(ops.command_app, name="command", rich_help_panel=fleet)
    app.add_typer(ops.token_app, name="token", rich_help_panel=fleet)
    app.add_typer(points.points_app, name="points", rich_help_panel=fleet)
    app.add_typer(points.config_app, name="config", rich_help_panel=fleet)
    app.command("logs", rich_help_panel=fleet)(points.logs)
    app.add_typer(support.support_app, name="support", rich_help_panel=fleet)
    app.add_typer(net.app, name="net", rich_help_panel=site)
    app.add_typer(users.user_app, name="user", rich_help_panel=accounts)
    app.add_typer(users.audit_app, name="audit", rich_help_panel=accounts)

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """tether: cloud, gateway agent and network tooling."""

    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from tether.cli import app``: the whole application
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "gateway" and args[1] in AGENT_COMMANDS:
        from tether.cli import gateway

        gateway.HAND_OVER = True  # `run` becomes the agent's own lean process
        gateway.app(args=args[1:], prog_name="tether gateway")
        return
    build_app()()

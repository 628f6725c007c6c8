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
    app.add_typer(users.audit_app, name="audit")
    app.add_typer(support.support_app, name="support")
    app.command("demo")(demo.demo)

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

"""Operator commands against the cloud's API: gateways, commands, enrollment tokens."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text

from tether.cli.answers import Command, EnrollmentToken, Gateway, GatewayDetail, NewEnrollmentToken
from tether.cli.client import api_command, api_path, client_from_env, decode
from tether.cli.output import age, console, count, fail, print_json, table, utc
from tether.protocol.commands import COMMAND_KINDS, FINAL_STATES

gateways_app = typer.Typer(help="Gateways in the fleet.", no_args_is_help=True)
command_app = typer.Typer(help="Send commands to gateways and follow them.", no_args_is_help=True)
token_app = typer.Typer(help="One-time enrollment tokens.", no_args_is_help=True)

_FINAL = {s.value for s in FINAL_STATES}

#: The cloud keeps commands and enrollment tokens at most this long (``ttl_seconds``).
MAX_TTL = 30 * 86400.0
#: ``tether command list --limit``: what the cloud answers at most.
MAX_COMMANDS = 1000


def within(option: str, value: float, most: float) -> float:
    """*value* if it is a finite number in (0, *most*]; else a usage error naming *option*."""
    if not math.isfinite(value) or not 0 < value <= most:
        raise fail(f"{option} takes a number above 0 and at most {most:g}, got {value}", 2)
    return value


@gateways_app.command("list")
@api_command
def gateways_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List gateways with their link state."""
    data = client_from_env().get(api_path("gateways"))
    if as_json:
        print_json(data)
        return
    gateways = decode(data, list[Gateway])
    table(
        count(len(gateways), "gateways"),
        ["id", "name", "link", "tier", "last seen", "agent", "cert expires (UTC)"],
        [
            [
                g.id,
                g.name,
                g.state,
                g.tier,
                age(g.last_seen),
                g.agent_version,
                utc(g.cert_not_after)[:10],
            ]
            for g in gateways
        ],
    )


@gateways_app.command("show")
@api_command
def gateways_show(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """One gateway in detail."""
    data = client_from_env().get(api_path("gateways", gateway))
    if as_json:
        print_json(data)
        return
    detail = decode(data, GatewayDetail)
    g = detail.gateway
    rows: list[list[Any]] = [
        ["name", g.name],
        ["state", g.state],
        ["tier", g.tier],
        ["tier reason", detail.tier_reason or "-"],
        ["on this tier since", age(detail.tier_since)],
        ["last seen", age(g.last_seen)],
        ["agent", g.agent_version],
        ["peer", g.peer],
        ["certificate expires (UTC)", utc(g.cert_not_after)],
        ["enrolled (UTC)", utc(g.created_at)],
    ]
    table(f"gateway {gateway}", ["field", "value"], rows)
    preflight = detail.preflight
    if preflight:
        problems = [r for r in preflight.report.results if r.status in ("warn", "fail")]
        table(
            f"preflight run by the gateway: {preflight.status.upper()}",
            ["status", "check", "target", "finding", "fix"],
            [[r.status.upper(), r.check, r.target, r.finding, r.fix or "-"] for r in problems[:20]],
        )
    if detail.tier_history:
        table(
            "tier history",
            ["at (UTC)", "tier", "reason"],
            [[utc(h.at), h.tier, h.reason or "-"] for h in detail.tier_history[-10:]],
        )


@api_command
def revoke(gateway: str) -> None:
    """Revoke a gateway: its link closes at once and its certificates are refused."""
    revoked = decode(client_from_env().post(api_path("gateways", gateway, "revoke")), Gateway)
    console.print(f"gateway [bold]{escape(revoked.id)}[/bold] revoked", highlight=False)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--arg takes key=value, got {pair!r}", 2)
        try:
            args[key] = json.loads(value)  # numbers, booleans, JSON; else the plain string
        except ValueError:
            args[key] = value
    return args


_SEND_HELP = (
    "Queue a command; with --wait, follow it to its outcome.\n\n"
    "Exit status with --wait: 0 it succeeded; 1 it failed, expired or was cancelled; 3 no "
    "outcome within --timeout."
)
_KIND_HELP = f"{', '.join(sorted(COMMAND_KINDS))}, or a kind the cloud's extra_command_kinds adds."


@command_app.command("send", help=_SEND_HELP)
@api_command
def command_send(
    gateway: str,
    kind: str = typer.Argument(..., help=_KIND_HELP),
    arg: list[str] = typer.Option([], "--arg", help="An argument as key=value (repeatable)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the outcome."),
    ttl: float | None = typer.Option(
        None,
        "--ttl",
        help="Seconds before it expires; default: the cloud's command_ttl (3600 as shipped).",
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="How long --wait waits."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    body: dict[str, Any] = {"kind": kind, "args": _parse_args(arg)}
    if ttl is not None:
        body["ttl_seconds"] = within("--ttl", ttl, MAX_TTL)
    within("--timeout", timeout, MAX_TTL)
    client = client_from_env()
    answer = client.post(api_path("gateways", gateway, "commands"), body)
    command = decode(answer, Command)
    if wait:
        deadline = time.monotonic() + timeout
        what = escape(f"{kind} on {gateway}")
        with console.status(f"{what}: {escape(command.state)}", spinner="dots") as status:
            while command.state not in _FINAL and time.monotonic() < deadline:
                time.sleep(0.2)
                answer = client.get(api_path("commands", command.id))
                command = decode(answer, Command)
                status.update(f"{what}: {escape(command.state)}")
    if as_json:
        print_json(answer)
    else:
        _show_command(command)
    if wait and command.state not in _FINAL:
        raise fail(f"no outcome within {timeout:.0f} s (state {command.state})", 3)
    if wait and command.state != "succeeded":
        raise typer.Exit(1)


def _show_command(c: Command) -> None:
    color = {"succeeded": "green", "failed": "red", "expired": "yellow"}.get(c.state, "cyan")
    line = Text.assemble("command ", (c.id, "bold"), f" {c.kind} → ", (c.state, color))
    console.print(line, highlight=False, soft_wrap=True)
    if c.error:
        console.print(Text(f"  error: {c.error}"), highlight=False, soft_wrap=True)
    if c.result is not None:
        console.print_json(json.dumps(c.result))


@command_app.command("cancel")
@api_command
def command_cancel(
    command_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Cancel a command its gateway has not started yet (queued, or delivered and waiting)."""
    data = client_from_env().post(api_path("commands", command_id, "cancel"))
    if as_json:
        print_json(data)
    else:
        _show_command(decode(data, Command))


@command_app.command("list")
@api_command
def command_list(
    gateway: str | None = typer.Option(None, "--gateway", help="Only this gateway's."),
    state: str | None = typer.Option(None, "--state", help="Only in this state."),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_COMMANDS, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recent commands, newest first."""
    data = client_from_env().get(api_path("commands"), gateway=gateway, state=state, limit=limit)
    if as_json:
        print_json(data)
        return
    commands = decode(data, list[Command])
    table(
        count(len(commands), "commands"),
        ["id", "gateway", "kind", "state", "created", "by", "error"],
        [
            [c.id, c.gateway_id, c.kind, c.state, age(c.created_at), c.created_by, c.error]
            for c in commands
        ],
    )


@command_app.command("show")
@api_command
def command_show(
    command_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """One command with its result."""
    data = client_from_env().get(api_path("commands", command_id))
    if as_json:
        print_json(data)
    else:
        _show_command(decode(data, Command))


@token_app.command("create")
@api_command
def token_create(
    name: str | None = typer.Option(None, "--name", help="Name the gateway will get."),
    ttl: float | None = typer.Option(
        None,
        "--ttl",
        help="Seconds the token stays valid; default: the cloud's enrollment_token_ttl "
        "(86400 as shipped).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a one-time enrollment token; prints the code for `tether gateway enroll`."""
    body: dict[str, Any] = {"name": name}
    if ttl is not None:
        body["ttl_seconds"] = within("--ttl", ttl, MAX_TTL)
    data = client_from_env().post(api_path("enrollment-tokens"), body)
    if as_json:
        print_json(data)
        return
    token = decode(data, NewEnrollmentToken)
    console.print(
        Text(f"enrollment token {token.token_id} (expires {utc(token.expires_at)} UTC):"),
        highlight=False,
    )
    console.print(token.enrollment_code, soft_wrap=True, highlight=False, markup=False)
    console.print("\non the gateway: [bold]tether gateway enroll -[/bold] (the code on stdin)")


@token_app.command("list")
@api_command
def token_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Enrollment tokens and whether they were used or revoked."""
    data = client_from_env().get(api_path("enrollment-tokens"))
    if as_json:
        print_json(data)
        return
    tokens = decode(data, list[EnrollmentToken])
    table(
        count(len(tokens), "tokens"),
        ["id", "name", "created", "expires (UTC)", "used", "revoked"],
        [
            [
                t.token_id,
                t.name,
                age(t.created_at),
                utc(t.expires_at),
                age(t.used_at),
                age(t.revoked_at),
            ]
            for t in tokens
        ],
    )


@token_app.command("revoke")
@api_command
def token_revoke(
    token_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Revoke an enrollment token nobody has used yet: its code no longer enrolls."""
    data = client_from_env().post(api_path("enrollment-tokens", token_id, "revoke"))
    if as_json:
        print_json(data)
        return
    token = decode(data, EnrollmentToken)
    console.print(Text(f"enrollment token {token.token_id} revoked"), highlight=False)

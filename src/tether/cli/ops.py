"""Operator commands against the cloud's API: gateways, commands, enrollment tokens."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from tether.cli.client import ApiError, client_from_env
from tether.cli.output import age, console, fail, print_json, table
from tether.protocol.commands import FINAL_STATES

gateways_app = typer.Typer(help="Gateways in the fleet.", no_args_is_help=True)
command_app = typer.Typer(help="Send commands to gateways and follow them.", no_args_is_help=True)
token_app = typer.Typer(help="One-time enrollment tokens.", no_args_is_help=True)

_FINAL = {s.value for s in FINAL_STATES}


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise fail(str(exc)) from None


@gateways_app.command("list")
def gateways_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List gateways with their link state."""
    data = _call(client_from_env().get, "/api/v1/gateways")
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} gateways",
        ["id", "name", "link", "tier", "last seen", "agent", "cert expires"],
        [
            [
                g["id"],
                g["name"],
                "revoked" if g["revoked"] else ("linked" if g["linked"] else "offline"),
                g["tier"],
                age(g["last_seen"]),
                g["agent_version"],
                (g["cert_not_after"] or "-")[:10],
            ]
            for g in data
        ],
    )


@gateways_app.command("show")
def gateways_show(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """One gateway in detail."""
    data = _call(client_from_env().get, f"/api/v1/gateways/{gateway}")
    if as_json:
        print_json(data)
        return
    g = data["gateway"]
    state = "revoked" if g["revoked"] else ("linked" if g["linked"] else "offline")
    rows = [
        ["name", g["name"]],
        ["state", state],
        ["tier", g["tier"]],
        ["tier reason", data["tier_reason"] or "-"],
        ["on this tier since", age(data["tier_since"])],
        ["last seen", age(g["last_seen"])],
        ["agent", g["agent_version"]],
        ["peer", g["peer"]],
        ["certificate expires", g["cert_not_after"]],
        ["enrolled", g["created_at"]],
    ]
    table(f"gateway {gateway}", ["field", "value"], rows)
    preflight = data.get("preflight")
    if preflight:
        report = preflight["report"]
        problems = [r for r in report.get("results", []) if r.get("status") in ("warn", "fail")]
        table(
            f"preflight run by the gateway: {preflight['status'].upper()}",
            ["status", "check", "target", "finding", "fix"],
            [
                [r["status"].upper(), r["check"], r["target"], r["finding"], r.get("fix") or "-"]
                for r in problems[:20]
            ],
        )
    if data["tier_history"]:
        table(
            "tier history",
            ["at", "tier", "reason"],
            [[h["at"][:19], h["tier"], h["reason"] or "-"] for h in data["tier_history"][-10:]],
        )


def revoke(gateway: str) -> None:
    """Revoke a gateway: its link closes at once and its certificates are refused."""
    data = _call(client_from_env().post, f"/api/v1/gateways/{gateway}/revoke")
    console.print(f"gateway [bold]{data['id']}[/bold] revoked")


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


@command_app.command("send")
def command_send(
    gateway: str,
    kind: str,
    arg: list[str] = typer.Option([], "--arg", help="An argument as key=value (repeatable)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the outcome."),
    ttl: float | None = typer.Option(None, "--ttl", help="Seconds before it expires."),
    timeout: float = typer.Option(60.0, "--timeout", help="How long --wait waits."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue a command; with --wait, follow it to its outcome."""
    client = client_from_env()
    body: dict[str, Any] = {"kind": kind, "args": _parse_args(arg)}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    command = _call(client.post, f"/api/v1/gateways/{gateway}/commands", body)
    if wait:
        deadline = time.monotonic() + timeout
        with console.status(f"{kind} on {gateway}: {command['state']}", spinner="dots") as status:
            while command["state"] not in _FINAL and time.monotonic() < deadline:
                time.sleep(0.2)
                command = _call(client.get, f"/api/v1/commands/{command['id']}")
                status.update(f"{kind} on {gateway}: {command['state']}")
    if as_json:
        print_json(command)
    else:
        _show_command(command)
    if wait and command["state"] not in _FINAL:
        raise fail(f"no outcome within {timeout:.0f} s (state {command['state']})", 3)
    if wait and command["state"] != "succeeded":
        raise typer.Exit(1)


def _show_command(c: dict[str, Any]) -> None:
    color = {"succeeded": "green", "failed": "red", "expired": "yellow"}.get(c["state"], "cyan")
    console.print(f"command [bold]{c['id']}[/bold] {c['kind']} → [{color}]{c['state']}[/{color}]")
    if c.get("error"):
        console.print(f"  error: {c['error']}")
    if c.get("result") is not None:
        console.print_json(json.dumps(c["result"]))


@command_app.command("list")
def command_list(
    gateway: str | None = typer.Option(None, "--gateway", help="Only this gateway's."),
    state: str | None = typer.Option(None, "--state", help="Only in this state."),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recent commands, newest first."""
    data = _call(
        client_from_env().get, "/api/v1/commands", gateway=gateway, state=state, limit=limit
    )
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} commands",
        ["id", "gateway", "kind", "state", "created", "by", "error"],
        [
            [
                c["id"],
                c["gateway_id"],
                c["kind"],
                c["state"],
                age(c["created_at"]),
                c["created_by"],
                c["error"],
            ]
            for c in data
        ],
    )


@command_app.command("show")
def command_show(
    command_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """One command with its result."""
    data = _call(client_from_env().get, f"/api/v1/commands/{command_id}")
    if as_json:
        print_json(data)
    else:
        _show_command(data)


@token_app.command("create")
def token_create(
    name: str | None = typer.Option(None, "--name", help="Name the gateway will get."),
    ttl: float | None = typer.Option(None, "--ttl", help="Seconds the token stays valid."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a one-time enrollment token; prints the code for `tether gateway enroll`."""
    body: dict[str, Any] = {"name": name}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    data = _call(client_from_env().post, "/api/v1/enrollment-tokens", body)
    if as_json:
        print_json(data)
        return
    console.print(f"enrollment token {data['token_id']} (expires {data['expires_at']}):")
    console.print(data["enrollment_code"], soft_wrap=True, highlight=False)
    console.print("\non the gateway: [bold]tether gateway enroll CODE[/bold]")


@token_app.command("list")
def token_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Enrollment tokens and whether they were used."""
    data = _call(client_from_env().get, "/api/v1/enrollment-tokens")
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} tokens",
        ["id", "name", "created", "expires", "used"],
        [
            [
                t["token_id"],
                t["name"],
                age(t["created_at"]),
                t["expires_at"][:19],
                age(t["used_at"]),
            ]
            for t in data
        ],
    )

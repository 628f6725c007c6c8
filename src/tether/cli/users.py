"""``tether user …`` and ``tether audit``: operator accounts, their API tokens, the audit log.

Everything goes through the cloud's operator API (``TETHER_URL``, ``TETHER_TOKEN``), so each
change is checked against the caller's role and audited like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import typer

from tether.cli.client import ApiError, client_from_env
from tether.cli.output import age, console, fail, print_json, table

user_app = typer.Typer(help="Operator accounts (admin only).", no_args_is_help=True)
token_app = typer.Typer(help="A user's API tokens.", no_args_is_help=True)
user_app.add_typer(token_app, name="token")

_ROLES = "admin, operator, viewer or support"


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        raise fail(str(exc)) from None


def _read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("no password on standard input", 2)
    return password


def _show_secret(label: str, secret: str) -> None:
    console.print(f"{label} (shown once):", highlight=False)
    console.print(secret, soft_wrap=True, highlight=False, markup=False)


@user_app.command("create")
def user_create(
    username: str,
    role: str = typer.Option("viewer", "--role", "-r", help=f"One of {_ROLES}."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (else generate)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a user; prints the generated password unless one is given on stdin."""
    body = {"username": username, "role": role, "password": _read_password(password_stdin)}
    data = _call(client_from_env().post, "/api/v1/users", body)
    if as_json:
        print_json(data)
        return
    user = data["user"]
    console.print(f"user [bold]{user['username']}[/bold] created with role {user['role']}")
    if data.get("password"):
        _show_secret("password", data["password"])


@user_app.command("list")
def user_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Users, their roles and when they last logged in."""
    data = _call(client_from_env().get, "/api/v1/users")
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} users",
        ["username", "role", "state", "last login", "created", "by"],
        [
            [
                u["username"],
                u["role"],
                "disabled" if u["disabled"] else "active",
                age(u["last_login_at"]),
                age(u["created_at"]),
                u["created_by"],
            ]
            for u in data
        ],
    )


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user: their sessions end and their API tokens are revoked."""
    _call(client_from_env().post, f"/api/v1/users/{username}/disable")
    console.print(f"user [bold]{username}[/bold] disabled")


@user_app.command("enable")
def user_enable(username: str) -> None:
    """Let a disabled user log in again (revoked tokens stay revoked)."""
    _call(client_from_env().post, f"/api/v1/users/{username}/enable")
    console.print(f"user [bold]{username}[/bold] enabled")


@user_app.command("role")
def user_role(username: str, role: str = typer.Argument(..., help=f"One of {_ROLES}.")) -> None:
    """Change a user's role (their API tokens take the new role too)."""
    data = _call(client_from_env().post, f"/api/v1/users/{username}/role", {"role": role})
    console.print(f"user [bold]{data['username']}[/bold] is now {data['role']}")


@user_app.command("passwd")
def user_passwd(
    username: str,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (else generate)."
    ),
) -> None:
    """Set a user's password (generated unless given on stdin); their sessions end."""
    body = {"password": _read_password(password_stdin)}
    data = _call(client_from_env().post, f"/api/v1/users/{username}/password", body)
    console.print(f"password of [bold]{username}[/bold] changed; their sessions ended")
    if data.get("password"):
        _show_secret("password", data["password"])


@token_app.command("create")
def token_create(
    username: str,
    label: str = typer.Option("cli", "--label", "-l", help="What the token is for."),
    days: float | None = typer.Option(
        None, "--days", help="Valid this many days (default: no expiry)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create an API token for a user, with their role; prints the secret once."""
    body: dict[str, Any] = {"label": label}
    if days is not None:
        body["ttl_seconds"] = days * 86400
    data = _call(client_from_env().post, f"/api/v1/users/{username}/tokens", body)
    if as_json:
        print_json(data)
        return
    token = data["token"]
    console.print(f"API token {token['token_id']} for {username} ({token['role']})")
    _show_secret("TETHER_TOKEN", data["secret"])


@token_app.command("list")
def token_list(
    username: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """A user's API tokens."""
    data = _call(client_from_env().get, f"/api/v1/users/{username}/tokens")
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} tokens of {username}",
        ["id", "label", "role", "created", "expires", "last used", "revoked"],
        [
            [
                t["token_id"],
                t["label"],
                t["role"],
                age(t["created_at"]),
                (t["expires_at"] or "never")[:19],
                age(t["last_used_at"]),
                age(t["revoked_at"]) if t["revoked_at"] else "",
            ]
            for t in data
        ],
    )


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke an API token (any user's, or a bootstrap token)."""
    _call(client_from_env().post, f"/api/v1/api-tokens/{token_id}/revoke")
    console.print(f"API token {token_id} revoked")


def audit(
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl or csv."),
    since: str | None = typer.Option(None, "--since", help="From this time (ISO 8601)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Export the audit log (admin only), oldest first, as JSON lines or CSV."""
    if fmt not in ("jsonl", "csv"):
        raise fail("--format takes jsonl or csv", 2)
    client = client_from_env()
    params = {"format": fmt, **({"since": since} if since else {})}
    try:
        with (
            client._client() as http,
            http.stream("GET", "/api/v1/audit/export", params=params) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise fail(f"{response.status_code}: {response.text.strip()}")
            if output is None:
                for chunk in response.iter_bytes():
                    sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                with output.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
    except httpx.HTTPError as exc:
        raise fail(f"request to {client.url} failed: {exc}") from None
    except OSError as exc:
        raise fail(f"{output}: {exc.strerror or exc}") from None

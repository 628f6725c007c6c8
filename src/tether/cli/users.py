"""``tether user …`` and ``tether audit [list]``: operator accounts, their tokens, the audit log.

Everything goes through the cloud's operator API (``TETHER_URL``, ``TETHER_TOKEN``), so each
change is checked against the caller's role and audited like any other.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text

from tether.cli.answers import ApiToken, AuditEntry, NewApiToken, NewPassword, NewUser, User
from tether.cli.client import api_command, api_path, client_from_env, decode
from tether.cli.ops import within
from tether.cli.output import age, console, count, fail, print_json, table, utc
from tether.cli.points import instant

user_app = typer.Typer(help="Operator accounts (admin only).", no_args_is_help=True)
token_app = typer.Typer(help="A user's API tokens.", no_args_is_help=True)
user_app.add_typer(token_app, name="token")

_ROLES = "admin, operator, viewer or support"

#: The cloud keeps an API token at most this many days.
MAX_TOKEN_DAYS = 400.0


def _read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("no password on standard input", 2)
    return password


def _show_secret(label: str, secret: str) -> None:
    console.print(f"{label} (shown once):", highlight=False, markup=False)
    console.print(secret, soft_wrap=True, highlight=False, markup=False)


def _user(name: str) -> str:
    return f"[bold]{escape(name)}[/bold]"


@user_app.command("create")
@api_command
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
    data = client_from_env().post(api_path("users"), body)
    if as_json:
        print_json(data)
        return
    made = decode(data, NewUser)
    console.print(
        f"user {_user(made.user.username)} created with role {escape(made.user.role)}",
        highlight=False,
    )
    if made.password:
        _show_secret("password", made.password)


@user_app.command("list")
@api_command
def user_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Users, their roles and when they last logged in."""
    data = client_from_env().get(api_path("users"))
    if as_json:
        print_json(data)
        return
    users = decode(data, list[User])
    table(
        count(len(users), "users"),
        ["username", "role", "state", "last login", "created", "by"],
        [
            [
                u.username,
                u.role,
                "disabled" if u.disabled else "active",
                age(u.last_login_at),
                age(u.created_at),
                u.created_by,
            ]
            for u in users
        ],
    )


@user_app.command("disable")
@api_command
def user_disable(username: str) -> None:
    """Disable a user: their sessions end and their API tokens are revoked."""
    client_from_env().post(api_path("users", username, "disable"))
    console.print(f"user {_user(username)} disabled", highlight=False)


@user_app.command("enable")
@api_command
def user_enable(username: str) -> None:
    """Let a disabled user log in again (revoked tokens stay revoked)."""
    client_from_env().post(api_path("users", username, "enable"))
    console.print(f"user {_user(username)} enabled", highlight=False)


@user_app.command("role")
@api_command
def user_role(username: str, role: str = typer.Argument(..., help=f"One of {_ROLES}.")) -> None:
    """Change a user's role (their API tokens take the new role too)."""
    user = decode(client_from_env().post(api_path("users", username, "role"), {"role": role}), User)
    console.print(f"user {_user(user.username)} is now {escape(user.role)}", highlight=False)


@user_app.command("passwd")
@api_command
def user_passwd(
    username: str,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input (else generate)."
    ),
) -> None:
    """Set a user's password (generated unless given on stdin); their sessions end."""
    body = {"password": _read_password(password_stdin)}
    data = client_from_env().post(api_path("users", username, "password"), body)
    changed = decode(data, NewPassword)
    console.print(f"password of {_user(username)} changed; their sessions ended", highlight=False)
    if changed.password:
        _show_secret("password", changed.password)


@token_app.command("create")
@api_command
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
        body["ttl_seconds"] = within("--days", days, MAX_TOKEN_DAYS) * 86400
    data = client_from_env().post(api_path("users", username, "tokens"), body)
    if as_json:
        print_json(data)
        return
    made = decode(data, NewApiToken)
    console.print(
        Text(f"API token {made.token.token_id} for {username} ({made.token.role})"),
        highlight=False,
    )
    _show_secret("TETHER_TOKEN", made.secret)


@token_app.command("list")
@api_command
def token_list(
    username: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """A user's API tokens."""
    data = client_from_env().get(api_path("users", username, "tokens"))
    if as_json:
        print_json(data)
        return
    tokens = decode(data, list[ApiToken])
    table(
        count(len(tokens), "tokens") + f" of {username}",
        ["id", "label", "role", "created", "expires (UTC)", "last used", "revoked"],
        [
            [
                t.token_id,
                t.label,
                t.role,
                age(t.created_at),
                utc(t.expires_at) if t.expires_at else "never",
                age(t.last_used_at),
                age(t.revoked_at) if t.revoked_at else "",
            ]
            for t in tokens
        ],
    )


@token_app.command("revoke")
@api_command
def token_revoke(token_id: str) -> None:
    """Revoke an API token (any user's, or a bootstrap token)."""
    client_from_env().post(api_path("api-tokens", token_id, "revoke"))
    console.print(Text(f"API token {token_id} revoked"), highlight=False)


def _check_writable(output: Path) -> None:
    """Refuse an --output the export could not be written to, before asking the cloud."""
    folder = output.parent
    if output.is_dir():
        raise fail(f"{output}: is a directory", 2)
    if not folder.is_dir():
        raise fail(f"{output}: no directory {folder}", 2)
    if not os.access(output if output.exists() else folder, os.W_OK):
        raise fail(f"{output}: not writable", 2)


#: ``tether audit list --limit``: what the cloud answers at most.
MAX_AUDIT = 10_000
_TIME_HELP = "ISO 8601 or Unix time; without an offset, this computer's time zone."


def _audit_filters(
    actor: str | None,
    action: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, str]:
    """The audit filters as the cloud reads them: times in ISO 8601 with their offset."""
    params = {
        name: value
        for name, value in (("actor", actor), ("action", action), ("target", target))
        if value is not None
    }
    if since is not None:
        params["since"] = _iso("--since", since)
    if until is not None:
        params["until"] = _iso("--until", until)
    return params


def _actor_option() -> Any:
    return typer.Option(
        None, "--actor", help="Only entries by this actor, as the log names it ('olga (admin)')."
    )


def _action_option() -> Any:
    return typer.Option(
        None, "--action", help="Only this action (token.revoke), or a family: token.*."
    )


def _target_option() -> Any:
    return typer.Option(None, "--target", help="Only entries about this gateway, token or user.")


def _since_option() -> Any:
    return typer.Option(None, "--since", help=f"From this time, inclusive. {_TIME_HELP}")


def _until_option() -> Any:
    return typer.Option(None, "--until", help=f"Before this time, exclusive. {_TIME_HELP}")


audit_app = typer.Typer(
    help="The audit log (admin only): export it (the default), or list a page of it.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@audit_app.callback()
@api_command
def audit(
    ctx: typer.Context,
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl or csv."),
    actor: str | None = _actor_option(),
    action: str | None = _action_option(),
    target: str | None = _target_option(),
    since: str | None = _since_option(),
    until: str | None = _until_option(),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Export the audit log (admin only), oldest first, as JSON lines or CSV; the filters take
    only what they name. ``tether audit list`` shows a page of it, newest first."""
    if ctx.invoked_subcommand is not None:
        given = (actor, action, target, since, until, output)
        if fmt != "jsonl" or any(value is not None for value in given):
            raise fail(f"put the options after `tether audit {ctx.invoked_subcommand}`", 2)
        return
    if fmt not in ("jsonl", "csv"):
        raise fail("--format takes jsonl or csv", 2)
    params = {"format": fmt, **_audit_filters(actor, action, target, since, until)}
    if output is not None:
        _check_writable(output)
    client = client_from_env()
    try:
        with client.stream(api_path("audit", "export"), params) as response:
            if output is None:
                for chunk in response.iter_bytes():
                    sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                with output.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
    except OSError as exc:
        raise fail(f"{output or 'stdout'}: {exc.strerror or exc}") from None


@audit_app.command("list")
@api_command
def audit_list(
    actor: str | None = _actor_option(),
    action: str | None = _action_option(),
    target: str | None = _target_option(),
    since: str | None = _since_option(),
    until: str | None = _until_option(),
    before: int | None = typer.Option(
        None, "--before", min=1, help="Only entries with an id below this (the next page)."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_AUDIT, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A page of the audit log, newest first (admin only), filtered by the cloud."""
    params = _audit_filters(actor, action, target, since, until)
    data = client_from_env().get(api_path("audit"), **params, before=before, limit=limit)
    if as_json:
        print_json(data)
        return
    entries = decode(data, list[AuditEntry])
    table(
        f"{len(entries)} audit entries",
        ["id", "at (UTC)", "actor", "action", "target", "from"],
        [[e.id, utc(e.at), e.actor, e.action, e.target, e.source] for e in entries],
    )
    if len(entries) == limit:
        console.print(
            Text(f"older entries: the same with --before {entries[-1].id}"), highlight=False
        )


def _iso(option: str, value: str) -> str:
    """The audit log takes ISO 8601 only: a Unix time is made one (in UTC)."""
    given = instant(option, value)
    try:
        seconds = float(given)
    except ValueError:
        return given
    return datetime.fromtimestamp(seconds, UTC).isoformat()

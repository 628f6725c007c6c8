"""``tether support …``: support grants, a support user's access to one gateway for some hours.

The customer's side (an admin or operator) gives a grant; a support user sends the diagnostic
commands (``ping``, ``metrics``) to that gateway while it counts, and to no other. A grant ends
by itself at its time, or earlier when revoked. Everything goes through the cloud's operator
API, which checks the caller's role and audits each grant and revocation.
"""

from __future__ import annotations

import typer
from rich.text import Text

from tether.cli.answers import SupportGrant
from tether.cli.client import api_command, api_path, client_from_env, decode
from tether.cli.ops import within
from tether.cli.output import age, console, count, print_json, table, utc

support_app = typer.Typer(
    help="Support grants: a support user's access to one gateway, for some hours.",
    no_args_is_help=True,
)

#: The longest a grant may last (the cloud's own bound): a week.
MAX_GRANT_HOURS = 168.0
#: ``tether support list --limit``: what the cloud answers at most.
MAX_GRANTS = 1000


@support_app.command("grant")
@api_command
def support_grant(
    gateway: str,
    user: str = typer.Option(..., "--user", "-u", help="The support user it is for."),
    hours: float = typer.Option(
        ..., "--hours", help=f"How long it lasts (above 0, at most {MAX_GRANT_HOURS:g})."
    ),
    reason: str = typer.Option(..., "--reason", help="Why support needs the gateway."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Let a support user send the diagnostic commands to GATEWAY for some hours."""
    body = {"user": user, "hours": within("--hours", hours, MAX_GRANT_HOURS), "reason": reason}
    data = client_from_env().post(api_path("gateways", gateway, "support-grants"), body)
    if as_json:
        print_json(data)
        return
    grant = decode(data, SupportGrant)
    console.print(
        Text(
            f"support grant {grant.id}: {grant.user} may {grant.scope} {grant.gateway_id} "
            f"until {utc(grant.expires_at)} UTC"
        ),
        highlight=False,
        soft_wrap=True,
    )


@support_app.command("list")
@api_command
def support_list(
    gateway: str | None = typer.Option(None, "--gateway", help="Only this gateway's."),
    user: str | None = typer.Option(None, "--user", "-u", help="Only this support user's."),
    everything: bool = typer.Option(
        False, "--all", help="Expired and revoked grants too (else only those that count now)."
    ),
    limit: int = typer.Option(200, "--limit", min=1, max=MAX_GRANTS, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Support grants, newest first: those that count now, or with --all every one."""
    data = client_from_env().get(
        api_path("support-grants"),
        gateway=gateway,
        user=user,
        active=None if everything else "true",
        limit=limit,
    )
    if as_json:
        print_json(data)
        return
    grants = decode(data, list[SupportGrant])
    table(
        count(len(grants), "support grants") + ("" if everything else " that count now"),
        ["id", "gateway", "user", "scope", "status", "until (UTC)", "given", "by", "reason"],
        [
            [
                g.id,
                g.gateway_id,
                g.user,
                g.scope,
                g.status,
                utc(g.expires_at),
                age(g.created_at),
                g.created_by,
                g.reason,
            ]
            for g in grants
        ],
    )


@support_app.command("revoke")
@api_command
def support_revoke(
    grant_id: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """End a support grant before its time."""
    data = client_from_env().post(api_path("support-grants", grant_id, "revoke"))
    if as_json:
        print_json(data)
        return
    grant = decode(data, SupportGrant)
    console.print(
        Text(
            f"support grant {grant.id} revoked: {grant.user} no longer reaches {grant.gateway_id}"
        ),
        highlight=False,
        soft_wrap=True,
    )

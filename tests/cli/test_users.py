"""``tether user …`` and ``tether audit`` as people run them, against a real cloud over TLS."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.cli.stub import Stub, invoke, no_traceback, tether
from tests.support.cloudproc import Cloud, running_cloud, tether_script
from tests.support.console import console_client, console_login

CLI_TIMEOUT = 60.0


async def _tether(
    cloud: Cloud, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` in a thread, so the cloud in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=cloud.cli_env(token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


async def test_an_admin_manages_users_and_their_tokens(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        made = await _tether(cloud, "user", "create", "Olga", "--role", "operator", "--json")
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert created["user"]["username"] == "olga"
        password = created["password"]
        assert len(password) >= 20

        given = await _tether(
            cloud, "user", "create", "vera", "--password-stdin", stdin="vera's passphrase\n"
        )
        assert given.returncode == 0, given.stderr
        assert "password (shown once)" not in given.stdout

        listed = await _tether(cloud, "user", "list", "--json")
        users = {u["username"]: u for u in json.loads(listed.stdout)}
        assert set(users) == {"admin", "olga", "vera"}
        assert users["vera"]["role"] == "viewer"

        token_run = await _tether(cloud, "user", "token", "create", "olga", "--json")
        token = json.loads(token_run.stdout)
        assert token["token"]["role"] == "operator"
        whoami = await _tether(cloud, "gateways", "list", "--json", token=token["secret"])
        assert whoami.returncode == 0, whoami.stderr

        # an operator may not manage users: the API refuses, the CLI says so and fails
        refused = await _tether(cloud, "user", "list", token=token["secret"])
        assert refused.returncode == 1
        assert "403" in refused.stderr

        assert (await _tether(cloud, "user", "role", "olga", "viewer")).returncode == 0
        tokens = json.loads(
            (await _tether(cloud, "user", "token", "list", "olga", "--json")).stdout
        )
        assert [t["role"] for t in tokens] == ["viewer"]

        reset = await _tether(cloud, "user", "passwd", "olga")
        assert reset.returncode == 0, reset.stderr
        new_password = reset.stdout.strip().splitlines()[-1]
        async with console_client(cloud) as client:
            await console_login(client, "olga", password, expect=401)
            await console_login(client, "olga", new_password)

        assert (await _tether(cloud, "user", "disable", "olga")).returncode == 0
        after = await _tether(cloud, "gateways", "list", token=token["secret"])
        assert after.returncode == 1
        assert "401" in after.stderr
        last_admin = await _tether(cloud, "user", "disable", "admin")
        assert last_admin.returncode == 1
        assert "no enabled admin" in last_admin.stderr


async def test_the_audit_log_exports_as_json_lines_and_csv(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga")
        await _tether(cloud, "token", "create", "--name", "boiler-room")
        lines = await _tether(cloud, "audit")
        assert lines.returncode == 0, lines.stderr
        entries = [json.loads(line) for line in lines.stdout.splitlines()]
        actions = [e["action"] for e in entries]
        assert actions.index("user.create") < actions.index("token.create")  # oldest first
        assert all(e["actor"] for e in entries)
        assert {e["source"] for e in entries if e["action"] == "token.create"} == {"127.0.0.1"}

        out = tmp_path / "audit.csv"
        written = await _tether(cloud, "audit", "--format", "csv", "--output", str(out))
        assert written.returncode == 0, written.stderr
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert [r["action"] for r in rows] == actions
        assert [int(r["id"]) for r in rows] == [e["id"] for e in entries]

        viewer = await _tether(cloud, "user", "create", "vic", "--json")
        token = json.loads(
            (await _tether(cloud, "user", "token", "create", "vic", "--json")).stdout
        )["secret"]
        assert viewer.returncode == 0
        refused = await _tether(cloud, "audit", token=token)
        assert refused.returncode == 1
        assert "403" in refused.stderr


async def test_audit_since_a_local_time_without_offset(tmp_path: Path) -> None:
    """The cloud reads a bare time in no zone of its own: the CLI sends this computer's."""
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga")
        local = timezone(timedelta(hours=5))  # TZ="XXX-5" below: five hours ahead of UTC
        an_hour_ago = (datetime.now(local) - timedelta(hours=1)).replace(tzinfo=None)
        in_an_hour = an_hour_ago + timedelta(hours=2)
        env = {**cloud.cli_env(), "TZ": "XXX-5"}
        recent = await _tether_env(env, "audit", "--since", an_hour_ago.isoformat())
        assert recent.returncode == 0, recent.stderr
        assert "user.create" in recent.stdout
        later = await _tether_env(env, "audit", "--since", in_an_hour.isoformat())
        assert (later.returncode, later.stdout) == (0, "")


async def _tether_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_audit_checks_its_output_path_before_asking(stub: Stub, tmp_path: Path) -> None:
    for output in (tmp_path / "nonexistent" / "x", tmp_path):
        done = invoke("audit", "-o", str(output), env=stub.env())
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {output}: ")
    assert stub.seen == []
    stub.answer(200, b'{"id": 1}\n', "application/x-ndjson")
    out = tmp_path / "audit.jsonl"
    done = invoke("audit", "-o", str(out), "--since", "1790000000", env=stub.env())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b'{"id": 1}\n'
    assert "since=2026-09-21T14%3A13%3A20%2B00%3A00" in stub.seen[0]


async def test_audit_list_and_export_take_only_what_the_filters_name(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga", "--role", "operator")
        minted = await _tether(cloud, "user", "token", "create", "olga", "--json")
        olga = json.loads(minted.stdout)["secret"]
        made = await _tether(cloud, "token", "create", "--name", "boiler-room", token=olga)
        assert made.returncode == 0, made.stderr
        await _tether(cloud, "token", "create", "--name", "plant-room")

        async def listed(*args: str) -> list[dict[str, object]]:
            done = await _tether(cloud, "audit", "list", *args, "--json")
            assert done.returncode == 0, done.stderr
            entries: list[dict[str, object]] = json.loads(done.stdout)
            return entries

        hers = await listed("--actor", "olga (operator)")
        assert [(e["action"], e["actor"]) for e in hers] == [("token.create", "olga (operator)")]
        family = await listed("--action", "token.*")
        assert [e["actor"] for e in family] == ["bootstrap token (admin)", "olga (operator)"]
        assert {e["action"] for e in await listed("--action", "api-token.*")} == {
            "api-token.create"
        }
        first = await listed("--action", "token.*", "--limit", "1")
        second = await listed(
            "--action", "token.*", "--limit", "1", "--before", str(first[0]["id"])
        )
        assert first + second == family

        shown = await _tether(cloud, "audit", "list", "--action", "token.*", "--limit", "1")
        assert shown.returncode == 0, shown.stderr
        assert "1 audit entries" in shown.stdout
        assert "token.create" in shown.stdout
        assert f"--before {first[0]['id']}" in shown.stdout  # where the next page starts

        exported = await _tether(cloud, "audit", "--actor", "olga (operator)")
        assert exported.returncode == 0, exported.stderr
        assert [json.loads(x)["action"] for x in exported.stdout.splitlines()] == ["token.create"]

        refused = await _tether(cloud, "audit", "list", "--action", "token*")
        assert refused.returncode == 1
        assert "action must be an action (token.create)" in refused.stderr
        assert refused.stderr.endswith("(HTTP 400)\n")
        misplaced = await _tether(cloud, "audit", "--actor", "olga (operator)", "list")
        assert misplaced.returncode == 2
        assert "put the options after `tether audit list`" in misplaced.stderr

        # times without an offset are this computer's (five hours ahead of UTC here)
        local = timezone(timedelta(hours=5))
        an_hour_ago = (datetime.now(local) - timedelta(hours=1)).replace(tzinfo=None)
        env = {**cloud.cli_env(), "TZ": "XXX-5"}
        window = ("--since", an_hour_ago.isoformat(), "--until")
        inside = await _tether_env(
            env, "audit", "list", *window, (an_hour_ago + timedelta(hours=2)).isoformat(), "--json"
        )
        assert inside.returncode == 0, inside.stderr
        assert len(json.loads(inside.stdout)) == len(await listed())
        before = await _tether_env(
            env, "audit", "list", "--until", an_hour_ago.isoformat(), "--json"
        )
        assert (before.returncode, json.loads(before.stdout)) == (0, [])


def test_audit_list_sends_local_times_with_their_offset(stub: Stub) -> None:
    done = tether(
        "audit",
        "list",
        "--action",
        "token.*",
        "--since",
        "2030-01-01T09:00",
        "--until",
        "1790000000",
        "--json",
        env=stub.env(TZ="XXX-5"),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    [request] = stub.seen
    assert request.startswith("GET /api/v1/audit?")
    assert "since=2030-01-01T09%3A00%3A00%2B05%3A00" in request
    assert "until=2026-09-21T14%3A13%3A20%2B00%3A00" in request
    assert "action=token.%2A" in request
    assert "limit=50" in request


_USER = {
    "username": "olga",
    "role": "operator",
    "created_at": "2025-01-02T03:04:05+00:00",
    "created_by": "admin (admin)",
    "password_changed_at": "2025-01-02T03:04:05+00:00",
    "disabled": False,
    "disabled_at": None,
    "last_login_at": None,
}
_TOKEN = {
    "token_id": "at_1",
    "username": "olga",
    "label": "cli",
    "role": "operator",
    "created_at": "2025-01-02T03:04:05+00:00",
    "created_by": "admin (admin)",
    "expires_at": None,
    "revoked_at": None,
    "last_used_at": None,
}
_ENTRY = {
    "id": 7,
    "at": "2025-01-02T03:04:05+00:00",
    "actor": "admin (admin)",
    "action": "token.create",
    "target": None,
    "detail": None,
    "source": "127.0.0.1",
}


def _said_unexpected(done: subprocess.CompletedProcess[str], field: str) -> bool:
    """One error line saying the answer's shape is unexpected, naming *field*."""
    return (
        done.returncode == 1
        and done.stdout == ""
        and done.stderr.startswith("error: the cloud's answer has an unexpected shape")
        and field in done.stderr
        and done.stderr.count("\n") == 1
        and no_traceback(done)
    )


def test_a_malformed_answer_is_one_error_line_naming_the_field(stub: Stub) -> None:
    for answer, args, field in (
        ([{**_USER, "last_login_at": "soon"}], ("user", "list"), "$[0].last_login_at"),
        ([{**_USER, "disabled": "no"}], ("user", "list"), "$[0].disabled"),
        ({"username": "olga"}, ("user", "list"), "Expected `array`, got `object`"),
        (
            [_TOKEN, {**_TOKEN, "expires_at": 5}],
            ("user", "token", "list", "olga"),
            "$[1].expires_at",
        ),
        ([{"label": "cli"}], ("user", "token", "list", "olga"), "$[0]"),
        ([{**_ENTRY, "id": "seven"}], ("audit", "list"), "$[0].id"),
        ([{k: v for k, v in _ENTRY.items() if k != "actor"}], ("audit", "list"), "actor"),
        ({"user": {"username": "olga"}}, ("user", "create", "olga"), "$.user"),
        ({"role": "viewer"}, ("user", "role", "olga", "viewer"), "username"),
        ({"password": 42}, ("user", "passwd", "olga"), "$.password"),
        ({"token": _TOKEN}, ("user", "token", "create", "olga"), "secret"),
    ):
        stub.answer(200, json.dumps(answer).encode())
        done = invoke(*args, env=stub.env())
        assert _said_unexpected(done, field), (args, done.stdout, done.stderr)


def _rows(shown: str) -> list[list[str]]:
    """The cells of each row of the table in *shown* (as a pipe gets it, one line a row)."""
    lines = [line for line in shown.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]


def test_json_prints_the_answer_as_it_came_and_tables_show_what_they_know(stub: Stub) -> None:
    odd = [{**_ENTRY, "id": "seven"}]
    stub.answer(200, json.dumps(odd).encode())
    done = invoke("audit", "list", "--json", env=stub.env())
    assert (done.returncode, json.loads(done.stdout)) == (0, odd)  # unchecked, as it came

    stub.answer(200, json.dumps([{**_USER, "a_field_this_client_does_not_know": 1}]).encode())
    done = invoke("user", "list", env=stub.env())
    assert done.returncode == 0, done.stderr
    [cells] = _rows(done.stdout)
    assert cells[:4] == ["olga", "operator", "active", "-"]
    assert cells[4].endswith(" d ago")
    assert cells[5] == "admin (admin)"

    revoked = {**_TOKEN, "expires_at": "2030-01-02T03:04:05Z", "revoked_at": _TOKEN["created_at"]}
    stub.answer(200, json.dumps([_TOKEN, revoked]).encode())
    done = invoke("user", "token", "list", "olga", env=stub.env())
    assert done.returncode == 0, done.stderr
    lasting, revoked_row = _rows(done.stdout)
    assert lasting[4:] == ["never", "-", ""]
    assert revoked_row[4] == "2030-01-02 03:04:05"
    assert revoked_row[6].endswith(" d ago")

    stub.answer(200, json.dumps([_ENTRY]).encode())
    done = invoke("audit", "list", "--limit", "1", env=stub.env())
    assert done.returncode == 0, done.stderr
    assert "2025-01-02 03:04:05" in done.stdout
    assert done.stdout.endswith("older entries: the same with --before 7\n")

    stub.answer(201, json.dumps({"user": _USER, "password": None}).encode())
    done = invoke("user", "create", "olga", env=stub.env())
    assert (done.returncode, done.stdout) == (0, "user olga created with role operator\n")

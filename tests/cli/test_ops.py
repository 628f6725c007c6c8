"""``tether gateways | command | token | gateway revoke`` against a real cloud over TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.stub import Stub, clean_env, invoke, no_traceback, tether_on
from tests.support.cloudproc import create_token, enroll_gateway, get_gateway, running_cloud

from tether.pki.errors import EstError


async def test_an_id_never_reaches_another_gateway_or_path(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = (await create_token(api, name="boiler-room"))["enrollment_code"]
        gw = (await enroll_gateway(code, tmp_path / "gw")).gateway_id

        revoked = await tether_on(cloud, "gateway", "revoke", f"{gw}/x/..")
        assert revoked.returncode == 1
        assert revoked.stderr == f"error: no gateway '{gw}/x/..' (HTTP 404)\n"
        assert (await get_gateway(api, gw))["revoked"] is False

        for args, said in (
            (("gateways", "show", f"{gw}/config"), f"no gateway '{gw}/config'"),
            (("command", "show", "../gateways"), "(HTTP 404)"),
            (("command", "send", f"{gw}?x=1", "ping"), f"no gateway '{gw}?x=1' (HTTP 404)"),
            (("gateways", "show", ".."), "no gateway '..' (HTTP 404)"),
        ):
            done = await tether_on(cloud, *args)
            assert done.returncode == 1, args
            assert said in done.stderr, done.stderr
            assert done.stderr.count("404") == 1, done.stderr
            assert "405" not in done.stderr
            assert no_traceback(done)

        shown = await tether_on(cloud, "gateways", "show", gw, "--json")
        assert json.loads(shown.stdout)["gateway"]["id"] == gw
        done = await tether_on(cloud, "gateway", "revoke", gw)
        assert (done.returncode, done.stdout) == (0, f"gateway {gw} revoked\n")
        assert (await get_gateway(api, gw))["revoked"] is True


async def test_errors_show_the_clouds_message_once_or_as_json(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        made = await tether_on(cloud, "user", "create", "vic", "--json")
        assert made.returncode == 0, made.stderr
        minted = await tether_on(cloud, "user", "token", "create", "vic", "--json")
        viewer = json.loads(minted.stdout)["secret"]

        for args in (("audit",), ("token", "create"), ("gateway", "revoke", "GW")):
            refused = await tether_on(cloud, *args, token=viewer)
            assert refused.returncode == 1
            assert refused.stderr.startswith("error: role 'viewer' may not "), refused.stderr
            assert refused.stderr.endswith(" (HTTP 403)\n")
            assert refused.stderr.count("403") == 1
            assert "{" not in refused.stderr

        missing = await tether_on(cloud, "gateways", "show", "nope", "--json")
        assert (missing.returncode, missing.stdout) == (1, "")
        assert json.loads(missing.stderr) == {"error": "no gateway 'nope'", "status": 404}
        refused = await tether_on(cloud, "user", "list", "--json", token=viewer)
        assert refused.returncode == 1
        assert json.loads(refused.stderr)["status"] == 403


async def test_tables_are_plain_text_and_unwrapped_in_a_pipe(tmp_path: Path) -> None:
    long_name = "building-" + "north-wing-" * 9 + "end"
    async with running_cloud(tmp_path / "cloud") as cloud:
        for name in ("[/bogus]", "[bold]loud[/bold]", long_name):
            made = await tether_on(cloud, "token", "create", "--name", name)
            assert made.returncode == 0, made.stderr
        listed = await tether_on(cloud, "token", "list", COLUMNS="80")
        assert listed.returncode == 0, listed.stderr
        assert "[/bogus]" in listed.stdout
        assert "[bold]loud[/bold]" in listed.stdout
        tokens = json.loads((await tether_on(cloud, "token", "list", "--json")).stdout)
        for token in tokens:  # each row whole on its own line, as grep sees it
            rows = [line for line in listed.stdout.splitlines() if token["token_id"] in line]
            assert len(rows) == 1
            assert token["name"] in rows[0]
        assert "expires (UTC)" in listed.stdout


async def test_enrollment_tokens_are_revoked(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        token = await create_token(api, name="spare")
        done = await tether_on(cloud, "token", "revoke", token["token_id"])
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"enrollment token {token['token_id']} revoked\n"
        with pytest.raises(EstError):
            await enroll_gateway(token["enrollment_code"], tmp_path / "gw")

        again = await tether_on(cloud, "token", "revoke", token["token_id"])
        assert again.returncode == 1
        assert "(HTTP 409)" in again.stderr
        unknown = await tether_on(cloud, "token", "revoke", "no-such-token", "--json")
        assert unknown.returncode == 1
        assert json.loads(unknown.stderr)["status"] == 404

        other = await create_token(api)
        as_json = await tether_on(cloud, "token", "revoke", other["token_id"], "--json")
        answer = json.loads(as_json.stdout)
        assert answer["token_id"] == other["token_id"]
        assert answer["revoked_at"] is not None
        listed = json.loads((await tether_on(cloud, "token", "list", "--json")).stdout)
        assert all(t["revoked_at"] for t in listed)


def test_numbers_that_are_not_finite_or_in_range_are_refused(stub: Stub) -> None:
    for args in (
        ("token", "create", "--ttl", "nan"),
        ("token", "create", "--ttl", "inf"),
        ("token", "create", "--ttl", "-1"),
        ("token", "create", "--ttl", "1e12"),
        ("command", "send", "GW", "ping", "--ttl", "nan"),
        ("command", "send", "GW", "ping", "--ttl", "0"),
        ("command", "send", "GW", "ping", "--wait", "--timeout", "nan"),
        ("user", "token", "create", "admin", "--days", "nan"),
        ("user", "token", "create", "admin", "--days", "-inf"),
        ("user", "token", "create", "admin", "--days", "1000"),
        ("command", "list", "--limit", "0"),
        ("command", "list", "--limit", "1001"),
        ("points", "tail", "GW", "--interval", "nan"),
    ):
        done = invoke(*args, env=stub.env())
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr, args
    assert stub.seen == []


async def test_a_command_not_started_is_cancelled(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = (await create_token(api, name="plant-room"))["enrollment_code"]
        gw = (await enroll_gateway(code, tmp_path / "gw")).gateway_id  # no agent: stays queued
        sent = await tether_on(cloud, "command", "send", gw, "ping", "--json")
        command_id = json.loads(sent.stdout)["id"]

        done = await tether_on(cloud, "command", "cancel", command_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"command {command_id} ping → cancelled\n"
        shown = await tether_on(cloud, "command", "show", command_id, "--json")
        assert json.loads(shown.stdout)["state"] == "cancelled"

        again = await tether_on(cloud, "command", "cancel", command_id, "--json")
        assert (again.returncode, again.stdout) == (1, "")
        assert json.loads(again.stderr)["status"] == 409
        unknown = await tether_on(cloud, "command", "cancel", "no-such-command")
        assert unknown.returncode == 1
        assert unknown.stderr.endswith("(HTTP 404)\n")


def test_send_help_names_the_kinds_and_the_exit_status_of_wait() -> None:
    done = invoke("command", "send", "--help", env=clean_env(COLUMNS="200"))
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "metrics, ping, reboot, restart-service, set-config, shutdown, or a kind" in text
    assert "Exit status with --wait: 0 it succeeded; 1 it failed, expired or was cancelled; 3" in (
        text
    )

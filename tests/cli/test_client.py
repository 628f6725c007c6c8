"""The operator CLI's client: paths, errors, the token and the CA file, through ``tether``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.stub import Stub, clean_env, invoke, no_traceback, tether

from tether.cli import ops
from tether.cli.client import api_path


def test_every_id_is_one_encoded_path_segment() -> None:
    assert api_path("gateways", "GW/x/..", "revoke") == "/api/v1/gateways/GW%2Fx%2F../revoke"
    assert api_path("commands", "..") == "/api/v1/commands/%2E%2E"
    assert api_path("commands", ".") == "/api/v1/commands/%2E"
    assert api_path("users", "ünï ?#%") == "/api/v1/users/%C3%BCn%C3%AF%20%3F%23%25"


def test_ids_with_slashes_queries_and_dots_stay_in_their_segment(stub: Stub) -> None:
    stub.answer(404, b'{"error": "no such thing"}')
    cases = {
        ("gateway", "revoke", "GW/x/.."): "POST /api/v1/gateways/GW%2Fx%2F../revoke",
        ("gateways", "show", "GW/config"): "GET /api/v1/gateways/GW%2Fconfig",
        ("command", "show", "../gateways"): "GET /api/v1/commands/..%2Fgateways",
        ("command", "send", "GW?x=1", "ping"): "POST /api/v1/gateways/GW%3Fx%3D1/commands",
        ("gateways", "show", ".."): "GET /api/v1/gateways/%2E%2E",
        ("points", "list", "GW#frag"): "GET /api/v1/gateways/GW%23frag/points",
        ("user", "disable", "a b"): "POST /api/v1/users/a%20b/disable",
        ("config", "show", "GW/../x"): "GET /api/v1/gateways/GW%2F..%2Fx/config",
    }
    for args, wire in cases.items():
        stub.seen.clear()
        done = invoke(*args, env=stub.env())
        assert done.returncode == 1, (args, done.stderr)
        assert stub.seen == [wire], args
        assert done.stderr == "error: no such thing (HTTP 404)\n", args


def test_an_empty_id_is_refused_before_any_request(stub: Stub) -> None:
    done = invoke("gateways", "show", "", env=stub.env())
    assert done.returncode == 2
    assert "empty" in done.stderr
    assert stub.seen == []


def test_an_answer_of_an_unexpected_shape_is_an_error_not_a_traceback(stub: Stub) -> None:
    for body, args in (
        (b"[]", ("gateways", "show", "GW")),
        (b'{"a": 1}', ("gateways", "list")),
        (b"[1, 2]", ("command", "list")),
        (b'"text"', ("token", "list")),
        (b"{}", ("gateway", "revoke", "GW")),
        (b'[{"ts": "soon"}]', ("logs", "GW")),
    ):
        stub.answer(200, body)
        done = invoke(*args, env=stub.env())
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: the cloud's answer has an unexpected shape"), args
        assert no_traceback(done), args
    stub.answer(200, b"<html>hello</html>", "text/html")
    done = invoke("gateways", "list", env=stub.env())
    assert (done.returncode, done.stderr) == (
        1,
        "error: the cloud's answer is not JSON (HTTP 200)\n",
    )


_GATEWAY = {
    "id": "GW1",
    "name": "roof",
    "created_at": "2025-01-02T03:04:05+00:00",
    "revoked": False,
    "linked": True,
    "tier": "websocket",
    "last_seen": "2025-01-02T03:04:06Z",
    "agent_version": "1.0",
    "peer": "127.0.0.1",
    "cert_not_after": "2026-01-02T03:04:05+00:00",
    "a_field_this_client_does_not_know": [1],
}


def test_an_answer_is_checked_where_it_is_decoded_and_the_error_names_the_field(
    stub: Stub,
) -> None:
    stub.answer(200, json.dumps([{**_GATEWAY, "last_seen": "soon"}]).encode())
    done = invoke("gateways", "list", env=stub.env())
    assert done.returncode == 1
    assert done.stderr.startswith("error: the cloud's answer has an unexpected shape"), done.stderr
    assert "$[0].last_seen" in done.stderr
    done = invoke("gateways", "list", "--json", env=stub.env())
    assert done.returncode == 0  # --json prints the answer as it came, unchecked
    assert json.loads(done.stdout)[0]["last_seen"] == "soon"


def test_json_prints_the_answer_as_it_came_and_a_table_shows_what_it_knows(stub: Stub) -> None:
    stub.answer(200, json.dumps([_GATEWAY]).encode())
    done = invoke("gateways", "list", "--json", env=stub.env())
    assert done.returncode == 0
    assert json.loads(done.stdout) == [_GATEWAY]
    done = invoke("gateways", "list", env=stub.env())
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "GW1" in line)
    for shown in ("roof", "linked", "2026-01-02"):
        assert shown in row


def test_an_error_in_the_commands_own_code_is_not_said_to_be_the_clouds(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> str:
        raise KeyError("a bug of the command line's own")

    stub.answer(200, json.dumps([_GATEWAY]).encode())
    monkeypatch.setattr(ops, "age", broken)
    with pytest.raises(KeyError, match="a bug of the command line's own"):
        invoke("gateways", "list", env=stub.env())


def test_error_answers_say_the_message_once_with_the_status(stub: Stub) -> None:
    for status, body, content_type, said in (
        (404, b'{"error": "no gateway \'GW\'"}', "application/json", "no gateway 'GW' (HTTP 404)"),
        (404, b"404: Not Found", "text/plain", "Not Found (HTTP 404)"),
        (405, b"405: Method Not Allowed", "text/plain", "Method Not Allowed (HTTP 405)"),
        (502, b"<html>\n<h1>Bad gateway</h1>\n</html>", "text/html", "<html> <h1>Bad gateway"),
        (500, b"", "text/plain", "Internal Server Error (HTTP 500)"),
        (403, b'{"error": "[/bogus] not allowed"}', "application/json", "[/bogus] not allowed"),
        (400, b'{"detail": "x"}', "application/json", "Bad Request (HTTP 400)"),
    ):
        stub.answer(status, body, content_type)
        done = invoke("gateways", "list", env=stub.env())
        assert done.returncode == 1
        assert done.stderr.startswith("error: "), done.stderr
        assert said in done.stderr
        assert done.stderr.count(str(status)) == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert no_traceback(done)


def test_json_errors_are_one_object_on_stderr_with_the_same_exit_codes(
    stub: Stub, tmp_path: Path
) -> None:
    stub.answer(404, b'{"error": "no gateway \'GW\'"}')
    for args in (
        ("gateways", "show", "GW"),
        ("gateways", "list"),
        ("command", "list"),
        ("points", "list", "GW"),
        ("token", "create"),
        ("user", "list"),
        ("logs", "GW"),
    ):
        done = invoke(*args, "--json", env=stub.env())
        assert done.returncode == 1, args
        assert done.stdout == ""
        assert json.loads(done.stderr) == {"error": "no gateway 'GW'", "status": 404}, args
    unreachable = invoke(
        "gateways", "list", "--json", env=stub.env(TETHER_URL="https://127.0.0.1:1")
    )
    assert unreachable.returncode == 1
    said = json.loads(unreachable.stderr)
    assert said["status"] is None
    assert said["error"].startswith("cannot reach https://127.0.0.1:1")
    usage = invoke("token", "create", "--ttl", "nan", "--json", env=stub.env())
    assert usage.returncode == 2
    assert json.loads(usage.stderr)["status"] is None


def test_a_token_with_a_control_character_or_space_is_refused_and_never_shown(
    stub: Stub,
) -> None:
    secret = "tt_s3cr3t-value-never-shown"
    for token in (secret + "\r", secret + "\n", " " + secret, secret[:5] + " " + secret[5:]):
        done = tether("gateways", "list", env=stub.env(TETHER_TOKEN=token))
        assert done.returncode == 2
        assert "TETHER_TOKEN contains a control character or space" in done.stderr
        assert secret[5:] not in done.stdout + done.stderr
        assert no_traceback(done)
    done = tether("gateways", "list", env=stub.env(TETHER_TOKEN=secret + "é"))
    assert done.returncode == 2
    assert "non-ASCII" in done.stderr
    assert secret not in done.stderr
    assert stub.seen == []


def test_a_bad_ca_file_is_named_with_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for ca, said in (
        (str(tmp_path / "nonexistent"), "No such file or directory"),
        (str(garbage), "not a PEM file of CA certificates"),
        (str(tmp_path), ""),
    ):
        env = clean_env(TETHER_URL="https://127.0.0.1:1", TETHER_TOKEN="tt_x", TETHER_CA=ca)
        done = tether("gateways", "list", env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: TETHER_CA={ca}: {said}"), done.stderr
        assert no_traceback(done)


def test_a_bad_url_is_an_error_not_a_traceback() -> None:
    for url in ("https://[::1", "ftp://127.0.0.1:1", "127.0.0.1"):
        done = invoke("gateways", "list", env=clean_env(TETHER_URL=url, TETHER_TOKEN="tt_x"))
        assert done.returncode == 1, (url, done.stderr)
        assert done.stderr.startswith("error: "), done.stderr
        assert no_traceback(done)

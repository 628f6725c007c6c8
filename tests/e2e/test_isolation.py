"""Least privilege on the link: a gateway sees and answers only its own commands."""

from __future__ import annotations

from pathlib import Path

import httpx
from tests.support.cloudproc import (
    Cloud,
    RawLink,
    create_token,
    enroll_gateway,
    running_agent,
    send_command,
    wait_command,
)

from tether.protocol.messages import CommandRequest, CommandUpdate, CommandUpdateAck, ErrorReport


async def test_a_gateway_cannot_read_or_answer_another_gateways_commands(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient
) -> None:
    a = await enroll_gateway((await create_token(api, name="a"))["enrollment_code"], tmp_path / "a")
    b = await enroll_gateway((await create_token(api, name="b"))["enrollment_code"], tmp_path / "b")
    for_a = await send_command(api, a.gateway_id, "ping")
    for_b = await send_command(api, b.gateway_id, "ping")

    async with RawLink(cloud.url, b.ssl_context()) as link:
        # B gets its own command, so the link delivers...
        own = await link.next_message(lambda m: isinstance(m, CommandRequest))
        assert isinstance(own, CommandRequest)
        assert own.command_id == for_b["id"]

        # ...but every update B sends about A's command is refused as unknown.
        for state in ("running", "succeeded", "failed"):
            await link.send(
                CommandUpdate(command_id=for_a["id"], state=state, result={"pong": True})
            )
            answer = await link.next_message(
                lambda m: isinstance(m, ErrorReport | CommandUpdateAck)
            )
            assert isinstance(answer, ErrorReport), answer
            assert answer.code == "unknown-command"
            assert answer.ref == for_a["id"]
        # The same answer as for an id that does not exist at all: no way to probe for ids.
        await link.send(CommandUpdate(command_id="no-such-command", state="succeeded"))
        answer = await link.next_message(lambda m: isinstance(m, ErrorReport | CommandUpdateAck))
        assert isinstance(answer, ErrorReport)
        assert answer.code == "unknown-command"
        assert answer.message == "no such command for this gateway"

        # A command queued for A while B is linked is not pushed to B; B's next one is.
        later_for_a = await send_command(api, a.gateway_id, "ping")
        later_for_b = await send_command(api, b.gateway_id, "ping")
        nxt = await link.next_message(lambda m: isinstance(m, CommandRequest))
        assert isinstance(nxt, CommandRequest)
        assert nxt.command_id == later_for_b["id"]

        # B's updates about its own command are accepted.
        await link.send(CommandUpdate(command_id=for_b["id"], state="succeeded", result={"x": 1}))
        ack = await link.next_message(lambda m: isinstance(m, CommandUpdateAck))
        assert ack == CommandUpdateAck(command_id=for_b["id"], state="succeeded")

    seen = {m.command_id for m in link.received if isinstance(m, CommandRequest)}
    assert seen == {for_b["id"], later_for_b["id"]}
    for command_id in (for_a["id"], later_for_a["id"]):
        command = (await api.get(f"/api/v1/commands/{command_id}")).json()
        assert command["state"] == "queued"
        assert command["delivered_at"] is None
        assert command["result"] is None
    assert (await api.get(f"/api/v1/commands/{for_b['id']}")).json()["result"] == {"x": 1}

    # A's commands were kept intact for A: its agent gets and runs them.
    async with running_agent(tmp_path / "a") as agent_a:
        await agent_a.wait_linked()
        for command_id in (for_a["id"], later_for_a["id"]):
            done = await wait_command(api, command_id)
            assert done["state"] == "succeeded"
            assert done["result"]["pong"] is True

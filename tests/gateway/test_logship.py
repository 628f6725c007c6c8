"""Log shipping: secrets redacted, a bounded buffer that counts what it drops, batches that leave
the buffer only on their ack (and go again after a lost one), remote level and sources, the
agent's logging handler and the journald source (a real subprocess reading journalctl's JSON)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.cloudproc import wait_for

from tether.gateway.logship import LogShipper, redact
from tether.protocol.codec import decode_frame, encode_frame
from tether.protocol.messages import LogBatch, LogBatchAck, Message

T0 = 1_718_000_000.0
WITHIN = 10.0

PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVcB/UNPxalR9zDYA\n"
    "jU1bHxhPyvwH4+dR6XP84mAvtdmhRANCAATaCbrQQ6G4g3hfgRZJ7lGl1dmC2Qx5\n"
    "-----END PRIVATE KEY-----"
)
EC_KEY = (
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkXs0Vx9Y3cXlEc2lR4sJtX\n-----END EC PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (
            "GET /api Authorization: Bearer abcdef0123456789xyz",
            "abcdef0123456789xyz",
            "Authorization: Bearer [redacted]",
        ),
        ("authorization: basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "basic [redacted]"),
        ("sent bearer eyJhbGciOiJIUzI1NiJ9.e30.sig to x", "eyJhbGciOiJIUzI1NiJ9", "bearer "),
        (
            "token tt_Q2hlY2tUaGlzT3V0X0FuZF9Nb3Jl in use",
            "Q2hlY2tUaGlzT3V0X0FuZF9Nb3Jl",
            "tt_[redacted] in use",
        ),
        (
            "enroll with tether-enroll-1.eyJ1IjoiaHR0cHM6Ly9jbG91ZCJ9 now",
            "eyJ1IjoiaHR0cHM6Ly9jbG91ZCJ9",
            "tether-enroll-1.[redacted] now",
        ),
        (
            "proxy http://site-user:s3cr3t-Pw@proxy.site:3128 refused",
            "s3cr3t-Pw",
            "http://site-user:[redacted]@proxy.site:3128 refused",
        ),
        ("db password=hunter22 host=db", "hunter22", "password=[redacted] host=db"),
        ("PASSWD: hunter22", "hunter22", "PASSWD: [redacted]"),
        ("api_key=AKIA1234567890", "AKIA1234567890", "api_key=[redacted]"),
        ("db_password=hunter22", "hunter22", "db_password=[redacted]"),
        ("access_token=abcdef123456", "abcdef123456", "access_token=[redacted]"),
        ("client_secret: s3cr3tvalue", "s3cr3tvalue", "client_secret: [redacted]"),
        (
            "config {'password': 'hunter 22', 'host': 'db'}",
            "hunter",
            "{'password': [redacted], 'host': 'db'}",
        ),
        ('{"password": "hunter22", "port": 5432}', "hunter22", '{"password": [redacted], "port"'),
        (
            "proxy http://user:p@ss@proxy.site:3128/ refused",
            "ss@proxy",
            "http://user:[redacted]@proxy.site:3128/ refused",
        ),
        ("secret = topsecret!", "topsecret!", "secret = [redacted]"),
        (
            f"loaded key\n{PEM_KEY}\ndone",
            "MIGHAgEAMBMGByqGSM49",
            "loaded key\n[redacted private key]\ndone",
        ),
        (f"key {EC_KEY}", "MHcCAQEEIBkXs0Vx9Y3c", "key [redacted private key]"),
        # a key cut short (a truncated line, a partial read) is redacted to the end
        (f"read {PEM_KEY[:120]}", "MIGHAgEAMBMGByqGSM49", "read [redacted private key]"),
        (
            f"two {EC_KEY} and {PEM_KEY[:90]}",
            "MIGHAgEAMBMG",
            "two [redacted private key] and [redacted private key]",
        ),
    ],
)
def test_redact_removes_secrets(text: str, secret: str, kept: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert kept in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "link moves to tier 2 (long-poll): WebSocket upgrade failed (400)",
        "connector modbus-1 read 12 registers from 10.0.0.7:502",
        "certificate renewed; valid until 2030-01-01T00:00:00+00:00",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",  # public, kept
    ],
)
def test_redact_keeps_ordinary_messages(text: str) -> None:
    assert redact(text) == text


class Link:
    """A link's send function: every message goes out as bytes, as on a real tier (the shipper
    keeps no message object alive through it)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, message: Message) -> None:
        self.frames.append(encode_frame(message))

    def batches(self) -> list[LogBatch]:
        out = []
        for frame in self.frames:
            message = decode_frame(frame)
            assert isinstance(message, LogBatch)
            out.append(message)
        return out


def add(shipper: LogShipper, message: str, *, level: str = "info", ts: float | None = None) -> None:
    shipper.add(
        ts=ts if ts is not None else T0,
        level=level,
        source="agent:tether.gateway.test",
        message=message,
        customer_data=False,
    )


def messages(batch: LogBatch) -> list[str]:
    return [r.message for r in batch.records]


def test_a_batch_leaves_the_buffer_only_on_its_ack() -> None:
    shipper = LogShipper(batch=2)
    link = Link()
    for i in range(3):
        add(shipper, f"record {i}", ts=T0 + i)
    shipper.flush()  # not linked: nothing to send to
    assert link.frames == []
    shipper.on_link_open(link)
    shipper.flush()
    shipper.flush()  # one batch at a time: the first waits for its ack
    [first] = link.batches()
    assert messages(first) == ["record 0", "record 1"]
    assert shipper.pending == 3
    shipper.on_ack(LogBatchAck(seq=first.seq + 100))  # not ours: ignored
    assert shipper.pending == 3
    shipper.on_ack(LogBatchAck(seq=first.seq))
    assert shipper.pending == 1
    shipper.on_ack(LogBatchAck(seq=first.seq))  # a repeated ack removes nothing more
    assert shipper.pending == 1
    shipper.flush()
    second = link.batches()[1]
    assert messages(second) == ["record 2"]
    assert second.seq != first.seq
    shipper.on_ack(LogBatchAck(seq=second.seq))
    assert shipper.pending == 0
    shipper.flush()
    assert len(link.frames) == 2


def test_a_batch_whose_ack_was_lost_goes_again_on_the_next_link() -> None:
    shipper = LogShipper(batch=10)
    first_link, second_link = Link(), Link()
    add(shipper, "before the cut", ts=T0)
    shipper.on_link_open(first_link)
    shipper.flush()
    [lost] = first_link.batches()
    shipper.on_link_closed()  # the cloud stored it, but the ack never arrived
    add(shipper, "after the cut", ts=T0 + 1)
    shipper.on_ack(LogBatchAck(seq=lost.seq))  # a late ack of a closed link means nothing
    assert shipper.pending == 2
    shipper.on_link_open(second_link)
    shipper.flush()
    [again] = second_link.batches()
    assert messages(again) == ["before the cut", "after the cut"]
    assert again.records[0] == lost.records[0]  # the same record, same time stamp
    shipper.on_ack(LogBatchAck(seq=again.seq))
    assert shipper.pending == 0


def test_the_buffer_is_bounded_and_the_drops_travel_with_the_next_batch() -> None:
    shipper = LogShipper(capacity=3, batch=10)
    for i in range(5):
        add(shipper, f"record {i}", ts=T0 + i)
    assert shipper.pending == 3
    assert (shipper.dropped, shipper.dropped_total) == (2, 2)
    link = Link()
    shipper.on_link_open(link)
    shipper.flush()
    [batch] = link.batches()
    assert messages(batch) == ["record 2", "record 3", "record 4"]  # the oldest went
    assert batch.dropped == 2
    shipper.on_ack(LogBatchAck(seq=batch.seq))
    assert (shipper.dropped, shipper.dropped_total, shipper.pending) == (0, 2, 0)
    add(shipper, "record 5", ts=T0 + 5)
    shipper.flush()
    assert link.batches()[1].dropped == 0  # reported once, not again


def test_drops_while_a_batch_is_in_flight_are_reported_and_nothing_unsent_is_lost() -> None:
    shipper = LogShipper(capacity=3, batch=3)
    link = Link()
    shipper.on_link_open(link)
    for i in range(3):
        add(shipper, f"record {i}", ts=T0 + i)
    shipper.flush()
    [first] = link.batches()
    assert first.dropped == 0
    # While the batch waits for its ack, the buffer overflows twice.
    add(shipper, "record 3", ts=T0 + 3)
    add(shipper, "record 4", ts=T0 + 4)
    assert shipper.dropped == 2
    shipper.on_ack(LogBatchAck(seq=first.seq))
    # The ack removes only what that batch carried: the two records sent since stay.
    assert shipper.pending == 2
    assert shipper.dropped == 2  # not yet reported: it goes with the next batch
    shipper.flush()
    second = link.batches()[1]
    assert messages(second) == ["record 3", "record 4"]
    assert second.dropped == 2
    shipper.on_ack(LogBatchAck(seq=second.seq))
    assert (shipper.pending, shipper.dropped, shipper.dropped_total) == (0, 0, 2)


async def test_records_below_the_level_or_from_unshipped_sources_are_not_kept() -> None:
    shipper = LogShipper()
    add(shipper, "debug noise", level="debug")
    assert shipper.pending == 0  # info by default
    add(shipper, "an info", level="info")
    assert shipper.pending == 1
    await shipper.configure({"level": "warning", "sources": ["agent"]})
    add(shipper, "another info", level="info")
    add(shipper, "a warning", level="warning")
    assert shipper.pending == 2
    await shipper.configure({"level": "debug", "sources": []})
    add(shipper, "the agent is not shipped now", level="error")
    assert shipper.pending == 2
    assert shipper.dropped_total == 0  # filtered records are not drops


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"level": "loud"}, "log level must be one of"),
        ({"sources": "agent"}, "must be a list of strings"),
        ({"sources": ["agent", 3]}, "must be a list of strings"),
        ({"sources": ["syslog"]}, "unknown log source 'syslog'"),
    ],
)
async def test_a_wrong_logs_configuration_is_refused_and_changes_nothing(
    config: dict[str, object], error: str
) -> None:
    shipper = LogShipper()
    with pytest.raises(ValueError, match=error):
        await shipper.configure(config)
    assert shipper.level == logging.INFO
    assert shipper.sources == {"agent"}


@pytest.fixture
def installed() -> Iterator[LogShipper]:
    logger = logging.getLogger("tether.gateway")
    level = logger.level
    shipper = LogShipper()
    shipper.install()
    try:
        yield shipper
    finally:
        shipper.uninstall()
        logger.setLevel(level)


def test_the_agent_logs_are_shipped_redacted_and_flagged_when_they_may_quote_field_data(
    installed: LogShipper,
) -> None:
    logging.getLogger("tether.gateway.link").info("proxy said %s", "password=hunter22")
    logging.getLogger("tether.gateway.connectors.modbus").warning("zone 4 reads %d degC", 21)
    logging.getLogger("tether.gateway.logship").warning("the shipper's own complaint")
    logging.getLogger("tether.cloud.api").warning("not the agent's")
    logging.getLogger("tether.gateway.link").debug("below the level")
    link = Link()
    installed.on_link_open(link)
    installed.flush()
    [batch] = link.batches()
    assert [(r.source, r.level, r.message, r.customer_data) for r in batch.records] == [
        ("agent:tether.gateway.link", "info", "proxy said password=[redacted]", False),
        ("agent:tether.gateway.connectors.modbus", "warning", "zone 4 reads 21 degC", True),
    ]
    assert all(abs(r.ts - time.time()) < 3600 for r in batch.records)


def test_a_long_message_is_cut() -> None:
    shipper = LogShipper()
    add(shipper, "x" * 20000)
    link = Link()
    shipper.on_link_open(link)
    shipper.flush()
    assert len(link.batches()[0].records[0].message) == 8192


FAKE_JOURNALCTL = """#!{python}
import json, sys, time
with open({argv_file!r}, "w") as fh:
    json.dump(sys.argv[1:], fh)
for entry in {entries!r}:
    print(json.dumps(entry), flush=True)
time.sleep(60)
"""


async def test_journald_entries_of_the_chosen_units_are_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv.json"
    entries = [
        {
            "__REALTIME_TIMESTAMP": str(int(T0 * 1e6)),
            "PRIORITY": "3",
            "_SYSTEMD_UNIT": "ssh.service",
            "MESSAGE": "Failed password for admin; password=letmein",
        },
        {"PRIORITY": "6", "SYSLOG_IDENTIFIER": "kernel", "MESSAGE": "eth0: link up"},
        {"PRIORITY": "7", "_SYSTEMD_UNIT": "ssh.service", "MESSAGE": "debug, below the level"},
        {"PRIORITY": "4", "MESSAGE": [104, 105]},  # binary messages come as byte arrays
    ]
    script = bin_dir / "journalctl"
    script.write_text(
        FAKE_JOURNALCTL.format(python=sys.executable, argv_file=str(argv_file), entries=entries)
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    shipper = LogShipper()
    try:
        await shipper.configure({"level": "info", "sources": ["journald:ssh.service"]})
        await wait_for(lambda: shipper.pending >= 2, within=WITHIN, what="two journal entries")
        assert json.loads(argv_file.read_text()) == [
            "--follow",
            "--output=json",
            "--lines=0",
            "--unit",
            "ssh.service",
        ]
    finally:
        await shipper.stop_journal()
    link = Link()
    shipper.on_link_open(link)
    shipper.flush()
    [batch] = link.batches()
    assert [(r.source, r.level, r.message, r.customer_data) for r in batch.records] == [
        ("journald:ssh.service", "error", "Failed password for admin; password=[redacted]", True),
        ("journald:kernel", "info", "eth0: link up", True),
    ]
    assert batch.records[0].ts == T0
    # Only journald was chosen: the agent's own records are not shipped.
    add(shipper, "from the agent")
    assert shipper.pending == 2


async def test_a_journal_line_too_long_to_read_is_counted_and_the_reading_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    entries = [
        {"PRIORITY": "6", "_SYSTEMD_UNIT": "big.service", "MESSAGE": "x" * (2 << 20)},
        {"PRIORITY": "6", "_SYSTEMD_UNIT": "big.service", "MESSAGE": "after the long one"},
    ]
    script = bin_dir / "journalctl"
    script.write_text(
        FAKE_JOURNALCTL.format(
            python=sys.executable, argv_file=str(tmp_path / "argv.json"), entries=entries
        )
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    shipper = LogShipper()
    await shipper.configure({"sources": ["journald:big.service"]})
    try:
        await wait_for(lambda: shipper.pending >= 1, within=WITHIN, what="the entry after it")
    finally:
        await shipper.stop_journal()  # and the reader ended cleanly
    link = Link()
    shipper.on_link_open(link)
    shipper.flush()
    [batch] = link.batches()
    assert [r.message for r in batch.records] == ["after the long one"]
    assert batch.dropped == 1
    # The journal can be configured again (its reader is restarted).
    await shipper.configure({"sources": ["agent"]})


async def test_agents_in_one_process_each_ship_only_their_own_records() -> None:
    first, second = LogShipper(), LogShipper()
    logger = logging.getLogger("tether.gateway.test.two-agents")

    async def agent(shipper: LogShipper, name: str) -> None:
        shipper.claim()

        async def worker() -> None:  # a task the agent starts inherits its shipper
            logger.warning("%s from a task", name)

        logger.warning("%s itself", name)
        await asyncio.create_task(worker())

    first.install()
    second.install()
    try:
        await asyncio.gather(agent(first, "first"), agent(second, "second"))
        logger.warning("outside any agent")
    finally:
        first.uninstall()
        second.uninstall()
    mine = {s: [r.message for r in s._buffer] for s in (first, second)}
    assert mine[first] == ["first itself", "first from a task", "outside any agent"]
    assert mine[second] == ["second itself", "second from a task", "outside any agent"]

"""The agent's log shipping: a bounded buffer of records, redacted, sent in acknowledged batches.

The agent's own log records (and, when configured, journald entries of chosen units) are
redacted, marked whether they may carry customer data, and held in a bounded buffer; when it is
full the oldest records go and are counted, and the count travels with the next batch. A batch
leaves the buffer only when the cloud acknowledged it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from tether.aio import cancel_and_wait
from tether.protocol.config import logs_section
from tether.protocol.messages import LogBatch, LogBatchAck, LogRecord, Message

__all__ = ["LogShipper", "current_shipper", "redact"]

# One place lists what a secret looks like (STYLE.md: diagnostics redact secrets in one place).
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
    (re.compile(r"\btt_[A-Za-z0-9_-]{16,}"), "tt_[redacted]"),
    (re.compile(r"tether-enroll-1\.[A-Za-z0-9_-]+"), "tether-enroll-1.[redacted]"),
    # A URL's password up to the last "@" of the URL (a raw "@" may be part of it).
    (re.compile(r"(://[^:/@\s]+:)\S+@"), r"\1[redacted]@"),
    # key=value, key: value, and keys of dicts and JSON ("db_password", "access_token" too).
    (
        re.compile(
            r"(?i)(?<![a-z])(password|passwd|secret|token|api_key)"
            r"([\"']?\s*[=:]\s*)(?:\"[^\"]*\"|'[^']*'|\S+)"
        ),
        r"\1\2[redacted]",
    ),
    (
        # to its END line, or to the end of the text when it was cut short before that
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
            r"(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----|[\s\S]*)"
        ),
        "[redacted private key]",
    ),
)
#: The longest journal entry (one JSON line) read; a longer one is skipped and counted.
_JOURNAL_LINE_LIMIT = 1 << 20
#: journald's syslog priorities as log levels.
_PRIORITIES = {
    0: "critical",
    1: "critical",
    2: "critical",
    3: "error",
    4: "warning",
    5: "info",
    6: "info",
    7: "debug",
}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
#: Loggers whose records may quote field data (values, point names from a building).
_CUSTOMER_DATA_LOGGERS = ("tether.gateway.connectors",)


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


#: The log shipper of the agent whose work is running (set by :meth:`LogShipper.claim` in the
#: agent's task; the tasks it starts inherit it). Records logged under another agent's shipper
#: are not this one's to ship; records logged outside any agent's work go to every shipper.
current_shipper: ContextVar[LogShipper | None] = ContextVar("tether_log_shipper", default=None)


class _Handler(logging.Handler):
    def __init__(self, shipper: LogShipper) -> None:
        super().__init__(logging.DEBUG)
        self.shipper = shipper

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("tether.gateway.logship"):
            return  # never ship the shipper's own complaints in a loop
        owner = current_shipper.get()
        if owner is not None and owner is not self.shipper:
            return  # another agent's record (several agents in one process: tether demo)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self.shipper.add(
            ts=record.created,
            level=record.levelname.lower(),
            source=f"agent:{record.name}",
            message=message,
            customer_data=record.name.startswith(_CUSTOMER_DATA_LOGGERS),
        )


class LogShipper:
    def __init__(self, *, capacity: int = 5000, batch: int = 500) -> None:
        self.capacity = capacity
        self.batch = batch
        self.level = _LEVELS["info"]
        self.sources: set[str] = {"agent"}
        self.dropped = 0  # records the buffer let go, not yet reported
        self.dropped_total = 0
        self._buffer: collections.deque[LogRecord] = collections.deque()
        # seq -> (the records sent, dropped count reported with them). The records themselves
        # are held, not their id()s: a record the full buffer let go would be freed and its id
        # reused by a newer one, which the ack would then remove unsent.
        self._in_flight: dict[int, tuple[list[LogRecord], int]] = {}
        self._seq = 0
        self._send: Callable[[Message], None] | None = None
        self._handler = _Handler(self)
        self._journal: asyncio.subprocess.Process | None = None
        self._journal_task: asyncio.Task[None] | None = None

    # -- configuration -----------------------------------------------------------------------

    def claim(self) -> None:
        """Make the records logged from the calling task (and the tasks it starts from now on)
        this shipper's, not those of another agent running in the same process."""
        current_shipper.set(self)

    def install(self) -> None:
        logging.getLogger("tether.gateway").addHandler(self._handler)
        self._open_level()

    def _open_level(self) -> None:
        # The console may show only warnings while the cloud wants info: let records be made.
        logger = logging.getLogger("tether.gateway")
        if logger.getEffectiveLevel() > self.level:
            logger.setLevel(self.level)

    def uninstall(self) -> None:
        logging.getLogger("tether.gateway").removeHandler(self._handler)

    async def configure(self, data: dict[str, Any]) -> None:
        """``{"level": "info", "sources": ["agent", "journald:ssh.service"]}``."""
        level, sources = logs_section(data)  # raises ConfigInvalid, a ValueError
        self.level = _LEVELS[level]
        self.sources = set(sources)
        self._open_level()
        await self._restart_journal()

    async def _restart_journal(self) -> None:
        await self.stop_journal()
        units = [s.partition(":")[2] for s in self.sources if s.startswith("journald")]
        if not units or shutil.which("journalctl") is None:
            return
        argv = ["journalctl", "--follow", "--output=json", "--lines=0"]
        for unit in filter(None, units):
            argv += ["--unit", unit]
        self._journal = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._journal_task = asyncio.get_running_loop().create_task(self._read_journal())

    async def _read_journal(self) -> None:
        assert self._journal is not None
        assert self._journal.stdout is not None
        stdout = self._journal.stdout
        pending = bytearray()
        skipping = False  # inside an entry longer than the limit, already counted
        while chunk := await stdout.read(1 << 16):
            pending += chunk
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end])
                del pending[: end + 1]
                if skipping:
                    skipping = False
                else:
                    self._journal_entry(line)
            if len(pending) > _JOURNAL_LINE_LIMIT:
                if not skipping:
                    self._count_drop()  # one entry too long to read: counted, and go on
                skipping = True
                pending.clear()

    def _journal_entry(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            ts = int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6 or time.time()
            level = _PRIORITIES.get(int(entry.get("PRIORITY", 6)), "info")
            unit = entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER") or "journal"
            message = entry.get("MESSAGE")
        except (ValueError, TypeError, AttributeError):
            return
        if isinstance(message, str):
            # OS logs may quote anything: treat them as possibly carrying customer data.
            self.add(
                ts=ts,
                level=level,
                source=f"journald:{unit}",
                message=message,
                customer_data=True,
            )

    async def stop_journal(self) -> None:
        if self._journal_task is not None:
            await cancel_and_wait(self._journal_task)
            self._journal_task = None
        if self._journal is not None:
            with contextlib.suppress(ProcessLookupError):
                self._journal.kill()
            await self._journal.wait()
            self._journal = None

    # -- buffering ---------------------------------------------------------------------------

    def add(self, *, ts: float, level: str, source: str, message: str, customer_data: bool) -> None:
        if _LEVELS.get(level, 20) < self.level:
            return
        if source.startswith("agent") and "agent" not in self.sources:
            return
        if len(self._buffer) >= self.capacity:
            self._buffer.popleft()
            self._count_drop()
        self._buffer.append(
            LogRecord(
                ts=ts,
                level=level,
                source=source,
                message=redact(message)[:8192],
                customer_data=customer_data,
            )
        )

    def _count_drop(self) -> None:
        self.dropped += 1
        self.dropped_total += 1

    def on_link_open(self, send: Callable[[Message], None]) -> None:
        self._send = send
        self._in_flight.clear()  # unacknowledged batches are still at the buffer's head

    def on_link_closed(self) -> None:
        self._send = None
        self._in_flight.clear()

    def flush(self) -> None:
        """Send one batch from the head of the buffer if none is waiting for its ack."""
        if self._send is None or self._in_flight or not self._buffer:
            return
        records = [self._buffer[i] for i in range(min(self.batch, len(self._buffer)))]
        self._seq += 1
        self._in_flight[self._seq] = (records, self.dropped)
        self._send(LogBatch(seq=self._seq, records=records, dropped=self.dropped))

    def on_ack(self, ack: LogBatchAck) -> None:
        sent = self._in_flight.pop(ack.seq, None)
        if sent is None:
            return
        records, dropped = sent
        ids = {id(r) for r in records}  # unique while `records` holds them
        # The buffer may have let some of them go meanwhile: remove only what is still there.
        while self._buffer and id(self._buffer[0]) in ids:
            self._buffer.popleft()
        self.dropped = max(0, self.dropped - dropped)

    @property
    def pending(self) -> int:
        return len(self._buffer)

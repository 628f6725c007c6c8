"""Folds a SQLite store's write-ahead log back into the database file, on a thread of its own.

SQLite's automatic checkpoint runs inside whichever commit takes the WAL past 1,000 pages: that
commit copies the log into the database file and syncs it before it returns. On the cloud, that
commit is as likely as not an operator's command being queued or a telemetry group being
acknowledged, and it takes several milliseconds longer than the hundreds before it. So the
store's connections turn the automatic checkpoint off (``PRAGMA wal_autocheckpoint = 0``) and a
:class:`Checkpointer` runs a passive checkpoint every :data:`CHECKPOINT_INTERVAL` instead.

A passive checkpoint takes no lock that writers or readers wait for, and never waits itself: what
a reader still uses stays in the log until the next round. Durability is unchanged (a commit is
in the WAL when it returns, whoever checkpoints it); the log holds up to about one interval of
writes more than before, and SQLite starts it over from the beginning once it is all copied.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["CHECKPOINT_INTERVAL", "CheckpointStats", "Checkpointer"]

log = logging.getLogger(__name__)

#: Seconds between two passive checkpoints.
CHECKPOINT_INTERVAL: Final = 1.0

#: A failing checkpoint is logged at most this often (seconds); it is retried every round.
_LOG_EVERY: Final = 60.0


@dataclass
class CheckpointStats:
    """What the checkpointer has done so far (read from any thread; written by its own)."""

    rounds: int = 0  # checkpoints run (busy or not)
    busy: int = 0  # rounds another connection's checkpoint was running
    failures: int = 0  # rounds that raised
    wal_pages: int = 0  # pages in the log after the last round
    copied_pages: int = 0  # of those, copied into the database file


class Checkpointer:
    """A daemon thread with its own connection that checkpoints *path* every *interval* s."""

    def __init__(self, path: str, *, interval: float = CHECKPOINT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the checkpoint interval must be positive")
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._round_done = threading.Condition()
        self._started = 0  # rounds begun (under _round_done)
        self._ended = False  # the thread is done (under _round_done)
        self.stats = CheckpointStats()
        self._thread = threading.Thread(
            target=self._run, name="tether-sqlite-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (a checkpoint under way finishes first). Blocks: call off the loop."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def run_now(self, timeout: float) -> bool:
        """Ask for a round now and wait (at most *timeout* s) for one that began after the
        call to finish, so it saw every commit made before it: True if one did. Blocks: call
        off the event loop."""
        with self._round_done:
            target = self._started + 1  # a round under way now may have begun too early
            self._wake.set()
            self._round_done.wait_for(lambda: self.stats.rounds >= target or self._ended, timeout)
            return self.stats.rounds >= target

    def _run(self) -> None:
        try:
            self._rounds()
        finally:
            with self._round_done:
                self._ended = True
                self._round_done.notify_all()

    def _rounds(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            log.error("the WAL checkpointer could not open %s: %s", self._path, exc)
            return
        logged = 0.0
        try:
            db.execute("PRAGMA wal_autocheckpoint = 0")
            while not self._stop.is_set():
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                with self._round_done:
                    self._started += 1
                try:
                    busy, pages, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    self.stats.failures += 1
                    if time.monotonic() - logged >= _LOG_EVERY:
                        logged = time.monotonic()
                        log.warning("WAL checkpoint of %s failed (retried): %s", self._path, exc)
                else:
                    if busy:
                        self.stats.busy += 1
                    else:
                        self.stats.wal_pages = max(int(pages), 0)
                        self.stats.copied_pages = max(int(copied), 0)
                with self._round_done:
                    self.stats.rounds += 1
                    self._round_done.notify_all()
        finally:
            db.close()

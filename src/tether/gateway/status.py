"""The agent's status file, and reading it back next to a gateway without the cloud.

The running agent keeps ``status.json`` in its data directory (:func:`write_status`: owner
only, replaced atomically), refreshed at each health interval and whenever its link changes,
linked or not. ``tether gateway status`` reads it with :func:`read_gateway_status`, together
with the identity files and whether an agent holds the data directory's stores right now:
that is seen in ``/proc/locks`` (the agent's SQLite files stay locked while it runs), so the
check opens none of the agent's files and cannot disturb it.

The file holds figures and states, never configuration: no key material, no connector
settings (they may hold passwords), no proxy URL.

Nothing here needs the cloud; the X.509 toolkit is loaded only to read the certificate, by
the command, never by the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "LOCKS_FILE",
    "STALE_AFTER",
    "STATUS_FILE",
    "STATUS_FORMAT",
    "GatewayStatus",
    "IdentityFacts",
    "StatusUnavailable",
    "lock_holders",
    "read_gateway_status",
    "write_status",
]

#: The file's name in the data directory.
STATUS_FILE = "status.json"
#: The version of the document's layout (its ``format`` key).
STATUS_FORMAT = 1
#: A status older than this many health intervals no longer describes a running agent.
STALE_AFTER = 3
#: Where Linux lists the file locks held on the machine (pid, device, inode of each).
LOCKS_FILE = Path("/proc/locks")
#: The agent's stores, locked (SQLite's exclusive mode) for as long as it runs.
_LOCKED_STORES = ("spool.db", "agent.db")
#: A status file larger than this is not read (the agent's are a few KiB).
_MAX_BYTES = 4 * 1024 * 1024
#: Status documents carry the health interval they were refreshed at; before one, this.
_DEFAULT_INTERVAL = 60.0
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)

_write_lock = threading.Lock()


class StatusUnavailable(Exception):
    """Nothing can be said about this data directory (missing, not enrolled, unreadable);
    the message says what, in one line."""


# -- writing (the agent) ---------------------------------------------------------------------


def write_status(path: Path, document: Mapping[str, Any]) -> None:
    """Replace *path* with *document* as JSON, readable by its owner only (mode 0600).

    Written to a temporary file in the same directory, flushed to disk, then renamed over
    *path*: a reader sees the previous document or this one, never a part. Blocking; one
    writer at a time in this process."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    with _write_lock:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            try:
                os.fchmod(fd, 0o600)  # exactly, whatever the umask or a leftover's mode
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):  # the rename is durable too (best effort)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# -- is an agent running? ----------------------------------------------------------------------


def _file_key(path: Path) -> tuple[int, int, int] | None:
    """(major, minor, inode) of *path* as ``/proc/locks`` names it; None if it is missing."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return os.major(info.st_dev), os.minor(info.st_dev), info.st_ino


def lock_holders(paths: list[Path], *, locks: Path = LOCKS_FILE) -> set[int] | None:
    """The processes holding a lock on any of *paths*, read from *locks* (``/proc/locks``):
    nothing is opened but that list, so no lock is taken, tested or lost. A holder whose pid
    this process cannot see (another pid namespace, an OFD lock) is counted as 0.

    None when *locks* cannot be read (not Linux): then nobody can tell from here."""
    keys = {key for key in map(_file_key, paths) if key is not None}
    try:
        text = locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    holders: set[int] = set()
    for line in text.splitlines():
        # "1: POSIX  ADVISORY  WRITE 9094 fe:00:2171105 1073741824 1073742335"; a waiter's
        # line has "->" after the number, and holds nothing.
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key in keys:
            holders.add(max(pid, 0))
    return holders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# -- reading (the command) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityFacts:
    """Who the data directory's gateway is, from its identity files."""

    gateway_id: str
    cloud_url: str
    subject: str
    not_after: datetime

    def days_left(self, now: float) -> float:
        return (self.not_after.timestamp() - now) / 86400.0

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "cloud_url": self.cloud_url,
            "certificate_subject": self.subject,
            "certificate_not_after": self.not_after.isoformat(),
            "certificate_days_left": round(self.days_left(now), 2),
        }


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """What is known of the agent on one data directory, without the cloud."""

    data_dir: Path
    identity: IdentityFacts
    #: An agent holds the data directory's stores now.
    running: bool
    #: The running agent's process, when it can be told.
    pid: int | None
    #: How :attr:`running` was found: "locks" (``/proc/locks``) or "pid" (the file's pid).
    checked_by: str
    #: The status file's document; None before an agent wrote one.
    document: dict[str, Any] | None
    #: When this was read (Unix time).
    now: float

    @property
    def age(self) -> float | None:
        """Seconds since the agent last wrote the document."""
        updated = _number(self.document, "updated_at")
        return None if updated is None else max(0.0, self.now - updated)

    @property
    def health_interval(self) -> float:
        interval = _number(self.document, "health_interval")
        return interval if interval is not None and interval > 0 else _DEFAULT_INTERVAL

    @property
    def stopped(self) -> dict[str, Any] | None:
        """The agent's own record of its last stop (when and why), if the document has one."""
        value = (self.document or {}).get("stopped")
        return value if isinstance(value, dict) else None

    @property
    def stale(self) -> bool:
        """The document does not describe a running agent as it is now: no agent runs, or
        it is older than :data:`STALE_AFTER` health intervals, or a stopped agent wrote it."""
        if not self.running or self.document is None or self.stopped is not None:
            return True
        age = self.age
        return age is None or age > STALE_AFTER * self.health_interval

    @property
    def link(self) -> dict[str, Any]:
        value = (self.document or {}).get("link")
        return value if isinstance(value, dict) else {}

    @property
    def linked(self) -> bool:
        """Linked to the cloud, as a fresh document of a running agent says."""
        return not self.stale and self.link.get("linked") is True

    @property
    def exit_code(self) -> int:
        """0: an agent runs and is linked; 1: it is not linked, or no agent runs."""
        return 0 if self.running and self.linked else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "identity": self.identity.to_json(self.now),
            "running": self.running,
            "pid": self.pid,
            "running_checked_by": self.checked_by,
            "stale": self.stale,
            "linked": self.linked,
            "age_s": None if self.age is None else round(self.age, 3),
            "status": self.document,
        }


def _number(document: Mapping[str, Any] | None, key: str) -> float | None:
    value = (document or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _denied(path: Path, exc: OSError) -> StatusUnavailable:
    """A permission error, said with whose files these are and what to do."""
    for place in (path, *path.parents):
        try:
            info = place.stat()
        except OSError:
            continue
        try:
            import pwd

            owner = pwd.getpwuid(info.st_uid).pw_name
        except (KeyError, ImportError):
            owner = str(info.st_uid)
        hint = f"run it as {owner} or as root" if owner != "root" else "run it as root"
        return StatusUnavailable(
            f"cannot read {path}: {_reason(exc)} ({place} belongs to {owner}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}); {hint}"
        )
    return StatusUnavailable(f"cannot read {path}: {_reason(exc)}")


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(_MAX_BYTES + 1)
    except PermissionError as exc:
        raise _denied(path, exc) from None


def _identity(directory: Path) -> IdentityFacts:
    meta_path = directory / "identity.json"
    try:
        meta = json.loads(_read_bytes(meta_path))
    except FileNotFoundError:
        raise StatusUnavailable(
            f"no gateway identity in {directory}: this data directory is not enrolled "
            f"(tether gateway enroll)"
        ) from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot read {meta_path}: {_reason(exc)}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise StatusUnavailable(f"{meta_path} is not valid JSON ({exc}): damaged") from None
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(key), str) and meta[key] for key in ("gateway_id", "cloud_url")
    ):
        raise StatusUnavailable(f"{meta_path} names no gateway id and cloud URL: damaged")
    subject, not_after = _certificate(directory / "gateway.pem")
    return IdentityFacts(
        gateway_id=meta["gateway_id"],
        cloud_url=meta["cloud_url"],
        subject=subject,
        not_after=not_after,
    )


def _certificate(path: Path) -> tuple[str, datetime]:
    """Subject and end of validity of the certificate in *path* (which holds the key too:
    only the certificate's block is parsed)."""
    from cryptography import x509

    try:
        pem = _read_bytes(path)
    except FileNotFoundError:
        raise StatusUnavailable(f"{path} is missing: the gateway's identity is damaged") from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot read {path}: {_reason(exc)}") from None
    match = _PEM_CERTIFICATE.search(pem)
    try:
        if match is None:
            raise ValueError("no PEM certificate")
        cert = x509.load_pem_x509_certificate(match.group())
    except ValueError as exc:
        raise StatusUnavailable(f"{path} holds no usable certificate ({exc}): damaged") from None
    return cert.subject.rfc4514_string(), cert.not_valid_after_utc


def _document(path: Path) -> dict[str, Any] | None:
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StatusUnavailable(f"cannot read {path}: {_reason(exc)}") from None
    if len(data) > _MAX_BYTES:
        raise StatusUnavailable(f"{path} is larger than {_MAX_BYTES} bytes: not a status file")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise StatusUnavailable(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise StatusUnavailable(f"{path} is not a JSON object")
    return document


def read_gateway_status(
    data_dir: Path, *, now: float | None = None, locks: Path = LOCKS_FILE
) -> GatewayStatus:
    """What the data directory says about its gateway and agent.

    Raises :class:`StatusUnavailable` (one line) when there is no such directory, it is not
    enrolled, or its files cannot be read (permissions, damage)."""
    now = time.time() if now is None else now
    try:
        if not data_dir.is_dir():
            data_dir.stat()  # FileNotFoundError, PermissionError… or a file
            raise StatusUnavailable(f"{data_dir} is not a directory")
    except FileNotFoundError:
        raise StatusUnavailable(f"no such data directory: {data_dir}") from None
    except PermissionError as exc:
        raise _denied(data_dir, exc) from None
    identity = _identity(data_dir / "identity")
    try:
        holders = lock_holders([data_dir / name for name in _LOCKED_STORES], locks=locks)
        document = _document(data_dir / STATUS_FILE)
    except PermissionError as exc:
        raise _denied(data_dir, exc) from None
    if holders is not None:
        running, checked_by = bool(holders), "locks"
        pids = sorted(p for p in holders if p > 0)
        pid = pids[0] if pids else None
    else:
        written_by = _number(document, "pid")
        running = written_by is not None and _alive(int(written_by))
        pid, checked_by = (int(written_by) if running and written_by else None), "pid"
    return GatewayStatus(
        data_dir=data_dir,
        identity=identity,
        running=running,
        pid=pid,
        checked_by=checked_by,
        document=document,
        now=now,
    )

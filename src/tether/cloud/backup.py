"""Online backup and restore of a cloud's state: its database, its PKI and its secrets in one file.

An archive is a gzip-compressed tar whose members are, in this order::

    manifest.json                 what is inside (read first by a restore): the format, the
                                  tether version, the database's schema revisions, when it was
                                  made, and the size and SHA-256 of every member below
    tether.db                     the SQLite database (absent for a PostgreSQL deployment)
    pki/ca.pem, pki/ca.key        the platform CA: the key is why the archive is secret
    pki/server.pem, pki/server.key
    admin.token, admin.password   the bootstrap credentials, when present

The database is copied with SQLite's online backup API inside one read transaction. In WAL mode
that transaction sees the database as it was when it began, whatever the cloud commits
meanwhile, so the copy is consistent and never starts over (outside a read transaction, the
backup restarts whenever another connection writes, which on a busy cloud is all the time). A
file copy of a live WAL database may be torn between the database file and its log.

A restore reads the archive twice. First it checks everything without writing anything: the
manifest, every member's size and SHA-256, that nothing is in the archive that the manifest does
not list, gzip's CRC of the whole, and then the schema revisions (an archive from a newer schema
than this tether knows is refused). Then it writes the members into a staging directory inside
the target, checking them again as they are written, checks the database with SQLite's quick
check and its schema revisions, and only then moves them into place. Files holding keys or the
database are 0600, certificates 0644 (as the cloud writes them), directories 0700.

Errors (all :class:`BackupError`)::

    BackupError
    ├── SourceUnusable    the data directory cannot be backed up (no CA, no database…)
    ├── ArchiveInvalid    damaged, or not a tether backup; names the member
    ├── SchemaTooNew      made by a newer tether than this one
    └── TargetNotEmpty    the restore's target holds files (use force)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import msgspec
from alembic.script import ScriptDirectory
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tether import __version__
from tether.cloud.settings import CloudSettings
from tether.cloud.store import migrations
from tether.pki.ca import CA_CERT_FILE, CA_KEY_FILE, certificate_fingerprint

if TYPE_CHECKING:
    from _typeshed import SupportsRead

__all__ = [
    "DATABASE_MEMBER",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_MEMBER",
    "ArchiveInvalid",
    "BackupError",
    "BackupManifest",
    "BackupResult",
    "DatabaseEntry",
    "MemberEntry",
    "ProgressCallback",
    "RestoreResult",
    "SchemaTooNew",
    "SourceUnusable",
    "TargetNotEmpty",
    "create_backup",
    "known_schema_revisions",
    "restore_backup",
    "verify_archive",
]

FORMAT: Final = "tether-cloud-backup"
#: Bumped when a restore of this version could not read what a newer one writes.
FORMAT_VERSION: Final = 1
MANIFEST_MEMBER: Final = "manifest.json"
DATABASE_MEMBER: Final = "tether.db"
PKI_MEMBER_DIR: Final = "pki"
#: The admin API token and console password files (the cloud's ``ADMIN_TOKEN_FILE`` and
#: ``ADMIN_PASSWORD_FILE``, named here so that a backup does not load the whole service).
ADMIN_TOKEN_MEMBER: Final = "admin.token"  # noqa: S105 (a file name, not a secret)
ADMIN_PASSWORD_MEMBER: Final = "admin.password"  # noqa: S105 (a file name)
#: A manifest larger than this is not one of ours.
MAX_MANIFEST_BYTES: Final = 1 << 20
#: PKI and credential files are small; one larger than this is not one of ours.
MAX_SMALL_FILE_BYTES: Final = 1 << 20
#: Pages copied per step of the SQLite backup (the progress bar moves once per step).
BACKUP_STEP_PAGES: Final = 1024
#: Seconds SQLite waits for a lock held by the cloud before giving up.
SQLITE_BUSY_TIMEOUT: Final = 30.0
#: What SQLite keeps beside a database file; stale ones must not meet a restored database.
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
CHUNK: Final = 1 << 20

_MEMBER_PATH = re.compile(
    r"(?:tether\.db|admin\.token|admin\.password|pki/[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUIRED_MEMBERS = (f"{PKI_MEMBER_DIR}/{CA_CERT_FILE}", f"{PKI_MEMBER_DIR}/{CA_KEY_FILE}")

#: ``progress(step, done, total)``: *step* names what is under way ("database snapshot",
#: "checksums", "archive", "checking", "restoring"); *done* and *total* count its units.
ProgressCallback = Callable[[str, int, int], None]


class BackupError(Exception):
    """A backup or a restore could not be done; the message says why and what to do."""


class SourceUnusable(BackupError):
    """The data directory (or its database) cannot be backed up as it is."""


class ArchiveInvalid(BackupError):
    """The archive is damaged or is not a tether cloud backup; :attr:`member` names where."""

    def __init__(self, member: str | None, reason: str) -> None:
        where = f"member {member}: " if member else ""
        super().__init__(f"archive refused: {where}{reason}")
        self.member = member
        self.reason = reason


class SchemaTooNew(BackupError):
    """The archive's database is at a schema revision this tether does not know."""


class TargetNotEmpty(BackupError):
    """The restore's target directory holds files and ``force`` was not given."""


class MemberEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of the archive."""

    path: str
    size: int
    sha256: str
    #: Holds key material or credentials (the CA and server keys, the admin token and password).
    secret: bool


class DatabaseEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The database the archive was made from."""

    engine: str  # "sqlite" or "postgresql"
    included: bool
    #: Alembic revisions the database was at (one per head); empty when not included.
    schema_revisions: tuple[str, ...]


class BackupManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``manifest.json``: what an archive holds."""

    format: str
    format_version: int
    tether_version: str
    created_at: datetime
    database: DatabaseEntry
    #: ``sha256:<hex>`` of the platform CA certificate (public), to tell which CA it is.
    ca_fingerprint: str
    members: tuple[MemberEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.members)


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    size: int  # bytes of the archive
    manifest: BackupManifest


@dataclass(frozen=True, slots=True)
class RestoreResult:
    data_dir: Path
    manifest: BackupManifest
    #: Member paths that replaced a file already in the target (only with ``force``).
    replaced: tuple[str, ...]


def known_schema_revisions() -> frozenset[str]:
    """Every Alembic revision this tether's migrations know."""
    script = ScriptDirectory(str(Path(migrations.__file__).parent))
    return frozenset(s.revision for s in script.walk_revisions())


def _file_mode(path: str) -> int:
    """0644 for certificates (as the cloud writes them), 0600 for everything else."""
    public = path.startswith(f"{PKI_MEMBER_DIR}/") and path.endswith(".pem")
    return 0o644 if public else 0o600


def _ca_pair(cert_pem: bytes, key_pem: bytes) -> str:
    """The fingerprint of the CA certificate, once its key is shown to be the certificate's;
    ValueError (never quoting the key) if either is unreadable or they do not match."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ValueError("the CA key is not the CA certificate's")
    return certificate_fingerprint(cert)


def _is_secret(path: str) -> bool:
    return path.endswith(".key") or path in (ADMIN_TOKEN_MEMBER, ADMIN_PASSWORD_MEMBER)


# --- backup ---------------------------------------------------------------------------------


def _sqlite_path(settings: CloudSettings) -> Path | None:
    """The SQLite file of *settings*' database, or None for PostgreSQL."""
    try:
        url = make_url(settings.database)
    except ArgumentError as exc:
        raise SourceUnusable(f"database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return None
    if backend != "sqlite":
        raise SourceUnusable(f"database URL: unsupported backend {backend!r}")
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise SourceUnusable("an in-memory SQLite database cannot be backed up")
    return Path(database).absolute()


def _schema_revisions(conn: sqlite3.Connection, origin: Path) -> tuple[str, ...]:
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error as exc:
        raise SourceUnusable(f"{origin} is not a tether database: {exc}") from None
    revisions = tuple(sorted(str(row[0]) for row in rows))
    if not revisions:
        raise SourceUnusable(f"{origin} has no schema revision: was the cloud ever started?")
    return revisions


def _snapshot_sqlite(
    source: Path, target: Path, progress: ProgressCallback | None
) -> tuple[str, ...]:
    """Copy *source* into *target* as of one moment; return its schema revisions."""
    if not source.is_file():
        raise SourceUnusable(f"no database at {source}: was the cloud ever started here?")
    step = "database snapshot"

    def copied(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(step, total - remaining, total)

    try:
        # Read-write, though nothing is written: a read-only connection leaves the -wal and
        # -shm files it had to create behind, where the last read-write one removes them.
        src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise SourceUnusable(f"cannot open {source}: {exc}") from None
    try:
        try:
            src.execute("BEGIN")  # one read transaction: the snapshot's moment
            revisions = _schema_revisions(src, source)
            dst = sqlite3.connect(target, isolation_level=None)
            try:
                src.backup(dst, pages=BACKUP_STEP_PAGES, progress=copied)
                # The copy stands alone: no log beside it.
                dst.execute("PRAGMA journal_mode = DELETE")
                check = dst.execute("PRAGMA quick_check").fetchall()
            finally:
                dst.close()
            src.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise SourceUnusable(f"copying {source}: {exc}") from None
    finally:
        src.close()
    if check != [("ok",)]:
        raise SourceUnusable(f"the copy of {source} fails SQLite's quick check: {check[:3]}")
    return revisions


def _read_small(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SMALL_FILE_BYTES + 1)
    except OSError as exc:
        raise SourceUnusable(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise SourceUnusable(f"{path} is larger than {MAX_SMALL_FILE_BYTES} bytes")
    return data


def _small_files(settings: CloudSettings) -> dict[str, bytes]:
    """The PKI directory's files (not its lock files) and the admin credentials, read now."""
    pki = settings.pki_dir
    for name in (CA_CERT_FILE, CA_KEY_FILE):
        if not (pki / name).is_file():
            raise SourceUnusable(
                f"no {pki / name}: not a cloud data directory, or the cloud never started here"
            )
    found: dict[str, bytes] = {}
    for path in sorted(pki.iterdir()):
        member = f"{PKI_MEMBER_DIR}/{path.name}"
        if path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue  # lock files, and nothing the CA wrote
        if not _MEMBER_PATH.fullmatch(member) or path.name.endswith(".tmp"):
            continue
        found[member] = _read_small(path)
    for name in (ADMIN_TOKEN_MEMBER, ADMIN_PASSWORD_MEMBER):
        path = settings.data_dir / name
        if path.is_file():
            found[name] = _read_small(path)
    return found


def _hash_file(
    path: Path, step: str, done: int, total: int, progress: ProgressCallback | None
) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(step, done, total)
    return digest.hexdigest()


class _Counting:
    """A reader that tells *progress* how many bytes of the archive's members went by."""

    def __init__(
        self, inner: IO[bytes], step: str, start: int, total: int, progress: ProgressCallback
    ) -> None:
        self._inner = inner
        self._step = step
        self.done = start
        self._total = total
        self._progress = progress

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        self.done += len(data)
        self._progress(self._step, self.done, self._total)
        return data


def _tar_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_backup(
    settings: CloudSettings,
    output: Path,
    *,
    progress: ProgressCallback | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Write an archive of *settings*' data directory to *output* (0600, atomically).

    The cloud may be running. For a PostgreSQL deployment the database is not in the archive
    (back it up with ``pg_dump``); the PKI and the credentials are.
    """
    created = now or datetime.now(UTC)
    output = output.absolute()
    if output.is_dir():
        raise BackupError(f"{output} is a directory: give the archive's file name")
    if not output.parent.is_dir():
        raise BackupError(f"no directory {output.parent} to write {output.name} in")
    if settings.data_dir.absolute() in output.parents:
        raise BackupError(f"write the archive outside the data directory {settings.data_dir}")
    database = _sqlite_path(settings)
    small = _small_files(settings)
    try:
        fingerprint = _ca_pair(
            small[f"{PKI_MEMBER_DIR}/{CA_CERT_FILE}"], small[f"{PKI_MEMBER_DIR}/{CA_KEY_FILE}"]
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SourceUnusable(
            f"{settings.pki_dir}: {CA_KEY_FILE} and {CA_CERT_FILE} are unreadable or not one pair"
        ) from None
    staging = Path(tempfile.mkdtemp(prefix=".tether-backup-", dir=output.parent))  # 0700
    try:
        members: list[MemberEntry] = []
        revisions: tuple[str, ...] = ()
        snapshot = staging / DATABASE_MEMBER
        if database is not None:
            revisions = _snapshot_sqlite(database, snapshot, progress)
            size = snapshot.stat().st_size
            digest = _hash_file(snapshot, "checksums", 0, size, progress)
            members.append(MemberEntry(DATABASE_MEMBER, size, digest, secret=False))
        for path, data in small.items():
            members.append(
                MemberEntry(path, len(data), hashlib.sha256(data).hexdigest(), _is_secret(path))
            )
        manifest = BackupManifest(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            tether_version=__version__,
            created_at=created,
            database=DatabaseEntry(
                engine="sqlite" if database is not None else "postgresql",
                included=database is not None,
                schema_revisions=revisions,
            ),
            ca_fingerprint=fingerprint,
            members=tuple(members),
        )
        _write_archive(output, manifest, snapshot, small, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(path=output, size=output.stat().st_size, manifest=manifest)


def _write_archive(
    output: Path,
    manifest: BackupManifest,
    snapshot: Path,
    small: dict[str, bytes],
    progress: ProgressCallback | None,
) -> None:
    body = msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
    mtime = manifest.created_at.timestamp()
    total = manifest.total_size
    done = 0
    fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    temp = Path(temp_name)  # mkstemp: 0600 from the first byte
    try:
        with os.fdopen(fd, "wb") as raw:
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=int(mtime)) as gz,
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(_tar_info(MANIFEST_MEMBER, len(body), mtime), io.BytesIO(body))
                for entry in manifest.members:
                    info = _tar_info(entry.path, entry.size, mtime)
                    if entry.path == DATABASE_MEMBER:
                        with snapshot.open("rb") as fh:
                            source: SupportsRead[bytes] = fh
                            if progress is not None:
                                source = _Counting(fh, "archive", done, total, progress)
                            tar.addfile(info, source)
                    else:
                        tar.addfile(info, io.BytesIO(small[entry.path]))
                    done += entry.size
                    if progress is not None:
                        progress("archive", done, total)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_directory(output.parent)


# --- reading an archive ---------------------------------------------------------------------


def _decode_manifest(data: bytes) -> BackupManifest:
    try:
        manifest = msgspec.json.decode(data, type=BackupManifest)
    except msgspec.ValidationError as exc:
        # Checked before the shape: a newer format may have fields this one does not know.
        newer = _newer_format(data)
        if newer is not None:
            raise newer from None
        raise ArchiveInvalid(MANIFEST_MEMBER, f"not a tether backup manifest: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ArchiveInvalid(MANIFEST_MEMBER, f"not valid JSON: {exc}") from None
    if manifest.format != FORMAT:
        raise ArchiveInvalid(MANIFEST_MEMBER, f"format {manifest.format!r} is not {FORMAT!r}")
    if manifest.format_version > FORMAT_VERSION:
        raise SchemaTooNew(_too_new(manifest.format_version, manifest.tether_version))
    seen: set[str] = set()
    for entry in manifest.members:
        if not _MEMBER_PATH.fullmatch(entry.path) or entry.path in seen:
            raise ArchiveInvalid(MANIFEST_MEMBER, f"lists an unexpected member {entry.path!r}")
        if entry.size < 0 or not _SHA256.fullmatch(entry.sha256):
            raise ArchiveInvalid(MANIFEST_MEMBER, f"bad size or SHA-256 for {entry.path}")
        seen.add(entry.path)
    for required in _REQUIRED_MEMBERS:
        if required not in seen:
            raise ArchiveInvalid(MANIFEST_MEMBER, f"lists no {required}")
    db = manifest.database
    if db.included != (DATABASE_MEMBER in seen) or db.engine not in ("sqlite", "postgresql"):
        raise ArchiveInvalid(MANIFEST_MEMBER, "its database entry does not match its members")
    if db.included and not db.schema_revisions:
        raise ArchiveInvalid(MANIFEST_MEMBER, "the database has no schema revision")
    return manifest


def _newer_format(data: bytes) -> SchemaTooNew | None:
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    version = raw.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        return SchemaTooNew(_too_new(version, str(raw.get("tether_version", "?"))))
    return None


def _too_new(format_version: int, tether_version: str) -> str:
    return (
        f"the archive is in backup format {format_version}, made by tether {tether_version}; "
        f"this tether ({__version__}) reads format {FORMAT_VERSION}: restore it with tether "
        f"{tether_version} or newer"
    )


def _check_revisions(revisions: tuple[str, ...], made_by: str) -> None:
    known = known_schema_revisions()
    unknown = sorted(set(revisions) - known)
    if unknown:
        raise SchemaTooNew(
            f"the archive's database is at schema revision {', '.join(unknown)}, which this "
            f"tether ({__version__}) does not know: it was made by tether {made_by}; restore it "
            f"with tether {made_by} or newer (a database cannot be migrated backwards)"
        )


#: Called with each member's path, then its data chunk by chunk; None: check only.
Sink = Callable[[str, bytes], None]


def _read_archive(
    archive: Path,
    step: str,
    progress: ProgressCallback | None,
    sink: Sink | None = None,
    *,
    expected: BackupManifest | None = None,
) -> BackupManifest:
    """Read *archive* through, checking each member against the manifest; give each member's
    data to *sink*. Raises :class:`ArchiveInvalid` naming the member at fault."""
    try:
        fh = archive.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {archive}: {exc.strerror}") from None
    current: str | None = None  # the member being read
    last: str | None = None  # the last member read whole
    try:
        with (
            fh,
            gzip.GzipFile(fileobj=fh, mode="rb") as gz,
            tarfile.open(fileobj=gz, mode="r|") as tar,
        ):
            first = tar.next()
            if first is None or first.name != MANIFEST_MEMBER or not first.isreg():
                raise ArchiveInvalid(None, f"not a tether backup ({MANIFEST_MEMBER} not first)")
            current = MANIFEST_MEMBER
            if first.size > MAX_MANIFEST_BYTES:
                raise ArchiveInvalid(MANIFEST_MEMBER, "too large to be a backup manifest")
            try:
                manifest = _decode_manifest(_member_bytes(tar, first))
            except SchemaTooNew:
                # Said once gzip's CRC shows the manifest undamaged (a flipped byte must not
                # pass for a newer tether's archive); this tether cannot read its members.
                _drain(gz)
                raise
            if expected is not None and manifest != expected:
                raise ArchiveInvalid(MANIFEST_MEMBER, "changed while it was being restored")
            last, current = MANIFEST_MEMBER, None
            entries = {entry.path: entry for entry in manifest.members}
            total = manifest.total_size
            done = 0
            while (info := tar.next()) is not None:
                current = info.name
                entry = entries.pop(info.name, None)
                if entry is None:
                    raise ArchiveInvalid(info.name, "not listed in the manifest (or repeated)")
                if not info.isreg():
                    raise ArchiveInvalid(info.name, "not a regular file")
                if info.size != entry.size:
                    raise ArchiveInvalid(
                        info.name, f"{info.size} bytes where the manifest says {entry.size}"
                    )
                digest = hashlib.sha256()
                if sink is not None:
                    sink(info.name, b"")  # the file exists even when it is empty
                reader = _member_reader(tar, info)
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    if sink is not None:
                        sink(info.name, chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(step, done, total)
                if digest.hexdigest() != entry.sha256:
                    raise ArchiveInvalid(
                        info.name, "its SHA-256 differs from the manifest's: the archive is damaged"
                    )
                last, current = info.name, None
            if entries:
                missing = ", ".join(sorted(entries))
                raise ArchiveInvalid(None, f"it ends before {missing} (truncated?)")
            _drain(gz)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        # Damaged compressed data arrives as zlib.error, EOFError or gzip.BadGzipFile (an
        # OSError), a damaged tar header as tarfile.ReadError.
        if current is not None:
            raise ArchiveInvalid(current, f"unreadable: {exc}") from None
        where = f"after member {last}" if last else "at its start"
        raise ArchiveInvalid(None, f"unreadable {where}: {exc}") from None
    # Checked once the whole archive is known to be sound, for the same reason.
    _check_revisions(manifest.database.schema_revisions, manifest.tether_version)
    return manifest


def _drain(gz: gzip.GzipFile) -> None:
    """Read *gz* to its end, where gzip checks the CRC of all it held."""
    while gz.read(CHUNK):
        pass


def _member_reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    reader = tar.extractfile(info)
    if reader is None:  # pragma: no cover (a regular file always has one)
        raise ArchiveInvalid(info.name, "unreadable")
    return reader


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return _member_reader(tar, info).read()


def verify_archive(archive: Path, *, progress: ProgressCallback | None = None) -> BackupManifest:
    """Check *archive* whole (manifest, schema revisions, every member's SHA-256); write
    nothing. Return its manifest."""
    return _read_archive(archive, "checking", progress)


# --- restore --------------------------------------------------------------------------------


def _prepare_target(data_dir: Path, force: bool) -> tuple[str, ...]:
    """Make *data_dir* (0700) or check it may be restored into; return what it holds."""
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir():
        held = tuple(sorted(p.name for p in data_dir.iterdir()))
        if held and not force:
            shown = ", ".join(held[:5]) + (", …" if len(held) > 5 else "")
            raise TargetNotEmpty(
                f"{data_dir} is not empty ({shown}): restore into a new or empty directory, "
                "or stop the cloud using it and add --force to replace its state"
            )
        os.chmod(data_dir, 0o700)
        return held
    data_dir.mkdir(mode=0o700, parents=True)
    os.chmod(data_dir, 0o700)  # mkdir's mode is filtered by the umask
    return ()


class _StagingWriter:
    """Writes members under a staging directory, each file created 0600 (or 0644)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: tuple[str, IO[bytes]] | None = None

    def __call__(self, name: str, chunk: bytes) -> None:
        try:
            if self._open is None or self._open[0] != name:
                self.close()
                path = self.root / name
                path.parent.mkdir(mode=0o700, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(path, flags, 0o600)
                os.fchmod(fd, _file_mode(name))
                self._open = (name, os.fdopen(fd, "wb"))
            self._open[1].write(chunk)
        except OSError as exc:
            raise BackupError(f"cannot write {self.root / name}: {exc.strerror}") from None

    def close(self) -> None:
        if self._open is None:
            return
        name, fh = self._open
        self._open = None
        try:
            with fh:
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise BackupError(f"cannot write {self.root / name}: {exc.strerror}") from None


def _check_restored_database(path: Path, manifest: BackupManifest) -> None:
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
        try:
            check = conn.execute("PRAGMA quick_check").fetchall()
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ArchiveInvalid(DATABASE_MEMBER, f"not a usable SQLite database: {exc}") from None
    if check != [("ok",)]:
        raise ArchiveInvalid(DATABASE_MEMBER, f"fails SQLite's quick check: {check[:3]}")
    revisions = tuple(sorted(str(row[0]) for row in rows))
    _check_revisions(revisions, manifest.tether_version)
    if revisions != tuple(sorted(manifest.database.schema_revisions)):
        raise ArchiveInvalid(
            DATABASE_MEMBER,
            f"at schema revisions {', '.join(revisions)}, the manifest says "
            f"{', '.join(manifest.database.schema_revisions)}",
        )


def _check_restored_ca(pki: Path, manifest: BackupManifest) -> None:
    try:
        fingerprint = _ca_pair((pki / CA_CERT_FILE).read_bytes(), (pki / CA_KEY_FILE).read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ArchiveInvalid(
            f"{PKI_MEMBER_DIR}/{CA_KEY_FILE}", "not a key of the archive's CA certificate"
        ) from None
    if fingerprint != manifest.ca_fingerprint:
        raise ArchiveInvalid(
            f"{PKI_MEMBER_DIR}/{CA_CERT_FILE}", "not the CA certificate the manifest names"
        )


def restore_backup(
    archive: Path,
    data_dir: Path,
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Restore *archive* into *data_dir* (new or empty, or anything with *force*).

    Nothing is written before the whole archive has been checked. With *force*, the members
    replace the files of the same names and the old database's write-ahead log is removed;
    nothing else in the directory is touched. Stop any cloud using *data_dir* first.
    """
    manifest = verify_archive(archive, progress=progress)
    created = not data_dir.exists()
    _prepare_target(data_dir, force)
    staging = Path(tempfile.mkdtemp(prefix=".tether-restore-", dir=data_dir))  # 0700
    try:
        writer = _StagingWriter(staging)
        try:
            _read_archive(archive, "restoring", progress, writer, expected=manifest)
        finally:
            writer.close()
        if manifest.database.included:
            _check_restored_database(staging / DATABASE_MEMBER, manifest)
        _check_restored_ca(staging / PKI_MEMBER_DIR, manifest)
        replaced = _install(staging, data_dir, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # made by this restore, and empty again
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(data_dir=data_dir, manifest=manifest, replaced=replaced)


def _install(staging: Path, data_dir: Path, manifest: BackupManifest) -> tuple[str, ...]:
    """Move the checked members from *staging* into *data_dir*."""
    pki = data_dir / PKI_MEMBER_DIR
    pki.mkdir(mode=0o700, exist_ok=True)
    os.chmod(pki, 0o700)
    replaced: list[str] = []
    for entry in manifest.members:
        target = data_dir / entry.path
        if target.is_symlink() or target.is_dir():
            raise BackupError(f"{target} is a link or a directory: remove it first")
        if target.exists():
            replaced.append(entry.path)
        if entry.path == DATABASE_MEMBER:
            for suffix in SQLITE_SIDE_FILES:  # an old log would be replayed onto this database
                with contextlib.suppress(FileNotFoundError):
                    (data_dir / f"{DATABASE_MEMBER}{suffix}").unlink()
        os.replace(staging / entry.path, target)
    _fsync_directory(pki)
    _fsync_directory(data_dir)
    return tuple(replaced)

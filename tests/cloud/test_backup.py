"""Backup and restore of a cloud's data directory: a consistent online snapshot of the SQLite
database, the PKI and credentials with their SHA-256 in a manifest, and a restore that checks
everything before it writes anything.

The data directories are real: made by the cloud's own first-start code (CA, server
credentials, migrated database, admin token and password). Running clouds and gateways are in
tests/e2e/test_backup_restore.py.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether.cli import app as cli
from tether.cloud import backup
from tether.cloud.accounts import ADMIN_PASSWORD_FILE
from tether.cloud.app import ADMIN_TOKEN_FILE, prepare
from tether.cloud.backup import (
    ArchiveInvalid,
    BackupError,
    SchemaTooNew,
    SourceUnusable,
    TargetNotEmpty,
    create_backup,
    restore_backup,
    verify_archive,
)
from tether.cloud.settings import CloudSettings, load_settings
from tether.cloud.store import Store
from tether.pki.keys import generate_private_key, private_key_pem

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_database_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)


def settings_for(data_dir: Path, **overrides: Any) -> CloudSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite+aiosqlite:///{(data_dir / 'tether.db').resolve()}",
    }
    values.update(overrides)
    return load_settings(None, **values)


async def _first_start(settings: CloudSettings) -> None:
    await prepare(settings)
    store = await Store.open(settings.database)
    try:
        await store.create_gateway(gateway_id="gw-before", name="before", now=NOW)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cloud data directory as the cloud leaves it after a first start, with one gateway."""
    data_dir = tmp_path_factory.mktemp("template") / "cloud"
    asyncio.run(_first_start(settings_for(data_dir)))
    return data_dir


@pytest.fixture
def source(template: Path, tmp_path: Path) -> CloudSettings:
    """A copy of the template for one test (modes kept)."""
    shutil.copytree(template, tmp_path / "cloud")
    return settings_for(tmp_path / "cloud")


def members_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {
            info.name: tar.extractfile(info).read()  # type: ignore[union-attr]
            for info in tar.getmembers()
        }


def rewrite(
    archive: Path,
    out: Path,
    *,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    replace: dict[str, bytes] | None = None,
    append: tuple[tuple[str, bytes], ...] = (),
) -> Path:
    """A copy of *archive* with its manifest edited, members replaced, others appended."""
    members = members_of(archive)
    if manifest is not None:
        document = json.loads(members["manifest.json"])
        manifest(document)
        members["manifest.json"] = json.dumps(document).encode()
    members.update(replace or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (*members.items(), *append):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(gzip.compress(buffer.getvalue()))
    return out


def flip_in_member(archive: Path, out: Path, member: str) -> Path:
    """A copy of *archive* with one byte of *member*'s data flipped (validly recompressed)."""
    raw = bytearray(gzip.decompress(archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r:") as tar:
        info = tar.getmember(member)
    raw[info.offset_data + info.size // 2] ^= 0x01
    out.write_bytes(gzip.compress(bytes(raw)))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_member_names_are_the_clouds_file_names() -> None:
    assert backup.ADMIN_TOKEN_MEMBER == ADMIN_TOKEN_FILE
    assert backup.ADMIN_PASSWORD_MEMBER == ADMIN_PASSWORD_FILE


async def test_backup_holds_the_database_pki_and_credentials_with_their_checksums(
    source: CloudSettings, tmp_path: Path
) -> None:
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    seen: dict[str, list[tuple[int, int]]] = {}
    result = create_backup(
        source,
        out_dir / "cloud.tar.gz",
        now=NOW,
        progress=lambda step, done, total: seen.setdefault(step, []).append((done, total)),
    )
    assert list(seen) == ["database snapshot", "checksums", "archive"]
    for step, reports in seen.items():
        done, total = reports[-1]
        assert done == total > 0, step

    assert result.path == out_dir / "cloud.tar.gz"
    assert mode(result.path) == 0o600
    assert sorted(os.listdir(out_dir)) == ["cloud.tar.gz"]  # no temporary files left
    members = members_of(result.path)
    assert next(iter(members)) == "manifest.json"  # first, so a restore reads it first
    assert set(members) == {
        "manifest.json",
        "tether.db",
        "pki/ca.pem",
        "pki/ca.key",
        "pki/server.pem",
        "pki/server.key",
        "admin.token",
        "admin.password",
    }
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "tether-cloud-backup"
    assert manifest["tether_version"]
    assert manifest["created_at"] == "2030-01-02T03:04:05Z"
    with sqlite3.connect(source.data_dir / "tether.db") as conn:
        revisions = sorted(r for (r,) in conn.execute("SELECT version_num FROM alembic_version"))
    assert manifest["database"] == {
        "engine": "sqlite",
        "included": True,
        "schema_revisions": revisions,
    }
    listed = {entry["path"]: entry for entry in manifest["members"]}
    assert set(listed) == set(members) - {"manifest.json"}
    for path, data in members.items():
        if path != "manifest.json":
            assert listed[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
            assert listed[path]["size"] == len(data)
    for path in ("pki/ca.pem", "pki/ca.key", "pki/server.pem", "pki/server.key", "admin.token"):
        assert members[path] == (source.data_dir / path).read_bytes(), path
    assert {p for p, e in listed.items() if e["secret"]} == {
        "pki/ca.key",
        "pki/server.key",
        "admin.token",
        "admin.password",
    }
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(members["tether.db"])
    with sqlite3.connect(snapshot) as conn:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT name FROM gateways").fetchall() == [("before",)]


def test_the_snapshot_is_one_moment_while_another_connection_writes(
    source: CloudSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows committed while the copy runs are not in it, and the copy never starts over."""
    database = source.data_dir / "tether.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE probe (pair INTEGER, half INTEGER, filler BLOB)")
        for pair in range(150):
            conn.executemany(
                "INSERT INTO probe VALUES (?, ?, randomblob(1500))", [(pair, 0), (pair, 1)]
            )
    conn.close()
    monkeypatch.setattr(backup, "BACKUP_STEP_PAGES", 4)  # many steps, so writes land between
    go, wrote = threading.Event(), threading.Event()

    def writer() -> None:
        go.wait(30)
        with sqlite3.connect(database, timeout=30) as conn:
            for pair in range(1000, 1020):
                conn.executemany(
                    "INSERT INTO probe VALUES (?, ?, randomblob(1500))", [(pair, 0), (pair, 1)]
                )
                conn.commit()
        conn.close()
        wrote.set()

    thread = threading.Thread(target=writer)
    thread.start()
    steps: list[tuple[int, int]] = []

    def progress(step: str, done: int, total: int) -> None:
        if step == "database snapshot":
            steps.append((done, total))
            if len(steps) == 1:
                go.set()
                assert wrote.wait(30), "the writer did not commit"

    try:
        result = create_backup(source, tmp_path / "b.tar.gz", progress=progress)
    finally:
        go.set()
        thread.join(30)
    assert wrote.is_set()
    assert len(steps) > 2
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)  # never restarted
    assert len({total for _, total in steps}) == 1
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(members_of(result.path)["tether.db"])
    with sqlite3.connect(snapshot) as conn:
        assert conn.execute("SELECT count(*), max(pair) FROM probe").fetchone() == (300, 149)
    with sqlite3.connect(database) as conn:  # the writes did happen, after the moment
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (340,)


async def test_restore_writes_every_file_with_private_modes(
    source: CloudSettings, tmp_path: Path
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    target = tmp_path / "restored" / "cloud"
    result = restore_backup(archive, target)

    assert result.replaced == ()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "admin.password",
        "admin.token",
        "pki",
        "pki/ca.key",
        "pki/ca.pem",
        "pki/server.key",
        "pki/server.pem",
        "tether.db",
    ]  # and no staging directory left behind
    assert mode(target) == 0o700
    assert mode(target / "pki") == 0o700
    for private in ("tether.db", "pki/ca.key", "pki/server.key", "admin.token", "admin.password"):
        assert mode(target / private) == 0o600, private
    for public in ("pki/ca.pem", "pki/server.pem"):
        assert mode(target / public) == 0o644, public
    for path in ("pki/ca.pem", "pki/ca.key", "pki/server.pem", "pki/server.key", "admin.token"):
        assert sha256(target / path) == sha256(source.data_dir / path), path
    store = await Store.open(settings_for(target).database)
    try:
        gateway = await store.get_gateway("gw-before")
    finally:
        await store.close()
    assert gateway is not None
    assert gateway.name == "before"


async def test_a_non_empty_target_is_refused_unless_forced(
    source: CloudSettings, tmp_path: Path
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "admin.token").write_text("old token\n")
    (target / "tether.db-wal").write_bytes(b"a log of another database")

    with pytest.raises(TargetNotEmpty, match="not empty") as refused:
        restore_backup(archive, target)
    assert "--force" in str(refused.value)
    assert sorted(os.listdir(target)) == ["admin.token", "notes.txt", "tether.db-wal"]
    assert (target / "admin.token").read_text() == "old token\n"

    result = restore_backup(archive, target, force=True)
    assert result.replaced == ("admin.token",)
    assert (target / "notes.txt").read_text() == "keep me"  # nothing else touched
    assert not (target / "tether.db-wal").exists()  # never replayed onto the restored database
    assert sha256(target / "admin.token") == sha256(source.data_dir / "admin.token")
    assert mode(target) == 0o700


@pytest.mark.parametrize("member", ["pki/ca.key", "tether.db", "pki/server.pem"])
async def test_a_damaged_member_is_named_and_nothing_is_written(
    source: CloudSettings, tmp_path: Path, member: str
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    damaged = flip_in_member(archive, tmp_path / "damaged.tar.gz", member)
    target = tmp_path / "restored"

    with pytest.raises(ArchiveInvalid) as refused:
        restore_backup(damaged, target)
    assert refused.value.member == member
    assert f"member {member}: " in str(refused.value)
    assert "SHA-256" in str(refused.value)
    assert not target.exists()


async def test_a_flipped_byte_in_the_compressed_file_is_refused(
    source: CloudSettings, tmp_path: Path
) -> None:
    """Wherever the flip changes what the archive holds. (Some bits of a deflate stream mean
    nothing, such as the padding after its last block: flipped, the content is the same.)"""
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    data = archive.read_bytes()
    content = gzip.decompress(data)
    target = tmp_path / "restored"
    damaged = tmp_path / "damaged.tar.gz"
    refused = 0
    for at in range(10, len(data), 23):  # past gzip's 10-byte header, through its trailer
        flipped = data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]
        damaged.write_bytes(flipped)
        try:
            changed = gzip.decompress(flipped) != content
        except (OSError, EOFError, zlib.error):
            changed = True
        if not changed:
            assert verify_archive(damaged).members
            continue
        refused += 1
        with pytest.raises(ArchiveInvalid):
            verify_archive(damaged)
        if refused % 20 == 1:
            with pytest.raises(ArchiveInvalid):
                restore_backup(damaged, target)
            assert not target.exists(), at
    assert refused > 100


async def test_an_archive_from_a_newer_schema_is_refused(
    source: CloudSettings, tmp_path: Path
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path

    def newer(document: dict[str, Any]) -> None:
        document["database"]["schema_revisions"] = ["r0004", "r9999"]
        document["tether_version"] = "9.0.0"

    target = tmp_path / "restored"
    with pytest.raises(SchemaTooNew) as refused:
        restore_backup(rewrite(archive, tmp_path / "newer.tar.gz", manifest=newer), target)
    message = str(refused.value)
    assert "r9999" in message
    assert "does not know" in message
    assert "9.0.0 or newer" in message
    assert not target.exists()

    def newer_format(document: dict[str, Any]) -> None:
        document["format_version"] = 2
        document["something_new"] = True

    with pytest.raises(SchemaTooNew, match="format 2"):
        restore_backup(rewrite(archive, tmp_path / "f2.tar.gz", manifest=newer_format), target)
    assert not target.exists()


async def test_a_database_at_another_revision_than_its_manifest_is_refused(
    source: CloudSettings, tmp_path: Path
) -> None:
    """The manifest's revisions are checked first; the database's own are checked too."""
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    members = members_of(archive)
    bad_db = tmp_path / "future.db"
    bad_db.write_bytes(members["tether.db"])
    with sqlite3.connect(bad_db) as conn:
        conn.execute(
            "UPDATE alembic_version SET version_num = 'r9999' WHERE version_num != 'r0004'"
        )
    conn.close()
    data = bad_db.read_bytes()

    def swap(document: dict[str, Any]) -> None:
        [entry] = [e for e in document["members"] if e["path"] == "tether.db"]
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())

    forged = rewrite(
        archive, tmp_path / "forged.tar.gz", manifest=swap, replace={"tether.db": data}
    )
    target = tmp_path / "restored"
    with pytest.raises(SchemaTooNew, match="r9999"):
        restore_backup(forged, target)
    assert not target.exists()


@pytest.mark.parametrize(
    "name",
    ["../escape", "/etc/evil", "pki/extra.key", "admin.token"],
    ids=["dotdot", "absolute", "unlisted", "repeated"],
)
async def test_members_outside_the_manifest_are_refused(
    source: CloudSettings, tmp_path: Path, name: str
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    target = tmp_path / "restored"
    odd = rewrite(archive, tmp_path / "x.tar.gz", append=((name, b"x"),))
    with pytest.raises(ArchiveInvalid, match="not listed in the manifest") as refused:
        restore_backup(odd, target)
    assert refused.value.member == name
    assert not target.exists()
    assert not (tmp_path / "escape").exists()


def test_something_else_than_a_backup_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    plain.write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(ArchiveInvalid, match="not a tether backup"):
        verify_archive(plain)
    text = tmp_path / "text.tar.gz"
    text.write_text("not even gzip")
    with pytest.raises(ArchiveInvalid, match="unreadable at its start"):
        verify_archive(text)
    with pytest.raises(BackupError, match="cannot read"):
        verify_archive(tmp_path / "missing.tar.gz")


async def test_a_truncated_archive_is_refused(source: CloudSettings, tmp_path: Path) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    raw = gzip.decompress(archive.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        cut = tar.getmember("pki/server.pem").offset  # before that member's header
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(gzip.compress(raw[:cut]))
    with pytest.raises(ArchiveInvalid, match=r"ends before .*pki/server\.pem"):
        verify_archive(truncated)


async def test_a_postgresql_deployment_is_backed_up_without_its_database(
    source: CloudSettings, tmp_path: Path
) -> None:
    settings = settings_for(
        source.data_dir, database_url="postgresql+asyncpg://tether@db.invalid/tether"
    )
    result = create_backup(settings, tmp_path / "pg.tar.gz")  # connects to no database
    assert result.manifest.database.engine == "postgresql"
    assert not result.manifest.database.included
    assert "tether.db" not in members_of(result.path)
    target = tmp_path / "restored"
    restore_backup(result.path, target)
    assert not (target / "tether.db").exists()
    assert sha256(target / "pki/ca.key") == sha256(source.data_dir / "pki/ca.key")


def test_a_directory_without_a_ca_is_not_backed_up(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceUnusable, match=r"ca\.pem"):
        create_backup(settings_for(empty), out / "b.tar.gz")
    assert os.listdir(out) == []


def other_key() -> bytes:
    return private_key_pem(generate_private_key())


def test_a_ca_key_that_is_not_the_certificates_is_not_backed_up(
    source: CloudSettings, tmp_path: Path
) -> None:
    key = other_key()
    (source.pki_dir / "ca.key").write_bytes(key)
    with pytest.raises(SourceUnusable, match="not one pair") as refused:
        create_backup(source, tmp_path / "b.tar.gz")
    assert key.decode() not in str(refused.value)
    assert not (tmp_path / "b.tar.gz").exists()


async def test_an_archive_whose_ca_key_is_not_its_certificates_is_refused(
    source: CloudSettings, tmp_path: Path
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    key = other_key()

    def swap(document: dict[str, Any]) -> None:
        [entry] = [e for e in document["members"] if e["path"] == "pki/ca.key"]
        entry.update(size=len(key), sha256=hashlib.sha256(key).hexdigest())

    forged = rewrite(archive, tmp_path / "f.tar.gz", manifest=swap, replace={"pki/ca.key": key})
    target = tmp_path / "restored"
    with pytest.raises(ArchiveInvalid) as refused:
        restore_backup(forged, target)
    assert refused.value.member == "pki/ca.key"
    assert not target.exists()


def test_a_directory_whose_cloud_never_started_has_no_database(
    source: CloudSettings, tmp_path: Path
) -> None:
    (source.data_dir / "tether.db").unlink()
    with pytest.raises(SourceUnusable, match="no database"):
        create_backup(source, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


async def test_an_archive_is_not_written_into_the_data_directory(
    source: CloudSettings,
) -> None:
    with pytest.raises(BackupError, match="outside the data directory"):
        create_backup(source, source.data_dir / "b.tar.gz")


# --- the commands ---------------------------------------------------------------------------


def key_material(data_dir: Path) -> list[str]:
    """The CA key's PEM, and each of its lines long enough to mean something."""
    pem = (data_dir / "pki" / "ca.key").read_text()
    return [pem, *(line for line in pem.splitlines() if len(line) > 16)]


async def test_the_backup_command_says_what_it_wrote_but_never_a_key(
    source: CloudSettings, tmp_path: Path
) -> None:
    out = tmp_path / "cloud.tar.gz"
    result = CliRunner().invoke(
        cli,
        ["cloud", "backup", "--data-dir", str(source.data_dir), "-o", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"wrote {out}" in text
    assert "pki/ca.key" in text
    assert "schema revision r0" in text
    assert "private key" in text
    assert "secret" in text.lower()
    for secret in key_material(source.data_dir):
        assert secret not in text
    assert (source.data_dir / "admin.token").read_text().strip() not in text

    restored = tmp_path / "restored"
    result = CliRunner().invoke(
        cli, ["cloud", "restore", str(out), "--data-dir", str(restored)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "every SHA-256 matches" in result.output
    assert f"tether cloud serve --data-dir {restored}" in result.output
    for secret in key_material(source.data_dir):
        assert secret not in result.output

    again = CliRunner().invoke(cli, ["cloud", "restore", str(out), "--data-dir", str(restored)])
    assert again.exit_code == 1
    assert "not empty" in again.output


def test_the_backup_command_reads_the_data_directory_from_the_settings_file(
    source: CloudSettings, tmp_path: Path
) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text(f'data_dir = "{source.data_dir}"\nhostname = "tether.example.com"\n')
    out = tmp_path / "from-config.tar.gz"
    result = CliRunner().invoke(
        cli, ["cloud", "backup", "--config", str(config), "-o", str(out)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert verify_archive(out).database.included
    missing = CliRunner().invoke(
        cli, ["cloud", "backup", "--data-dir", str(tmp_path / "nowhere"), "-o", str(out)]
    )
    assert missing.exit_code == 2
    assert "no data directory" in missing.output


async def test_the_backup_command_says_in_one_line_to_use_pg_dump(
    source: CloudSettings, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "cloud",
            "backup",
            "--data-dir",
            str(source.data_dir),
            "--database-url",
            "postgresql+asyncpg://tether:hunter2@db.invalid/tether",
            "-o",
            str(tmp_path / "pg.tar.gz"),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "pg_dump" in line]
    assert "PostgreSQL" in line
    assert "not in this archive" in line
    assert "hunter2" not in result.output  # the database URL is never shown


def test_the_restore_command_names_the_damaged_member(
    source: CloudSettings, tmp_path: Path
) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    damaged = flip_in_member(archive, tmp_path / "damaged.tar.gz", "pki/ca.key")
    result = CliRunner().invoke(
        cli, ["cloud", "restore", str(damaged), "--data-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "member pki/ca.key" in result.output
    assert not (tmp_path / "r").exists()

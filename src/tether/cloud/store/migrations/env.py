"""Alembic environment: migrate on the connection that ``Store.open`` hands over.

The store opens its own engine (async, SQLite or PostgreSQL), begins a transaction and runs
Alembic inside it through ``run_sync``; this file only wires that connection to Alembic.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tether.cloud.store.models import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "tether's store migrations run through tether.cloud.store.Store.open(url), "
        "which passes its connection in config.attributes['connection']"
    )
_run(connection)

"""Alembic migrations of the cloud store (run by ``Store.open``; no alembic.ini needed)."""

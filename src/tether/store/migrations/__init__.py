"""Alembic migrations of the Tether store (run by tether.store.migrate)."""

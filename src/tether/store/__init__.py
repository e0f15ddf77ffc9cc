"""Persistence: one SQLAlchemy async engine (SQLite by default, PostgreSQL in production).

The schema is owned by Alembic migrations (``migrations/``) that run at startup, so a node
always works on the schema its code expects. Later parts (audit, identity, approvals) add
their tables as new revisions.
"""

from tether.store.database import StoreError, create_engine
from tether.store.policy_loads import PolicyLoad
from tether.store.store import Store

__all__ = ["PolicyLoad", "Store", "StoreError", "create_engine"]

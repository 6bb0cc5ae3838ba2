"""SQLite connection setup shared by the stores: WAL, full sync, one writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

MEMORY = ":memory:"


def connect(path: str | Path) -> sqlite3.Connection:
    """Open a store. ``":memory:"`` gives a private in-memory database (simulations, tests)."""
    target = str(path)
    if target != MEMORY:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    if target != MEMORY:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed block survives power loss, not just a process crash.
        conn.execute("PRAGMA synchronous=FULL")
    return conn

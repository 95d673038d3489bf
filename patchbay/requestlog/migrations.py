"""The request log's schema, as append-only numbered migrations.

Each migration is a function that takes a connection; :func:`migrate` runs, in order, every one
whose name is not yet in the ``_migrations`` table, and records it there. It runs on every open,
so a database written by an older patchbay is brought up to date the first time a newer one opens
it. Never edit or reorder a migration that has been released: add a new one at the end.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

__all__ = ["MIGRATIONS", "applied", "migrate"]

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def _migration(function: Migration) -> Migration:
    MIGRATIONS.append(function)
    return function


@_migration
def m001_exchanges(db: sqlite3.Connection) -> None:
    """One row per exchange: what was sent, what came back, who answered and how fast."""
    db.execute("""
        CREATE TABLE exchanges (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,              -- when the request started, Unix seconds
            source TEXT NOT NULL,            -- cli, server or library
            conversation_id TEXT,
            requested_model TEXT,            -- the name the caller asked for (a route, say)
            provider TEXT,                   -- who answered (or failed last)
            model TEXT,
            prompt TEXT NOT NULL,            -- the text of the last user message
            messages TEXT NOT NULL,          -- JSON, as sent (secrets redacted)
            options TEXT NOT NULL,           -- JSON: temperature, max_tokens, ...
            response TEXT NOT NULL,          -- the text delivered (partial if it failed midway)
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency REAL,                    -- seconds, the whole request
            ttft REAL,                       -- seconds to the first chunk
            status INTEGER,                  -- HTTP status (server)
            error TEXT,
            fallbacks TEXT NOT NULL          -- JSON: the targets left on the way
        )""")
    # Partial: server rows have no conversation, and skipping them keeps their inserts cheaper.
    db.execute("CREATE INDEX exchanges_conversation ON exchanges (conversation_id, id) "
               "WHERE conversation_id IS NOT NULL")


@_migration
def m002_provider_checks(db: sqlite3.Connection) -> None:
    """Results of ``patchbay providers check``, so ``patchbay providers`` can show the last one."""
    db.execute("""
        CREATE TABLE provider_checks (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            provider TEXT NOT NULL,
            model TEXT,
            ok INTEGER NOT NULL,
            ttft REAL,
            total REAL,
            error TEXT
        )""")
    db.execute("CREATE INDEX provider_checks_provider ON provider_checks (provider, id)")


@_migration
def m003_exchange_size(db: sqlite3.Connection) -> None:
    """The bytes of each exchange's texts, for retention by size; the index lets retention read
    the sizes without reading the rows (the texts themselves, in overflow pages)."""
    db.execute("ALTER TABLE exchanges ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE exchanges SET size = length(CAST(prompt AS BLOB)) + length(CAST(messages AS BLOB)) "
               "+ length(CAST(options AS BLOB)) + length(CAST(response AS BLOB)) "
               "+ length(CAST(fallbacks AS BLOB)) + coalesce(length(CAST(error AS BLOB)), 0)")
    db.execute("CREATE INDEX exchanges_size ON exchanges (id, size)")


@_migration
def m004_request_id(db: sqlite3.Connection) -> None:
    """The server's ``x-request-id`` of each exchange (null for the CLI and the library), indexed
    so an operator can find the row a client or a log line names."""
    db.execute("ALTER TABLE exchanges ADD COLUMN request_id TEXT")
    db.execute("CREATE INDEX exchanges_request_id ON exchanges (request_id)")


@_migration
def m005_cost(db: sqlite3.Connection) -> None:
    """What each exchange cost (US dollars, every attempt of it), the name of the API key it was
    charged to, and whether the response cache answered it. Not indexed: an index is paid on
    every insert, and a spend report (``patchbay logs --cost``) can afford one scan."""
    db.execute("ALTER TABLE exchanges ADD COLUMN cost REAL")
    db.execute("ALTER TABLE exchanges ADD COLUMN key TEXT")
    db.execute("ALTER TABLE exchanges ADD COLUMN cache TEXT")


def applied(db: sqlite3.Connection) -> set[str]:
    """Names of the migrations already applied to ``db``."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    return {row[0] for row in db.execute("SELECT name FROM _migrations")}


def migrate(db: sqlite3.Connection, upto: int | None = None) -> list[str]:
    """Apply the pending migrations (the first ``upto`` only, when given) and return their names.

    ``db`` must be in autocommit mode (``isolation_level=None``). Everything runs in one
    ``BEGIN IMMEDIATE`` transaction, so two processes opening a new database at once cannot both
    migrate it: the second waits (busy timeout), then finds nothing left to do.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        done = applied(db)
        ran: list[str] = []
        for function in MIGRATIONS[:upto]:
            if function.__name__ not in done:
                function(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (function.__name__, time.time()))
                ran.append(function.__name__)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return ran

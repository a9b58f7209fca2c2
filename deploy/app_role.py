"""The app's own database role, with only what `tickvault run` needs. Idempotent.

Run by the compose `migrate` service right after `tickvault db migrate`, connected as the
schema's owner (TICKVAULT_DATABASE_URL), every time the stack comes up: a database that
existed before this role did gets it too, and a changed TICKVAULT_APP_PASSWORD takes effect.

What the app does at run time, and so all the role may do:

- read every table and view in `public` (the API, the notebooks, the ingest's recovery);
- write (SELECT, INSERT, UPDATE, DELETE) every base table but the migration ledger: `ticks`
  (binary COPY), `ingest_batches`, `subscriptions`, `instruments` (upsert, also `tickvault
  instruments load`), and on the Apache edition the bar rollup's `ohlc_1m_store`,
  `ohlc_5m_store` and `bar_rollup_state`;
- create temporary tables (the rollup's and the instrument load's scratch tables).

It creates, alters and drops nothing, and it never refreshes a continuous aggregate: on
Community, TimescaleDB's background jobs do that as the owner who added the policies. Default
privileges give tables that later migrations create (as the owner) the same grants.

    TICKVAULT_DATABASE_URL=<owner's URL> TICKVAULT_APP_PASSWORD=... python deploy/app_role.py
"""

from __future__ import annotations

import os
import sys

import psycopg
from psycopg import sql

APP_ROLE = "tickvault_app"
# The one base table the app only reads: migrations are the owner's business.
READ_ONLY_TABLES = frozenset({"tickvault_migrations"})
WRITE = ("INSERT", "UPDATE", "DELETE")
_LOCK = 0x74765F61  # one run at a time


def apply(conn: psycopg.Connection, role: str, password: str) -> None:
    """Create or update `role` and bring its grants in `public` to what the app needs."""
    ident = sql.Identifier(role)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        owner, database = conn.execute("SELECT current_user, current_database()").fetchone()
        if role == owner:
            raise ValueError(f"the app's role must not be the owner {owner!r}")
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        # Hashed here, so the password itself is in no statement (nor in a server log).
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL(
                "ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                " NOBYPASSRLS INHERIT PASSWORD {}"
            ).format(ident, sql.Literal(verifier.decode()))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), ident
            )
        )
        # PostgreSQL 15 already keeps everyone but the owner from creating in public; older
        # clusters did not.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))

        relations = conn.execute(
            """
            SELECT c.relname, c.relkind IN ('r', 'p'),
                   coalesce(bool_or(a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE')), false)
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN LATERAL aclexplode(c.relacl) a
                   ON a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            GROUP BY c.relname, c.relkind
            ORDER BY c.relname
            """,
            [role],
        ).fetchall()
        for name, is_table, can_write in relations:
            target = sql.Identifier("public", name)
            writes = is_table and name not in READ_ONLY_TABLES
            privileges = ("SELECT", *WRITE) if writes else ("SELECT",)
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(", ").join(map(sql.SQL, privileges)), target, ident
                )
            )
            if can_write and not writes:  # only when held: views take no write grants
                conn.execute(
                    sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(target, ident)
                )
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident)
        )
        for grant in (
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}",
            "GRANT USAGE, SELECT ON SEQUENCES TO {}",
        ):
            conn.execute(
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public " + grant).format(
                    sql.Identifier(owner), ident
                )
            )


def main() -> int:
    url = os.environ.get("TICKVAULT_DATABASE_URL", "")
    password = os.environ.get("TICKVAULT_APP_PASSWORD", "")
    role = os.environ.get("TICKVAULT_APP_USER") or APP_ROLE
    if not url or not password:
        print(
            "tickvault: app_role.py needs TICKVAULT_DATABASE_URL (the owner's) and "
            "TICKVAULT_APP_PASSWORD",
            file=sys.stderr,
        )
        return 1
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            apply(conn, role, password)
    except (psycopg.Error, ValueError) as error:
        print(f"tickvault: setting up the role {role!r} failed: {error}", file=sys.stderr)
        return 1
    print(f"database role {role}: ready (reads everything, writes the ingest's tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

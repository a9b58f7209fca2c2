"""Schema migrations on real servers: order, bookkeeping, refusal, one transaction each."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from core.upstox_wire import MODES
from store.errors import StoreError
from store.local.cluster import LocalCluster
from store.local.postgres import PgInstall, find_bindir
from store.migrations import default_sql_dir, migrate
from tests import conftest

# Versions whose only file is for the other edition: recorded as skipped.
SKIPPED = {"apache": {"005"}, "timescale": {"023"}}


@pytest.fixture(params=["apache", "community"])
def server(request: pytest.FixtureRequest) -> conftest.DbServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def fresh_url(server: conftest.DbServer) -> Iterator[str]:
    """An empty database: nothing migrated yet."""
    url = server.create_database(migrated=False)
    yield url
    server.drop_database(url)


def relation_kind(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name]
    ).fetchone()
    return row[0] if row else None


def test_fresh_database_gets_every_version_in_order(
    server: conftest.DbServer, fresh_url: str
) -> None:
    assert migrate(fresh_url) == conftest.ALL_MIGRATIONS

    with psycopg.connect(fresh_url) as conn:
        recorded = conn.execute(
            "SELECT version, edition, skipped FROM tickvault_migrations"
            " ORDER BY applied_at, version"
        ).fetchall()
    assert recorded == [
        (version, server.edition, version in SKIPPED[server.edition])
        for version in conftest.ALL_MIGRATIONS
    ]


def test_second_run_applies_nothing(fresh_url: str) -> None:
    migrate(fresh_url)
    with psycopg.connect(fresh_url) as conn:
        before = conn.execute("SELECT * FROM tickvault_migrations ORDER BY version").fetchall()

    assert migrate(fresh_url) == []

    with psycopg.connect(fresh_url) as conn:
        after = conn.execute("SELECT * FROM tickvault_migrations ORDER BY version").fetchall()
    assert after == before


def test_schema_has_the_expected_relations(edition_db_url: str) -> None:
    with psycopg.connect(edition_db_url) as conn:
        for table in ("instruments", "subscriptions", "ticks", "ingest_batches"):
            assert relation_kind(conn, table) == "r", table
        for bars in ("ohlc_1m", "ohlc_5m"):
            assert relation_kind(conn, bars) == "v", bars

        dimensions = conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = 'public' AND hypertable_name = 'ticks'"
        ).fetchall()
        assert dimensions == [("ts", timedelta(days=1))]

        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' AND tablename = 'ticks'"
            )
        ]
        assert any(d.endswith("(instrument_key, ts DESC)") for d in indexes), indexes
        assert any(d.endswith("USING brin (ts, inserted_at)") for d in indexes), indexes
        assert not any(d.endswith("USING btree (ts DESC)") for d in indexes), indexes


def test_community_bars_are_real_time_continuous_aggregates(
    community_server: conftest.DbServer,
) -> None:
    url = community_server.create_database()
    try:
        with psycopg.connect(url) as conn:
            aggregates = conn.execute(
                "SELECT view_name, materialized_only, materialization_hypertable_name"
                " FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
            ).fetchall()
            assert [(name, only) for name, only, _ in aggregates] == [
                ("ohlc_1m_live", False),
                ("ohlc_5m_live", False),
                ("option_chain_1m", False),
            ]

            jobs = dict(
                conn.execute(
                    "SELECT hypertable_name, proc_name FROM timescaledb_information.jobs"
                    " WHERE proc_name IN ('policy_refresh_continuous_aggregate',"
                    " 'policy_compression')"
                ).fetchall()
            )
            for view, _, materialization in aggregates:
                # TimescaleDB 2.20 began naming the aggregate here rather than its hypertable.
                job = jobs.pop(view, None) or jobs.pop(materialization)
                assert job == "policy_refresh_continuous_aggregate"
            assert jobs == {"ticks": "policy_compression"}

            segmentby = conn.execute(
                "SELECT attname FROM timescaledb_information.compression_settings"
                " WHERE hypertable_name = 'ticks' AND segmentby_column_index IS NOT NULL"
            ).fetchall()
            assert segmentby == [("instrument_key",)]
    finally:
        community_server.drop_database(url)


@pytest.fixture(scope="module")
def plain_postgres() -> Iterator[LocalCluster]:
    """A PostgreSQL whose timescaledb is installed but not preloaded."""
    root = Path(tempfile.mkdtemp(prefix="tickvault-test-plain-"))
    root.chmod(0o755)
    cluster = LocalCluster(
        PgInstall(find_bindir(None)),
        root / "pg",
        conftest.free_port(),
        extra_settings={"shared_preload_libraries": "''", "shared_buffers": "'128MB'"},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_server_without_timescaledb_preloaded_is_refused_untouched(
    plain_postgres: LocalCluster,
) -> None:
    with pytest.raises(StoreError, match="not in shared_preload_libraries") as refused:
        migrate(plain_postgres.url())
    assert "Nothing was changed" in str(refused.value)

    with psycopg.connect(plain_postgres.url()) as conn:
        assert relation_kind(conn, "tickvault_migrations") is None
        assert conn.execute("SELECT extname FROM pg_extension").fetchall() == [("plpgsql",)]


def test_each_migration_is_its_own_transaction(
    tmp_path: Path, apache_server: conftest.DbServer
) -> None:
    for name in ("001_timescaledb.sql", "002_instruments.sql", "003_subscriptions.sql"):
        shutil.copy(default_sql_dir() / name, tmp_path / name)
    broken = tmp_path / "004_broken.sql"
    broken.write_text("CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    url = apache_server.create_database(migrated=False)
    try:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            migrate(url, sql_dir=tmp_path)

        with psycopg.connect(url) as conn:
            versions = conn.execute(
                "SELECT version FROM tickvault_migrations ORDER BY version"
            ).fetchall()
            assert versions == [("001",), ("002",), ("003",)]
            assert relation_kind(conn, "instruments") == "r"
            assert relation_kind(conn, "subscriptions") == "r"
            assert relation_kind(conn, "half_done") is None

        broken.write_text("CREATE TABLE half_done (x int);\n")
        assert migrate(url, sql_dir=tmp_path) == ["004"]
    finally:
        apache_server.drop_database(url)


def test_the_subscriptions_mode_check_allows_exactly_the_feed_modes() -> None:
    """sql/003 cannot import the wire constants, so this holds the two together."""
    text = (conftest.REPO / "sql" / "003_subscriptions.sql").read_text()
    allowed = re.search(r"CHECK \(mode IN \(([^)]*)\)\)", text)
    assert allowed is not None
    assert {mode.strip().strip("'") for mode in allowed[1].split(",")} == set(MODES)


def test_the_ticks_index_change_upgrades_a_store_that_holds_ticks(
    server: conftest.DbServer, fresh_url: str, tmp_path: Path
) -> None:
    """sql/024 swaps the ticks' BRIN indexes on a store already in use: a chunk of ten days
    ago (compressed, on Community) and today's. Its ticks read the same afterwards."""
    before_024 = tmp_path / "sql"
    before_024.mkdir()
    for path in default_sql_dir().glob("*.sql"):
        if path.name < "024":
            shutil.copy(path, before_024)
    migrate(fresh_url, before_024)
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        for ago in ("10 days", "1 hour"):
            conn.execute(
                "INSERT INTO ticks (instrument_key, ts, ltp, volume_delta)"
                f" SELECT 'NSE_EQ|INE002A01018', now() - INTERVAL '{ago}' + g * INTERVAL '1 s',"
                " g, 1 FROM generate_series(1, 1000) g"
            )
        if server.edition == "timescale":
            (compressed,) = conn.execute(
                "SELECT count(compress_chunk(c)) FROM show_chunks('ticks', older_than =>"
                " INTERVAL '7 days') c"
            ).fetchone()
            assert compressed == 1
        before = conn.execute("SELECT count(*), sum(ltp) FROM ticks").fetchone()

    assert migrate(fresh_url) == ["024"]

    with psycopg.connect(fresh_url) as conn:
        assert conn.execute("SELECT count(*), sum(ltp) FROM ticks").fetchone() == before
        brin = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename = 'ticks' AND indexdef LIKE '%USING brin%'"
        ).fetchall()
        assert [row[0].split(" USING ")[1] for row in brin] == ["brin (ts, inserted_at)"]

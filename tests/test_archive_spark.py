"""Apache Spark reads tickvault's Parquet archive as it is (hive layout, `date` the partition
column) and gets the database's rows: the same count and checksum, every column.

Spark reads object storage through s3a://, which needs hadoop-aws and the AWS SDK bundle: jars
from Maven, which no PyPI package ships (pyspark's own jars hold hadoop-client only) and this
project's machines cannot reach. So Spark reads the same layout from a local archive directory,
written by the same code path as on object storage (store/archive.py through a pyarrow
filesystem); tests/test_archive_s3.py holds that path to the same rows on S3. A cluster with
hadoop-aws reads `s3a://bucket/prefix/ticks` the same way (docs/store.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from store.archive import SCHEMA, archive_finished_days, batches_manifest, database_manifest
from store.tick_row import TICK_COLUMNS
from tests.lifecycle import days_ago, insert_day

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
    reason="Spark needs a Java runtime (17 or later): none on PATH and JAVA_HOME is unset",
)


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_reads_the_archive_with_the_databases_rows_and_checksum(
    db_url: str, tmp_path: Path
) -> None:
    from pyspark.sql import SparkSession

    days = (days_ago(9), days_ago(8))
    rows = {day: insert_day(db_url, day, per_key=20) for day in days}
    with psycopg.connect(db_url, autocommit=True) as conn:
        archive_finished_days(conn, tmp_path)
        in_database = {day: database_manifest(conn, day) for day in days}

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("tickvault-archive-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    try:  # one Spark job: what a user's query reads, the partition column included
        read = spark.read.parquet(str(tmp_path / "ticks")).toArrow()
    finally:
        spark.stop()

    for day in days:
        of_day = read.filter(pc.equal(read["date"], pa.scalar(day))).select(list(TICK_COLUMNS))
        assert of_day.num_rows == rows[day]
        assert batches_manifest(day, of_day.cast(SCHEMA).to_batches()) == in_database[day]
    assert read.num_rows == sum(rows.values())

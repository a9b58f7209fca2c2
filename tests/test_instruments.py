"""The instrument master on a real TimescaleDB: loading, all-or-nothing, universe and lookup."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from store.instruments import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_VARIABLE,
    InstrumentFileError,
    UnknownSymbol,
    default_sample_path,
    fno_universe,
    load_instruments,
    read_instruments,
    resolve_symbol,
)

IST = timezone(timedelta(hours=5, minutes=30))
SAMPLE = default_sample_path()
COLUMNS = (
    "instrument_key, trading_symbol, name, short_name, segment, exchange, instrument_type,"
    " security_type, isin, exchange_token, lot_size, minimum_lot, freeze_quantity, tick_size,"
    " expiry, strike_price, weekly, underlying_key, underlying_symbol, underlying_type,"
    " asset_key, raw"
)


def sample_records() -> list[dict[str, Any]]:
    return json.loads(SAMPLE.read_text())


def write_json(path: Path, records: Any) -> Path:
    path.write_text(json.dumps(records))
    return path


def load(db_url: str, path: Path) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return load_instruments(conn, path)


def table(db_url: str) -> list[tuple[Any, ...]]:
    """Everything a load writes, except the time it wrote it."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM instruments ORDER BY instrument_key").fetchall()


def test_sample_is_a_valid_instrument_file() -> None:
    records = read_instruments(SAMPLE)
    assert records == sample_records()
    assert {r["segment"] for r in records} == {"NSE_EQ", "NSE_INDEX", "NSE_FO"}


@pytest.mark.parametrize("name", ["NSE.json.gz", "NSE.json"])
def test_gzipped_copy_loads_the_same_rows_as_the_plain_file(
    db_url: str, tmp_path: Path, name: str
) -> None:
    records = sample_records()
    assert load(db_url, SAMPLE) == len(records)
    plain = table(db_url)
    assert len(plain) == len(records)
    assert sorted(json.dumps(row[-1], sort_keys=True) for row in plain) == sorted(
        json.dumps(r, sort_keys=True) for r in records
    ), "raw keeps every record whole, fields without a column included"

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM instruments")
    # Named .json or .json.gz, gzip is recognised by its content.
    gzipped = tmp_path / name
    gzipped.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert load(db_url, gzipped) == len(records)
    assert table(db_url) == plain


def test_loading_again_updates_rows_in_place(db_url: str, tmp_path: Path) -> None:
    load(db_url, SAMPLE)
    with psycopg.connect(db_url) as conn:
        (first_load,) = conn.execute("SELECT max(updated_at) FROM instruments").fetchone()

    records = sample_records()
    future = next(r for r in records if r["trading_symbol"] == "INFY FUT 29 DEC 26")
    future["lot_size"] = future["minimum_lot"] = 300
    future["freeze_quantity"] = 6000.0
    assert load(db_url, write_json(tmp_path / "changed.json", records)) == len(records)

    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM instruments").fetchone() == (len(records),)
        row = conn.execute(
            "SELECT lot_size, minimum_lot, freeze_quantity, raw->'lot_size', updated_at"
            " FROM instruments WHERE instrument_key = %s",
            [future["instrument_key"]],
        ).fetchone()
    assert row is not None
    assert row[:4] == (300, 300, 6000.0, 300)
    assert row[4] > first_load


def test_truncated_gzip_leaves_the_table_as_it_was(db_url: str, tmp_path: Path) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    whole = gzip.compress(SAMPLE.read_bytes())
    truncated = tmp_path / "complete.json.gz"
    truncated.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(InstrumentFileError, match="not a whole gzip file") as caught:
        load(db_url, truncated)
    assert str(truncated) in str(caught.value)
    assert table(db_url) == before


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b'[{"instrument_key": "NSE_EQ|INE009A01021", "segment": "NSE_', "not valid JSON"),
        (b'{"instrument_key": "NSE_EQ|INE009A01021"}', "not an array"),
        (b'[{"instrument_key": "NSE_FO|1", "strike_price": NaN}]', "not valid JSON"),
        (b"[1, 2]", "record 0 is a JSON number, not an object"),
    ],
)
def test_a_file_that_is_not_an_array_of_records_is_rejected(
    db_url: str, tmp_path: Path, content: bytes, complaint: str
) -> None:
    path = tmp_path / "NSE.json"
    path.write_bytes(content)
    with pytest.raises(InstrumentFileError, match=complaint) as caught:
        load(db_url, path)
    assert str(path) in str(caught.value)
    assert table(db_url) == []


def test_a_record_missing_a_required_field_loads_nothing(db_url: str, tmp_path: Path) -> None:
    records = sample_records()
    broken = records[40]
    del broken["trading_symbol"]
    path = write_json(tmp_path / "NSE.json", records)

    with pytest.raises(InstrumentFileError) as caught:
        load(db_url, path)
    message = str(caught.value)
    assert str(path) in message
    assert "record 40" in message
    assert broken["instrument_key"] in message
    assert "trading_symbol" in message
    assert table(db_url) == []


def test_a_field_of_the_wrong_type_is_named(db_url: str, tmp_path: Path) -> None:
    records = sample_records()
    records[3]["lot_size"] = "75"
    with pytest.raises(InstrumentFileError, match=r"record 3 .* lot_size \('75' is not integer\)"):
        load(db_url, write_json(tmp_path / "NSE.json", records))
    assert table(db_url) == []


def test_a_value_the_database_refuses_rolls_back_the_whole_file(
    db_url: str, tmp_path: Path
) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    records = sample_records()
    for record in records:
        record["lot_size"] = 1  # would change every row if anything were kept
    records[-1]["expiry"] = 10**18  # an integer, but no timestamptz is that far out
    path = write_json(tmp_path / "NSE.json", records)

    with pytest.raises(InstrumentFileError, match="nothing was loaded"):
        load(db_url, path)
    assert table(db_url) == before


def test_a_repeated_instrument_key_is_rejected(db_url: str, tmp_path: Path) -> None:
    records = sample_records()
    records.append(dict(records[5]))
    with pytest.raises(InstrumentFileError, match=f"record {len(records) - 1} .* of record 5"):
        load(db_url, write_json(tmp_path / "NSE.json", records))
    assert table(db_url) == []


def test_fno_universe_is_the_stocks_with_futures_in_the_file(db_url: str) -> None:
    records = sample_records()
    load(db_url, SAMPLE)
    expected = {
        r["underlying_key"]
        for r in records
        if r["segment"] == "NSE_FO"
        and r["instrument_type"] == "FUT"
        and r["underlying_type"] == "EQUITY"
    }
    cash_only = {r["instrument_key"] for r in records if r["segment"] == "NSE_EQ"} - expected

    with psycopg.connect(db_url) as conn:
        universe = fno_universe(conn)
    assert universe == sorted(expected)
    assert len(universe) == 20
    assert len(cash_only) == 2
    assert cash_only.isdisjoint(universe)
    assert not any(key.startswith("NSE_INDEX|") for key in universe)


def test_resolve_symbol_finds_stocks_indices_and_keys(db_url: str, tmp_path: Path) -> None:
    load(db_url, SAMPLE)
    # The same company on BSE shares the trading symbol; NSE's listing is the one meant.
    bse = {
        "segment": "BSE_EQ",
        "name": "INFOSYS LTD.",
        "exchange": "BSE",
        "isin": "INE009A01021",
        "instrument_type": "A",
        "instrument_key": "BSE_EQ|INE009A01021",
        "exchange_token": "500209",
        "trading_symbol": "INFY",
    }
    load(db_url, write_json(tmp_path / "BSE.json", [bse]))

    with psycopg.connect(db_url) as conn:
        assert resolve_symbol(conn, "INFY") == "NSE_EQ|INE009A01021"
        assert resolve_symbol(conn, "reliance") == "NSE_EQ|INE002A01018"
        assert resolve_symbol(conn, "Nifty 50") == "NSE_INDEX|Nifty 50"
        assert resolve_symbol(conn, "BANKNIFTY") == "NSE_INDEX|Nifty Bank"
        assert resolve_symbol(conn, "BSE_EQ|INE009A01021") == "BSE_EQ|INE009A01021"
        assert resolve_symbol(conn, "NSE_INDEX|Nifty Bank") == "NSE_INDEX|Nifty Bank"
        assert resolve_symbol(conn, "INFY FUT 29 DEC 26").startswith("NSE_FO|")
        for unknown in ("NOSUCHSTOCK", "NSE_EQ|INE000000000", "NSE_INDEX|NIFTY BANK"):
            with pytest.raises(UnknownSymbol, match=unknown.replace("|", r"\|")):
                resolve_symbol(conn, unknown)


def test_expiry_is_the_end_of_the_expiry_day_in_india(db_url: str) -> None:
    load(db_url, SAMPLE)
    future = next(r for r in sample_records() if r["trading_symbol"] == "NIFTY FUT 29 DEC 26")
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT expiry FROM instruments WHERE instrument_key = %s", [future["instrument_key"]]
        ).fetchone()
        times = conn.execute(
            "SELECT DISTINCT (expiry AT TIME ZONE 'Asia/Kolkata')::time FROM instruments"
            " WHERE expiry IS NOT NULL"
        ).fetchall()
        undated = conn.execute(
            "SELECT count(*) FROM instruments WHERE expiry IS NULL AND segment = 'NSE_FO'"
        ).fetchone()
    assert row is not None
    assert row[0] == datetime(2026, 12, 29, 23, 59, 59, tzinfo=IST)
    assert row[0] == datetime.fromtimestamp(future["expiry"] / 1000, UTC)
    assert times == [(time(23, 59, 59),)]
    assert undated == (0,)


def run_cli(db_url: str, *args: str, **env_vars: str | int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TICKVAULT_DATABASE_URL": db_url,
        **{name: str(value) for name, value in env_vars.items()},
    }
    return subprocess.run(
        [sys.executable, "-m", "tickvault", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_loads_a_file_and_reports_the_count(db_url: str, tmp_path: Path) -> None:
    gzipped = tmp_path / "NSE.json.gz"
    gzipped.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    count = len(sample_records())

    result = run_cli(db_url, "instruments", "load", str(gzipped))
    assert result.returncode == 0, result.stderr
    assert f"loaded {count} instruments from {gzipped}" in result.stdout
    assert len(table(db_url)) == count


def test_cli_refuses_a_bad_file_in_one_line(db_url: str, tmp_path: Path) -> None:
    records = sample_records()
    del records[7]["segment"]
    path = write_json(tmp_path / "NSE.json", records)

    result = run_cli(db_url, "instruments", "load", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tickvault: {path}: record 7 ")
    assert lines[0].endswith("lacks segment")
    assert table(db_url) == []


def every_row_changed() -> list[dict[str, Any]]:
    """The sample with a new lot size everywhere: a file that would change every row it loaded."""
    records = sample_records()
    for record in records:
        record["lot_size"] = 1
    return records


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], path: Path) -> str:
    """The CLI's answer to a bad file: status 1, nothing on stdout, one line naming the file."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tickvault: {path}")
    return lines[0]


def test_default_size_limit_is_documented_and_fits_the_upstox_master() -> None:
    # Upstox's complete.json is about 50 MB unpacked; the default must leave it room to grow.
    assert DEFAULT_MAX_BYTES == 256 * 2**20
    assert f"{MAX_BYTES_VARIABLE}, else {DEFAULT_MAX_BYTES}, 256 MiB" in " ".join(
        run_cli("", "instruments", "load", "--help").stdout.split()
    )


@pytest.mark.parametrize("limit_by", ["option", "variable"])
def test_cli_refuses_a_gzip_bomb_past_the_size_limit(
    db_url: str, tmp_path: Path, limit_by: str
) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    # Valid JSON that unpacks to 8 MiB from a few kB: only the limit stands in its way.
    text = json.dumps(every_row_changed())
    bomb = tmp_path / "complete.json.gz"
    bomb.write_bytes(gzip.compress((text[:-1] + " " * 2**23 + "]").encode(), 9))
    assert bomb.stat().st_size < 2**15

    limit = 2**20
    if limit_by == "option":
        result = run_cli(db_url, "instruments", "load", "--max-bytes", str(limit), str(bomb))
    else:
        result = run_cli(db_url, "instruments", "load", str(bomb), **{MAX_BYTES_VARIABLE: limit})
    line = assert_refused_in_one_line(result, bomb)
    assert f"over the {limit}-byte limit for an instrument file once unpacked" in line
    assert f"(raise it with --max-bytes or {MAX_BYTES_VARIABLE})" in line
    assert table(db_url) == before

    # Under the default limit the same file loads: the limit was the only reason.
    assert run_cli(db_url, "instruments", "load", str(bomb)).returncode == 0
    assert table(db_url) != before


def test_unpacking_stops_as_soon_as_the_limit_is_passed(db_url: str, tmp_path: Path) -> None:
    # Corrupt far beyond the limit: a reader that unpacked everything first would only see that.
    whole = gzip.compress(b"[" + b" " * 2**24 + b"]", 9)
    broken = tmp_path / "complete.json.gz"
    broken.write_bytes(whole[: len(whole) * 9 // 10] + b"\xff" * 64)

    result = run_cli(db_url, "instruments", "load", "--max-bytes", str(2**20), str(broken))
    assert "over the 1048576-byte limit" in assert_refused_in_one_line(result, broken)
    assert "not a whole gzip file" in assert_refused_in_one_line(
        run_cli(db_url, "instruments", "load", str(broken)), broken
    )


@pytest.mark.parametrize(
    ("limit", "complaint"),
    [
        (["--max-bytes", "0"], "the instrument file limit must be at least 1 byte, got 0"),
        ([], f"{MAX_BYTES_VARIABLE} must be a whole number of bytes above 0, got '64k'"),
    ],
)
def test_a_bad_size_limit_is_refused_in_one_line(
    db_url: str, limit: list[str], complaint: str
) -> None:
    result = run_cli(
        db_url, "instruments", "load", *limit, str(SAMPLE), **{MAX_BYTES_VARIABLE: "64k"}
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"tickvault: {complaint}"]
    assert table(db_url) == []


DEPTH = 200_000


@pytest.mark.parametrize("where", ["arrays", "objects", "in-a-record"])
def test_cli_refuses_deep_nesting_in_one_line(db_url: str, tmp_path: Path, where: str) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    records = [json.dumps(record) for record in every_row_changed()]
    nesting = {
        "arrays": "[" * DEPTH + "]" * DEPTH,
        "objects": '{"a":' * DEPTH + "1" + "}" * DEPTH,
        # deep inside a field of a record, among records that would load
        "in-a-record": '"extra": ' + "[" * DEPTH + "]" * DEPTH,
    }[where]
    if where == "in-a-record":
        records[3] = records[3][:-1] + ", " + nesting + "}"
        nesting = "[" + ", ".join(records) + "]"
    path = tmp_path / "NSE.json"
    path.write_text(nesting)

    line = assert_refused_in_one_line(run_cli(db_url, "instruments", "load", str(path)), path)
    assert line == f"tickvault: {path} is not an instrument file: it nests too deep"
    assert table(db_url) == before


def test_cli_refuses_a_field_given_twice_in_a_record(db_url: str, tmp_path: Path) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    records = every_row_changed()
    texts = [json.dumps(record) for record in records]
    texts[40] = '{"lot_size": 999, ' + texts[40][1:]  # json alone would keep the later 1
    path = tmp_path / "NSE.json"
    path.write_text("[" + ",\n".join(texts) + "]")

    line = assert_refused_in_one_line(run_cli(db_url, "instruments", "load", str(path)), path)
    key = records[40]["instrument_key"]
    assert line.endswith(f"(instrument_key {key!r}) gives the field 'lot_size' more than once")
    assert table(db_url) == before


def test_cli_refuses_invalid_utf8_naming_the_record(db_url: str, tmp_path: Path) -> None:
    load(db_url, SAMPLE)
    before = table(db_url)
    records = every_row_changed()
    records[40]["name"] = "INFOSYS \udcff"  # written below as the lone byte 0xff
    path = tmp_path / "NSE.json.gz"
    body = json.dumps(records, ensure_ascii=False).encode("utf-8", "surrogateescape")
    path.write_bytes(gzip.compress(body))

    line = assert_refused_in_one_line(run_cli(db_url, "instruments", "load", str(path)), path)
    offset = body.index(b"\xff")
    assert line == (
        f"tickvault: {path} is not valid JSON: 'utf-8' codec can't decode byte 0xff in position"
        f" {offset}: invalid start byte"
    )
    assert table(db_url) == before

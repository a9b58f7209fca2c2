"""The Upstox instrument master: load the published file, find the F&O universe, resolve and
search symbols.

The file is checked whole before the database is touched, and written in one transaction, so a
truncated download or a malformed record leaves the table exactly as it was. Reading is bounded:
the file is unpacked in chunks up to a size limit, so a gzip bomb is refused before it fills
memory, and a file nested too deep for the parser is refused like any other bad file. The
records are COPYed as jsonb into a temporary table and the upsert projects them into columns in
SQL: that keeps Python's per-record work to one `json.dumps`, and a 100k-record file loads in
seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

# Upstox's complete master is about 50 MB unpacked; a limit five times that leaves it room to
# grow while a gzip bomb (a few MB that unpack to gigabytes) is refused after 256 MiB.
DEFAULT_MAX_BYTES = 256 * 2**20
MAX_BYTES_VARIABLE = "TICKVAULT_INSTRUMENTS_MAX_BYTES"
_READ_CHUNK = 2**20

_GZIP_MAGIC = b"\x1f\x8b"
_INT4 = range(-(2**31), 2**31)

# Every column of `instruments` filled from the record, with the kind of value it holds.
# The order is the column order of the upsert; `instrument_key` comes first.
_COLUMNS = {
    "instrument_key": "text",
    "trading_symbol": "text",
    "name": "text",
    "short_name": "text",
    "segment": "text",
    "exchange": "text",
    "instrument_type": "text",
    "security_type": "text",
    "isin": "text",
    "exchange_token": "text",
    "lot_size": "integer",
    "minimum_lot": "integer",
    "freeze_quantity": "double precision",
    "tick_size": "double precision",
    "expiry": "epoch ms",
    "strike_price": "double precision",
    "weekly": "boolean",
    "underlying_key": "text",
    "underlying_symbol": "text",
    "underlying_type": "text",
    "asset_key": "text",
}

# Every record in Upstox's files has these, indices included (Nifty 50's trading_symbol is
# "NIFTY"); a record without one is a broken file, not something to patch up with `name`.
REQUIRED_FIELDS = ("instrument_key", "segment", "instrument_type", "trading_symbol")


def _value_sql(column: str, kind: str) -> str:
    field = f"r->>'{column}'"
    if kind == "text":
        return field
    if kind == "epoch ms":
        return f"to_timestamp(({field})::bigint / 1000.0)"
    return f"({field})::{kind}"


def upsert_sql(active: str) -> str:
    """Upsert the staged records; `active` is the SQL of each record's live mark.

    A row whose record and mark are as they were is left alone, so `updated_at` says when an
    instrument last changed, and a daily refresh of an unchanged master writes almost nothing.
    """
    return (
        f"INSERT INTO instruments ({', '.join(_COLUMNS)}, raw, active, inactive_since, updated_at)"
        f" SELECT {', '.join(_value_sql(c, k) for c, k in _COLUMNS.items())}, r, staged.active,"
        " CASE WHEN NOT staged.active THEN now() END, now()"
        f" FROM _instruments_load CROSS JOIN LATERAL (SELECT {active} AS active) AS staged"
        " ON CONFLICT (instrument_key) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in [*list(_COLUMNS)[1:], "raw", "active"])
        + ", inactive_since = CASE WHEN EXCLUDED.active THEN NULL"
        " ELSE coalesce(instruments.inactive_since, now()) END, updated_at = now()"
        " WHERE instruments.raw IS DISTINCT FROM EXCLUDED.raw"
        " OR instruments.active IS DISTINCT FROM EXCLUDED.active"
    )


# A record's expiry has passed (NULL, never: stocks and indices have none).
EXPIRED_SQL = f"{_value_sql('expiry', 'epoch ms')} <= now()"
# `instruments load` takes every record of the file as live; a refresh marks expired ones.
_UPSERT = upsert_sql("true")


class InstrumentFileError(ValueError):
    """The instrument file cannot be loaded as it is; nothing was written."""


class UnknownSymbol(LookupError):
    """No instrument answers to this symbol, index name or instrument key."""


def default_sample_path() -> Path:
    """The small instrument master shipped with tickvault, for trying it out without a network."""
    return Path(__file__).resolve().parent / "data" / "instruments_sample.json"


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; jsonb does not, and neither does Upstox send them.
    raise ValueError(f"{name} is not valid JSON")


def _fits(value: Any, kind: str) -> bool:
    if kind == "text":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int subclass, never a number in these files
        return False
    if kind == "integer":
        return isinstance(value, int) and value in _INT4
    if kind == "epoch ms":
        return isinstance(value, int)
    return isinstance(value, int | float)


def _record_problem(record: Any) -> str | None:
    """What is wrong with one record, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {_json_kind(record)}, not an object"
    missing = [f for f in REQUIRED_FIELDS if not isinstance(record.get(f), str) or not record[f]]
    if missing:
        return f"lacks {', '.join(missing)}"
    wrong = [
        f"{column} ({record[column]!r} is not {kind})"
        for column, kind in _COLUMNS.items()
        if record.get(column) is not None and not _fits(record[column], kind)
    ]
    return f"has a bad {', '.join(wrong)}" if wrong else None


def max_bytes_setting(environ: Mapping[str, str] = os.environ) -> int:
    """The size limit `TICKVAULT_INSTRUMENTS_MAX_BYTES` sets, or `DEFAULT_MAX_BYTES` if unset.

    Read at each load, not once at start, so that every reader of instrument files (the CLI,
    the simulator, the sample load) obeys the same variable.
    """
    raw = environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{MAX_BYTES_VARIABLE} must be a whole number of bytes above 0, got {raw!r}"
        )
    return value


def _read_capped(path: Path, max_bytes: int) -> bytearray:
    """The file's JSON bytes, gunzipped when gzipped by content; at most `max_bytes` of them.

    Streamed in chunks and refused as soon as the limit is passed: a few megabytes of gzip can
    unpack to gigabytes, and none of that must reach memory.
    """
    if max_bytes < 1:
        raise ValueError(f"the instrument file limit must be at least 1 byte, got {max_bytes}")
    try:
        file = path.open("rb")
    except OSError as error:
        raise InstrumentFileError(f"cannot read {path}: {error.strerror}") from None
    with file:
        data = bytearray()
        try:
            # By content: a saved download may have lost its .gz. peek, not seek: a pipe works.
            gzipped = file.peek(len(_GZIP_MAGIC)).startswith(_GZIP_MAGIC)
            stream = gzip.GzipFile(fileobj=file, mode="rb") if gzipped else file
            while chunk := stream.read(min(_READ_CHUNK, max_bytes + 1 - len(data))):
                data += chunk
                if len(data) > max_bytes:
                    raise InstrumentFileError(
                        f"{path} is over the {max_bytes}-byte limit for an instrument file"
                        f"{' once unpacked' if gzipped else ''} (raise it with --max-bytes or"
                        f" {MAX_BYTES_VARIABLE})"
                    )
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise InstrumentFileError(f"{path} is not a whole gzip file: {error}") from None
        except OSError as error:
            raise InstrumentFileError(f"cannot read {path}: {error.strerror}") from None
    return data


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages about the file."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    names = {dict: "object", list: "array", str: "string"}
    return names.get(type(value), "number")


def _one_record(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the file; a field given twice is an error, where json keeps the last."""
    record = dict(pairs)
    if len(record) < len(pairs):
        names = [name for name, _ in pairs]
        repeated = next(name for name in names if names.count(name) > 1)
        key = record.get("instrument_key")
        named = f" (instrument_key {key!r})" if isinstance(key, str) and key else ""
        raise ValueError(f"an object{named} gives the field {repeated!r} more than once")
    return record


def _decode(path: Path, max_bytes: int) -> Any:
    data = _read_capped(path, max_bytes)
    try:
        return json.loads(
            data.decode("utf-8-sig"), object_pairs_hook=_one_record, parse_constant=_reject_constant
        )
    except RecursionError:
        # The master is a flat list of flat objects; only a hostile file nests this deep.
        raise InstrumentFileError(f"{path} is not an instrument file: it nests too deep") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InstrumentFileError(f"{path} is not valid JSON: {error}") from None


def read_instruments(path: Path, max_bytes: int | None = None) -> list[dict[str, Any]]:
    """The records of an Upstox instrument file (.json, or gzipped whatever its name), checked.

    The file may hold at most `max_bytes` of JSON (unpacked), by default what
    `TICKVAULT_INSTRUMENTS_MAX_BYTES` says or 256 MiB; Upstox's complete master is about 50 MB.
    Every record must carry a non-empty `instrument_key`, `segment`, `instrument_type` and
    `trading_symbol` (Upstox gives indices one too: "NIFTY" for Nifty 50, so there is no
    falling back to `name`), and the fields that become typed columns must hold the JSON type
    Upstox uses (epoch-ms integer `expiry`, integer `lot_size`, ...). One bad record, a field
    given twice in a record, or a repeated `instrument_key`, rejects the whole file with an
    `InstrumentFileError` naming it.
    """
    records = _decode(path, max_bytes_setting() if max_bytes is None else max_bytes)
    if not isinstance(records, list):
        raise InstrumentFileError(
            f"{path} holds a JSON {_json_kind(records)}, not an array of instrument records"
        )
    first_index: dict[str, int] = {}
    for index, record in enumerate(records):
        problem = _record_problem(record)
        key = record.get("instrument_key") if isinstance(record, dict) else None
        named = f" (instrument_key {key!r})" if isinstance(key, str) and key else ""
        if problem:
            raise InstrumentFileError(f"{path}: record {index}{named} {problem}")
        earlier = first_index.setdefault(key, index)
        if earlier != index:
            raise InstrumentFileError(
                f"{path}: record {index}{named} repeats the key of record {earlier}"
            )
    return records


def load_instruments(conn: psycopg.Connection, path: Path, max_bytes: int | None = None) -> int:
    """Upsert every record of the file by `instrument_key`; return how many there were.

    All or nothing: the file is checked first (`read_instruments`, `max_bytes` included), then
    written in one transaction (a savepoint if the caller has one open). The file's
    instruments are marked active; rows of instruments absent from it are left alone (`tickvault
    instruments refresh` marks those inactive).
    """
    records = read_instruments(path, max_bytes)
    with conn.transaction(), staged_records(conn, records, path):
        conn.execute(_UPSERT)
    return len(records)


@contextmanager
def staged_records(
    conn: psycopg.Connection, records: list[dict[str, Any]], source: object
) -> Iterator[None]:
    """The records in the temporary table `_instruments_load (r jsonb)` for the block's SQL.

    Call it inside a transaction. A value in range for JSON but not for its column (found by
    the block's upsert) becomes an InstrumentFileError naming `source`.
    """
    # Dropped explicitly, not ON COMMIT: inside a caller's transaction this block is a
    # savepoint, and a second load before that commit would find the table still there.
    conn.execute("CREATE TEMP TABLE _instruments_load (r jsonb NOT NULL)")
    with conn.cursor().copy("COPY _instruments_load (r) FROM STDIN") as copy:
        for record in records:
            copy.write_row((json.dumps(record),))
    try:
        yield
    except psycopg.DataError as error:
        raise InstrumentFileError(f"{source}: {error}; nothing was loaded") from None
    conn.execute("DROP TABLE _instruments_load")


def fno_universe(conn: psycopg.Connection) -> list[str]:
    """The `NSE_EQ` keys of the stocks that have a live future: NSE's F&O stock list, from the
    master (a future that expired or left Upstox's file is inactive after a refresh)."""
    rows = conn.execute(
        "SELECT DISTINCT underlying_key FROM instruments"
        " WHERE active AND segment = 'NSE_FO' AND instrument_type = 'FUT'"
        " AND underlying_type = 'EQUITY' AND underlying_key IS NOT NULL"
        " ORDER BY underlying_key"
    ).fetchall()
    return [key for (key,) in rows]


OptionRow = tuple[str, str, str, datetime, float, str, bool]


def option_contracts(conn: psycopg.Connection, underlyings: list[str]) -> list[OptionRow]:
    """The option contracts of underlyings named by symbol (NIFTY, INFY), live or kept for
    history: (key, underlying symbol, underlying key, expiry, strike, CE/PE, active)."""
    return conn.execute(
        "SELECT instrument_key, upper(underlying_symbol), underlying_key, expiry, strike_price,"
        " instrument_type, active FROM instruments"
        " WHERE instrument_type IN ('CE', 'PE') AND upper(underlying_symbol) = ANY(%s)"
        " AND expiry IS NOT NULL AND strike_price IS NOT NULL AND underlying_key IS NOT NULL",
        [[name.upper() for name in underlyings]],
    ).fetchall()


def resolve_symbols(conn: psycopg.Connection, symbols: list[str]) -> dict[str, str]:
    """symbol -> the instrument key a user means by it, for each symbol that names one.

    An instrument key is taken as it is when it exists. Otherwise a symbol is a trading symbol
    or an index name ("Nifty 50"), in any case; a trading symbol can be listed in several
    segments, and a live instrument wins over one kept for history, then the NSE cash market,
    then NSE indices, then the equity or index record of any other segment. The rule is the
    SQL function resolve_symbol (sql/014), which SQL users call too; one query for the whole
    list.
    """
    rows = conn.execute(
        "SELECT s.i, resolve_symbol(s.name) FROM unnest(%s::text[]) WITH ORDINALITY AS s(name, i)",
        [symbols],
    ).fetchall()
    return {symbols[i - 1]: key for i, key in rows if key is not None}


def keys_of(symbols: list[str], found: dict[str, str]) -> list[str]:
    """The key of each symbol, in order; UnknownSymbol names every symbol `found` lacks."""
    unknown = [symbol for symbol in dict.fromkeys(symbols) if symbol not in found]
    if len(unknown) == 1:
        raise UnknownSymbol(
            f"unknown symbol {unknown[0]!r}: no trading symbol, index name or instrument key in"
            " the instrument master matches it (`tickvault instruments load` fills the master)"
        )
    if unknown:
        raise UnknownSymbol(
            f"unknown symbols {', '.join(map(repr, unknown))}: no trading symbol, index name or"
            " instrument key in the instrument master matches them"
        )
    return [found[symbol] for symbol in symbols]


def resolve_symbol(conn: psycopg.Connection, symbol: str) -> str:
    """The instrument key a user means by `symbol` (see resolve_symbols)."""
    [key] = keys_of([symbol], resolve_symbols(conn, [symbol]))
    return key


def trading_symbols(conn: psycopg.Connection, keys: list[str]) -> dict[str, str]:
    """key -> trading symbol, for each of `keys` the master has."""
    return dict(
        conn.execute(
            "SELECT instrument_key, trading_symbol FROM instruments WHERE instrument_key = ANY(%s)",
            [keys],
        ).fetchall()
    )


# What a search shows of each instrument.
INSTRUMENT_COLUMNS = (
    "instrument_key",
    "trading_symbol",
    "name",
    "segment",
    "exchange",
    "instrument_type",
    "expiry",
    "strike_price",
    "lot_size",
    "tick_size",
    "underlying_symbol",
    "active",
)


def _like_pattern(text: str) -> str:
    """A LIKE pattern for `text` anywhere in a string, its own % _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def instrument_search(
    text: str | None, segment: str | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of search_instruments, apart so its plan can be checked.

    Only the filters asked for are in the SQL, so the planner sees which indexes apply. The
    text is matched with LIKE on upper() of both sides, which sql/008's trigram indexes
    serve; `upper(pattern)` leaves the escapes alone, since no character's upper case is
    one of % _ or \\.
    """
    where, order = [], ["NOT active", "trading_symbol", "instrument_key"]
    params: dict[str, Any] = {"limit": limit}
    if text is not None:
        where.append(
            "(upper(trading_symbol) LIKE upper(%(pattern)s) OR upper(name) LIKE upper(%(pattern)s))"
        )
        order[:0] = [
            "upper(trading_symbol) = upper(%(text)s) IS NOT TRUE",
            "NOT starts_with(upper(trading_symbol), upper(%(text)s))",
        ]
        params |= {"text": text, "pattern": _like_pattern(text)}
    if segment is not None:
        where.append("segment = upper(%(segment)s)")
        params["segment"] = segment
    sql = (
        f"SELECT {', '.join(INSTRUMENT_COLUMNS)} FROM instruments"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {', '.join(order)} LIMIT %(limit)s"
    )
    return sql, params


def search_instruments(
    conn: psycopg.Connection, text: str | None, segment: str | None, limit: int
) -> list[dict[str, Any]]:
    """Instruments whose trading symbol or name contains `text` (any case, `%` and `_`
    included as they are), of `segment` if given: an exact symbol first, then symbols
    starting with the text, then the rest; within each, live instruments before the ones kept
    for history."""
    sql, params = instrument_search(text, segment, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        # Never prepared: a plan made for any text would use the trigram indexes for every
        # text, and a text of one or two letters, or one in most symbols, reads faster
        # without them. Planned with its text, each search gets the plan that suits it.
        return cur.execute(sql, params, prepare=False).fetchall()


def instrument_records(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every instrument as Upstox published it (the simulator builds its market from these)."""
    return [raw for (raw,) in conn.execute("SELECT raw FROM instruments ORDER BY instrument_key")]

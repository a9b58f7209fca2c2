-- Bars of any interval for SQL users and the API, on both editions:
--
--     SELECT * FROM bars('INFY', '15m', '2026-01-05 09:15+05:30', '2026-01-06 09:15+05:30');
--
-- 1m and 5m are the rows of ohlc_1m and ohlc_5m. Every other interval is built on read from
-- ohlc_1m: open is the first minute's open, close the last minute's close, high the highest
-- high, low the lowest low, volume and tick_count the sums. Intraday buckets are aligned to
-- the NSE session, origin 09:15 IST: 1h bars are 09:15-10:15, ..., 14:15-15:15, and the
-- session's last hour is 15:15-15:30 because the market closes then (a minute outside the
-- session lies in the bucket of the same grid that holds it: 09:08 is in 08:15-09:15).
-- 1d bars are IST trading dates, each stamped with its midnight IST. IST has no daylight
-- saving, so a fixed origin in +05:30 is the Asia/Kolkata grid. time_bucket with an origin
-- is in the Apache edition too: one file for both.

-- The intervals: name, width, the origin of their grid. `SELECT * FROM bar_intervals()`.
CREATE FUNCTION bar_intervals()
RETURNS TABLE (name text, width interval, origin timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
VALUES ('1m',  INTERVAL '1 minute',   '2000-01-03 09:15+05:30'::timestamptz),
       ('3m',  INTERVAL '3 minutes',  '2000-01-03 09:15+05:30'),
       ('5m',  INTERVAL '5 minutes',  '2000-01-03 09:15+05:30'),
       ('10m', INTERVAL '10 minutes', '2000-01-03 09:15+05:30'),
       ('15m', INTERVAL '15 minutes', '2000-01-03 09:15+05:30'),
       ('30m', INTERVAL '30 minutes', '2000-01-03 09:15+05:30'),
       ('1h',  INTERVAL '1 hour',     '2000-01-03 09:15+05:30'),
       ('1d',  INTERVAL '1 day',      '2000-01-03 00:00+05:30')
$$;

-- The instrument key a user means by a symbol; NULL when none. The rule of
-- store.instruments.resolve_symbols (the API's): around the symbol, whitespace is ignored
-- (ASCII whitespace here: what Python's str.strip() takes away from any symbol typed on a
-- keyboard); an instrument key is taken as it is when the master has it; otherwise it is a
-- trading symbol or an NSE index name ('Nifty 50'), in any case, and the NSE cash market
-- wins, then NSE indices, then the equity or index record of any other segment.
CREATE FUNCTION resolve_symbol(symbol text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS
$$
SELECT found.instrument_key
FROM (SELECT btrim(symbol, E' \t\n\r\f\x0b\x1c\x1d\x1e\x1f') AS name) AS wanted
CROSS JOIN LATERAL (
    SELECT instrument_key, segment, instrument_type, 0 AS by_symbol
    FROM instruments WHERE instrument_key = wanted.name
    UNION ALL
    SELECT instrument_key, segment, instrument_type, 1
    FROM instruments WHERE upper(trading_symbol) = upper(wanted.name)
    UNION ALL
    SELECT instrument_key, segment, instrument_type, 1
    FROM instruments WHERE segment = 'NSE_INDEX' AND upper(name) = upper(wanted.name)
) AS found
ORDER BY found.by_symbol,
         CASE found.segment WHEN 'NSE_EQ' THEN 0 WHEN 'NSE_INDEX' THEN 1 ELSE 2 END,
         found.instrument_type NOT IN ('EQ', 'INDEX'),
         found.instrument_key
LIMIT 1
$$;

-- The bars of one instrument whose bucket starts in [start_time, end_time), oldest first,
-- each bar whole (a 1h bar from 10:15 is all of 10:15-11:15 even when end_time is 10:30); a
-- NULL bound reads to that end of the data. `symbol` is a trading symbol, an index name or an
-- instrument key (resolve_symbol). An unknown interval or symbol is an error, not an empty
-- answer.
CREATE FUNCTION bars(
    symbol       text,
    bar_interval text,
    start_time   timestamptz DEFAULT NULL,
    end_time     timestamptz DEFAULT NULL
) RETURNS TABLE (
    bucket     timestamptz,
    open       double precision,
    high       double precision,
    low        double precision,
    close      double precision,
    volume     bigint,
    tick_count bigint
)
LANGUAGE plpgsql STABLE AS
$$
DECLARE
    instrument  text;
    bar_width   interval;
    bar_origin  timestamptz;
    low_bucket  timestamptz;  -- the first bucket starting at or after start_time
    high_bucket timestamptz;  -- the first bucket starting at or after end_time
BEGIN
    SELECT i.width, i.origin INTO bar_width, bar_origin
    FROM bar_intervals() AS i WHERE i.name = bar_interval;
    IF bar_width IS NULL THEN
        RAISE EXCEPTION 'unknown bar interval %', coalesce(quote_literal(bar_interval), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of '
                         || (SELECT string_agg(i.name, ', ') FROM bar_intervals() AS i) || '.';
    END IF;
    instrument := resolve_symbol(symbol);
    IF instrument IS NULL THEN
        RAISE EXCEPTION 'unknown symbol %', coalesce(quote_literal(symbol), 'NULL')
            USING ERRCODE = 'no_data_found',
                  HINT = 'No trading symbol, index name or instrument key in the instrument'
                         ' master matches it (`tickvault instruments load` fills the master).';
    END IF;

    -- A bucket starts in [start_time, end_time) exactly when it is in [low_bucket,
    -- high_bucket), and so do the 1-minute bars it is made of. An infinite or NULL bound is no
    -- bound (time_bucket takes finite times only).
    low_bucket := coalesce(start_time, '-infinity');
    IF isfinite(low_bucket) THEN
        low_bucket := time_bucket(bar_width, start_time - INTERVAL '1 microsecond', bar_origin)
                      + bar_width;
    END IF;
    high_bucket := coalesce(end_time, 'infinity');
    IF isfinite(high_bucket) THEN
        high_bucket := time_bucket(bar_width, end_time - INTERVAL '1 microsecond', bar_origin)
                       + bar_width;
    END IF;

    IF bar_interval = '1m' THEN
        RETURN QUERY
        SELECT b.bucket, b.open, b.high, b.low, b.close, b.volume, b.tick_count
        FROM ohlc_1m AS b
        WHERE b.instrument_key = instrument
          AND b.bucket >= low_bucket AND b.bucket < high_bucket
        ORDER BY b.bucket;
    ELSIF bar_interval = '5m' THEN
        RETURN QUERY
        SELECT b.bucket, b.open, b.high, b.low, b.close, b.volume, b.tick_count
        FROM ohlc_5m AS b
        WHERE b.instrument_key = instrument
          AND b.bucket >= low_bucket AND b.bucket < high_bucket
        ORDER BY b.bucket;
    ELSE
        RETURN QUERY
        SELECT time_bucket(bar_width, b.bucket, bar_origin),
               first(b.open, b.bucket),
               max(b.high),
               min(b.low),
               last(b.close, b.bucket),
               sum(b.volume)::bigint,
               sum(b.tick_count)::bigint
        FROM ohlc_1m AS b
        WHERE b.instrument_key = instrument
          AND b.bucket >= low_bucket AND b.bucket < high_bucket
        GROUP BY 1
        ORDER BY 1;
    END IF;
END
$$;

-- Bars say where they come from: `source` is 'live' (aggregated from the ticks we stored) or
-- 'backfill' (a 1-minute candle fetched from Upstox for a minute the store was not receiving,
-- `tickvault backfill`). The rules, the same on both editions:
--
-- * A minute that has ticks always comes from the ticks: a backfilled minute is shown only
--   while no tick of its instrument lies in it, so it never counts twice, and a late tick
--   takes the minute back from the candle at once.
-- * ohlc_5m is built from the 1-minute rows of either source and is 'backfill' when any minute
--   in it is. A 5-minute bucket with no backfilled minute is the live rollup's row as before.
--
-- The live relations keep doing what they did under new names (ohlc_1m_live, ohlc_5m_live:
-- continuous aggregates on Community, the watermark views of 006 on Apache, whose rollup
-- state and `_store` tables keep their names), and ohlc_1m / ohlc_5m become the views that
-- join them with the backfilled minutes. bars() (009) reads ohlc_1m and ohlc_5m by name, so
-- it serves backfilled minutes too.
DO $$
BEGIN
    IF current_setting('timescaledb.license') = 'timescale' THEN
        ALTER MATERIALIZED VIEW ohlc_1m RENAME TO ohlc_1m_live;
        ALTER MATERIALIZED VIEW ohlc_5m RENAME TO ohlc_5m_live;
    ELSE
        ALTER VIEW ohlc_1m RENAME TO ohlc_1m_live;
        ALTER VIEW ohlc_5m RENAME TO ohlc_5m_live;
    END IF;
END
$$;

-- The candles backfill stored, one per instrument and minute: only for minutes that had no
-- tick when they were stored (a tick that arrives later hides the candle, see below). A
-- backfilled minute shows tick_count 0: the store holds no tick of it.
CREATE TABLE ohlc_1m_backfill (
    instrument_key text             NOT NULL,
    bucket         timestamptz      NOT NULL,
    open           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    close          double precision NOT NULL,
    volume         bigint,
    oi             double precision,
    fetched_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument_key, bucket)
);
-- The backfilled minutes of a time range, of every instrument (store/coverage.py).
CREATE INDEX ohlc_1m_backfill_bucket ON ohlc_1m_backfill (bucket);

-- Whether a tick of `key` lies in the minute starting at `minute`. A function, not a join in
-- the views below: the planner would otherwise plan a probe of every tick chunk into every
-- read of ohlc_1m and ohlc_5m (about 10 ms more per read at 90 daily chunks), where this is
-- planned once per session and asked only of backfilled minutes.
CREATE FUNCTION minute_has_ticks(key text, minute timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS
$$
BEGIN
    RETURN EXISTS (
        SELECT FROM ticks
        WHERE instrument_key = key AND ts >= minute AND ts < minute + INTERVAL '1 minute'
    );
END
$$;

-- The backfilled minutes that count: those in which no tick of the instrument was stored.
CREATE VIEW ohlc_1m_filled AS
SELECT b.instrument_key, b.bucket, b.open, b.high, b.low, b.close, b.volume
FROM ohlc_1m_backfill AS b
WHERE NOT minute_has_ticks(b.instrument_key, b.bucket);

CREATE VIEW ohlc_1m AS
SELECT instrument_key, bucket, open, high, low, close, volume, tick_count,
       'live'::text AS source
FROM ohlc_1m_live
UNION ALL
SELECT instrument_key, bucket, open, high, low, close, volume, 0::bigint,
       'backfill'::text
FROM ohlc_1m_filled;

-- 5-minute buckets without a backfilled minute are the live rollup's rows; those with one
-- are aggregated on read from ohlc_1m (live and backfilled minutes together).
CREATE VIEW ohlc_5m AS
SELECT l.instrument_key, l.bucket, l.open, l.high, l.low, l.close, l.volume, l.tick_count,
       'live'::text AS source
FROM ohlc_5m_live AS l
WHERE NOT EXISTS (
    SELECT FROM ohlc_1m_filled AS f
    WHERE f.instrument_key = l.instrument_key
      AND f.bucket >= l.bucket AND f.bucket < l.bucket + INTERVAL '5 minutes'
)
UNION ALL
SELECT m.instrument_key,
       time_bucket(INTERVAL '5 minutes', m.bucket),
       first(m.open, m.bucket),
       max(m.high),
       min(m.low),
       last(m.close, m.bucket),
       sum(m.volume)::bigint,
       sum(m.tick_count)::bigint,
       'backfill'::text
FROM ohlc_1m AS m
WHERE EXISTS (
    SELECT FROM ohlc_1m_filled AS f
    WHERE f.instrument_key = m.instrument_key
      AND f.bucket >= time_bucket(INTERVAL '5 minutes', m.bucket)
      AND f.bucket < time_bucket(INTERVAL '5 minutes', m.bucket) + INTERVAL '5 minutes'
)
GROUP BY m.instrument_key, time_bucket(INTERVAL '5 minutes', m.bucket);

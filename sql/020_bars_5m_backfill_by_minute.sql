-- ohlc_5m finds its backfilled buckets from the backfilled minutes, not from every minute.
--
-- 012's view found the 5-minute buckets that hold a backfilled minute by reading every
-- 1-minute bar of the instruments and window asked for and probing each against
-- ohlc_1m_filled: a universe's month of 5-minute bars (180 instruments) read 1.5 million
-- 1-minute rows, sorted on disk, to find none, and took seconds where the live rollup's rows
-- alone take a fraction of one. The same buckets are now found from the backfilled minutes
-- themselves (few, and none on a day the feed was whole), and only their own 1-minute bars are
-- read, through a lateral subquery whose bounds reach ohlc_1m's indexes. The rows are the
-- same: a bucket with a backfilled minute is aggregated on read from ohlc_1m (live and
-- backfilled minutes together), every other bucket is the live rollup's.
CREATE OR REPLACE VIEW ohlc_5m AS
SELECT l.instrument_key, l.bucket, l.open, l.high, l.low, l.close, l.volume, l.tick_count,
       'live'::text AS source
FROM ohlc_5m_live AS l
WHERE NOT EXISTS (
    SELECT FROM ohlc_1m_filled AS f
    WHERE f.instrument_key = l.instrument_key
      AND f.bucket >= l.bucket AND f.bucket < l.bucket + INTERVAL '5 minutes'
)
UNION ALL
SELECT f.instrument_key, f.bucket, m.open, m.high, m.low, m.close, m.volume, m.tick_count,
       'backfill'::text
FROM (
    SELECT DISTINCT b.instrument_key, time_bucket(INTERVAL '5 minutes', b.bucket) AS bucket
    FROM ohlc_1m_filled AS b
) AS f
CROSS JOIN LATERAL (
    SELECT first(m.open, m.bucket) AS open,
           max(m.high) AS high,
           min(m.low) AS low,
           last(m.close, m.bucket) AS close,
           sum(m.volume)::bigint AS volume,
           sum(m.tick_count)::bigint AS tick_count
    FROM ohlc_1m AS m
    WHERE m.instrument_key = f.instrument_key
      AND m.bucket >= f.bucket AND m.bucket < f.bucket + INTERVAL '5 minutes'
) AS m;

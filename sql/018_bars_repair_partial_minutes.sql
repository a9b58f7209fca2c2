-- A minute the store heard only in part is repaired from the exchange's candle (issue 20).
--
-- 012 showed a backfilled candle only for a minute without ticks, so the minute the ingest
-- stopped in, the one it started again in and the one it first started in kept bars built
-- from part of their trades: wrong open or close, and too little volume. The rule now, the
-- same on both editions (this file only redefines the views 012 put on top of either
-- edition's live relations):
--
-- * A minute covered whole by a span of coverage_spans (sql/011) is the ticks' minute, as
--   before: a backfilled candle of it shows only while it has no tick.
-- * A minute no span covers whole is a gap minute: its backfilled candle, when backfill has
--   stored one, replaces whatever part of it the ticks heard. Until then the partial live
--   bar shows (coverage, GET /api/v1/coverage, lists the minute as a gap).
-- * ohlc_5m is built as before from the 1-minute rows of either source, so a 5-minute
--   bucket holding a repaired minute adds the candle's volume, never the partial one too.

-- Whether a span covers the whole minute starting at `minute` (store/coverage.py's rule).
CREATE FUNCTION minute_covered(minute timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS
$$
SELECT EXISTS (
    SELECT FROM coverage_spans
    WHERE ended_at >= minute + INTERVAL '1 minute' AND started_at <= minute
)
$$;

-- The backfilled minutes that count: gap minutes, and covered minutes without a tick.
CREATE OR REPLACE VIEW ohlc_1m_filled AS
SELECT b.instrument_key, b.bucket, b.open, b.high, b.low, b.close, b.volume
FROM ohlc_1m_backfill AS b
WHERE NOT minute_covered(b.bucket) OR NOT minute_has_ticks(b.instrument_key, b.bucket);

-- A live minute shows unless a backfilled candle counts for it. The probe is by primary key
-- of ohlc_1m_backfill, and costs a function call only for the rare minute that has a row.
CREATE OR REPLACE VIEW ohlc_1m AS
SELECT l.instrument_key, l.bucket, l.open, l.high, l.low, l.close, l.volume, l.tick_count,
       'live'::text AS source
FROM ohlc_1m_live AS l
WHERE NOT EXISTS (
    SELECT FROM ohlc_1m_backfill AS b
    WHERE b.instrument_key = l.instrument_key AND b.bucket = l.bucket
      AND (NOT minute_covered(b.bucket) OR NOT minute_has_ticks(b.instrument_key, b.bucket))
)
UNION ALL
SELECT instrument_key, bucket, open, high, low, close, volume, 0::bigint,
       'backfill'::text
FROM ohlc_1m_filled;

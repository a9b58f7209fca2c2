-- Community edition: OHLC bars as native continuous aggregates, real-time aggregation on so
-- ticks past the watermark show at once, the 5-minute layer built on the 1-minute one.
-- UTC-aligned 1- and 5-minute buckets already start at 09:15 IST (IST is UTC+05:30).
-- Created WITH NO DATA: materializing cannot run inside the migration's transaction.
CREATE MATERIALIZED VIEW ohlc_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT instrument_key,
       time_bucket(INTERVAL '1 minute', ts) AS bucket,
       first(ltp, ts)                       AS open,
       max(ltp)                             AS high,
       min(ltp)                             AS low,
       last(ltp, ts)                        AS close,
       sum(volume_delta)::bigint            AS volume,
       count(*)                             AS tick_count
FROM ticks
GROUP BY instrument_key, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW ohlc_5m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT instrument_key,
       time_bucket(INTERVAL '5 minutes', bucket) AS bucket,
       first(open, bucket)                       AS open,
       max(high)                                 AS high,
       min(low)                                  AS low,
       last(close, bucket)                       AS close,
       sum(volume)::bigint                       AS volume,
       sum(tick_count)::bigint                   AS tick_count
FROM ohlc_1m
GROUP BY instrument_key, time_bucket(INTERVAL '5 minutes', bucket)
WITH NO DATA;

-- The windows reach 3 days back so late ticks are folded in, and stay inside the 7 days
-- before compression.
SELECT add_continuous_aggregate_policy('ohlc_1m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('ohlc_5m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '5 minutes');

-- Apache edition (no continuous aggregates): the same two relation names, kept current by
-- tickvault's own incremental rollup (store/bars.py). Like a real-time continuous
-- aggregate, each view is the materialized part below a watermark plus a live aggregation
-- past it, so a query sees the same rows it would on Community.
CREATE TABLE ohlc_1m_store (
    instrument_key text             NOT NULL,
    bucket         timestamptz      NOT NULL,
    open           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    close          double precision NOT NULL,
    volume         bigint,
    tick_count     bigint           NOT NULL,
    PRIMARY KEY (instrument_key, bucket)
);
SELECT create_hypertable('ohlc_1m_store', by_range('bucket', INTERVAL '30 days'));

CREATE TABLE ohlc_5m_store (LIKE ohlc_1m_store INCLUDING ALL);
SELECT create_hypertable('ohlc_5m_store', by_range('bucket', INTERVAL '30 days'));

-- `watermark`: buckets below it are materialized (NULL: none yet). `changed_since`: ticks
-- inserted by transactions that started at or after it may be late ones the rollup has not
-- folded in yet.
CREATE TABLE bar_rollup_state (
    relation      text PRIMARY KEY,
    watermark     timestamptz,
    changed_since timestamptz,
    refreshed_at  timestamptz
);
INSERT INTO bar_rollup_state (relation) VALUES ('ohlc_1m'), ('ohlc_5m');

CREATE FUNCTION bar_watermark(relation_name text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT coalesce(watermark, '-infinity') FROM bar_rollup_state WHERE relation = relation_name $$;

CREATE VIEW ohlc_1m AS
SELECT instrument_key, bucket, open, high, low, close, volume, tick_count
FROM ohlc_1m_store
WHERE bucket < bar_watermark('ohlc_1m')
UNION ALL
SELECT instrument_key,
       time_bucket(INTERVAL '1 minute', ts),
       first(ltp, ts),
       max(ltp),
       min(ltp),
       last(ltp, ts),
       sum(volume_delta)::bigint,
       count(*)
FROM ticks
WHERE ts >= bar_watermark('ohlc_1m')
GROUP BY instrument_key, time_bucket(INTERVAL '1 minute', ts);

CREATE VIEW ohlc_5m AS
SELECT instrument_key, bucket, open, high, low, close, volume, tick_count
FROM ohlc_5m_store
WHERE bucket < bar_watermark('ohlc_5m')
UNION ALL
SELECT instrument_key,
       time_bucket(INTERVAL '5 minutes', bucket),
       first(open, bucket),
       max(high),
       min(low),
       last(close, bucket),
       sum(volume)::bigint,
       sum(tick_count)::bigint
FROM ohlc_1m
WHERE bucket >= bar_watermark('ohlc_5m')
GROUP BY instrument_key, time_bucket(INTERVAL '5 minutes', bucket);

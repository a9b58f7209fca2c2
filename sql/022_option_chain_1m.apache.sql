-- Apache edition: option_chain_1m as on Community (see the .timescale.sql file for what a row
-- is), kept by tickvault's rollup the way ohlc_1m is (sql/006_bars.apache.sql, store/bars.py):
-- the minutes materialized below the watermark, aggregated live from the ticks above it.
CREATE TABLE option_chain_1m_store (
    instrument_key text             NOT NULL,
    bucket         timestamptz      NOT NULL,
    ltp            double precision,
    bid_price      double precision,
    ask_price      double precision,
    volume         bigint,
    oi             double precision,
    iv             double precision,
    delta          double precision,
    theta          double precision,
    gamma          double precision,
    vega           double precision,
    rho            double precision,
    last_ts        timestamptz      NOT NULL,
    tick_count     bigint           NOT NULL,
    PRIMARY KEY (instrument_key, bucket)
);
SELECT create_hypertable('option_chain_1m_store', by_range('bucket', INTERVAL '30 days'));

-- It starts where the bars' rollup stands: the first pass then rolls up only what the bars'
-- next one does, instead of every tick ever stored inside the rollup's transaction (a long
-- store had no option ticks to speak of before chains were followed). Option ticks from
-- before this migration come in with `tickvault db refresh-bars --start ... --end ...`, as
-- on Community, whose policy materializes only the last 3 days.
INSERT INTO bar_rollup_state (relation, watermark, changed_since)
SELECT 'option_chain_1m', watermark, changed_since FROM bar_rollup_state
WHERE relation = 'ohlc_1m';

CREATE VIEW option_chain_1m AS
SELECT instrument_key, bucket, ltp, bid_price, ask_price, volume, oi, iv,
       delta, theta, gamma, vega, rho, last_ts, tick_count
FROM option_chain_1m_store
WHERE bucket < bar_watermark('option_chain_1m')
UNION ALL
SELECT instrument_key,
       time_bucket(INTERVAL '1 minute', ts),
       last(ltp, ts), last(bid_price, ts), last(ask_price, ts), last(vtt, ts), last(oi, ts),
       last(iv, ts), last(delta, ts), last(theta, ts), last(gamma, ts), last(vega, ts),
       last(rho, ts), max(ts), count(*)
FROM ticks
WHERE ts >= bar_watermark('option_chain_1m') AND delta IS NOT NULL
GROUP BY instrument_key, time_bucket(INTERVAL '1 minute', ts);

-- A chain's contracts by underlying and expiry (store/option_chain.py).
CREATE INDEX instruments_option_chain ON instruments (underlying_key, expiry)
    WHERE instrument_type IN ('CE', 'PE');

-- Community edition: a chain's history, one row per option contract and minute: the last
-- tick's state in that minute (its price, book, the day's volume, OI, IV and greeks), so "IV of
-- the ATM call through the day" or "OI build-up by strike" reads minutes, not ticks. Option
-- ticks are the ones with greeks (`delta` is NULL on every other instrument's ticks). A
-- continuous aggregate kept like ohlc_1m (sql/006): real-time, the same 3-day window.
-- The Apache edition's file makes the same relation from tickvault's rollup (store/bars.py).
CREATE MATERIALIZED VIEW option_chain_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT instrument_key,
       time_bucket(INTERVAL '1 minute', ts) AS bucket,
       last(ltp, ts)                        AS ltp,
       last(bid_price, ts)                  AS bid_price,
       last(ask_price, ts)                  AS ask_price,
       last(vtt, ts)                        AS volume,
       last(oi, ts)                         AS oi,
       last(iv, ts)                         AS iv,
       last(delta, ts)                      AS delta,
       last(theta, ts)                      AS theta,
       last(gamma, ts)                      AS gamma,
       last(vega, ts)                       AS vega,
       last(rho, ts)                        AS rho,
       max(ts)                              AS last_ts,
       count(*)                             AS tick_count
FROM ticks
WHERE delta IS NOT NULL
GROUP BY instrument_key, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('option_chain_1m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');

-- A chain's contracts by underlying and expiry (store/option_chain.py).
CREATE INDEX instruments_option_chain ON instruments (underlying_key, expiry)
    WHERE instrument_type IN ('CE', 'PE');

-- The parity audit's results: our 1-minute bars against Upstox's 1-minute candles, one row
-- per instrument and run (`tickvault audit`, GET /api/v1/audit, the post-close audit).
-- A plain table on both editions. The latest row of an instrument and date is its verdict;
-- earlier runs stay for the record.
--
-- bars_verdict:   'clean' (every bucket on both sides and equal), 'differs' (a field apart
--                 or a bucket missing on either side), 'no_candles' (Upstox had none: the
--                 instrument did not trade there, or the day is past its history),
--                 'error' (the candles could not be fetched: details.error says why)
-- volume_verdict: 'conserved' (the sum of the ticks' volume_delta equals the candles'
--                 volume), 'differs' otherwise, 'unknown' without candles
-- details:        the buckets that differ (field, ours, theirs, ticks of tick_size or percent
--                 of volume), the missing buckets and the volume sums (ingest/jobs/parity.py)
CREATE TABLE audit_results (
    run_id            uuid        NOT NULL,
    run_at            timestamptz NOT NULL DEFAULT now(),
    trading_date      date        NOT NULL,  -- IST
    instrument_key    text        NOT NULL,
    bars_verdict      text        NOT NULL
        CHECK (bars_verdict IN ('clean', 'differs', 'no_candles', 'error')),
    volume_verdict    text        NOT NULL CHECK (volume_verdict IN ('conserved', 'differs', 'unknown')),
    buckets_equal     integer     NOT NULL,
    buckets_differing integer     NOT NULL,
    missing_ours      integer     NOT NULL,  -- candles with no bar of ours
    missing_theirs    integer     NOT NULL,  -- bars of ours with no candle
    details           jsonb       NOT NULL,
    PRIMARY KEY (run_id, instrument_key)
);

CREATE INDEX audit_results_date ON audit_results (trading_date, instrument_key, run_at DESC);

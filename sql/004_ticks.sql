-- Raw ticks, one row per (conflated) feed update.
--
-- Chunks of one day: a trading day of a few thousand instruments fits one chunk, recent
-- chunks stay in memory, and retention or compression works in whole days.
-- No unique key: it would cost about 30% of COPY throughput, and exactly-once comes from the
-- ingest journal instead (each batch is recorded in ingest_batches in the same transaction).
-- `inserted_at` is the server's clock when the row was written (not its transaction's start,
-- which can precede a bar refresh that the row then slips past); with its BRIN index the
-- Apache-edition bar rollup finds ticks that arrived late for already rolled-up bars without
-- a per-row trigger (hypertables have no transition tables).
CREATE TABLE ticks (
    instrument_key text             NOT NULL,
    ts             timestamptz      NOT NULL,  -- the exchange's last trade time
    ltp            double precision NOT NULL,
    ltq            bigint,
    vtt            bigint,
    volume_delta   bigint,                     -- volume since this instrument's previous tick
    cp             double precision,
    atp            double precision,
    oi             double precision,
    iv             double precision,
    tbq            double precision,
    tsq            double precision,
    bid_price      double precision,
    bid_qty        bigint,
    ask_price      double precision,
    ask_qty        bigint,
    delta          double precision,
    theta          double precision,
    gamma          double precision,
    vega           double precision,
    rho            double precision,
    feed_ts        timestamptz,                -- the frame's server time
    received_at    timestamptz      NOT NULL DEFAULT now(),
    inserted_at    timestamptz      NOT NULL DEFAULT clock_timestamp()
);

SELECT create_hypertable('ticks', by_range('ts', INTERVAL '1 day'));

-- (ts DESC) comes with the hypertable; per-instrument time ranges are the common query.
CREATE INDEX ticks_instrument_ts ON ticks (instrument_key, ts DESC);
CREATE INDEX ticks_inserted_at ON ticks USING brin (inserted_at);

-- One row per committed ingest batch, written in the batch's own transaction: after a crash
-- the journal replays exactly the frames after the last committed sequence number.
CREATE TABLE ingest_batches (
    journal_id   text        NOT NULL,
    batch_id     bigint      NOT NULL,
    first_seq    bigint      NOT NULL,
    last_seq     bigint      NOT NULL,
    row_count    integer     NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journal_id, batch_id)
);

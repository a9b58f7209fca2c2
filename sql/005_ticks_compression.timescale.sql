-- Community edition only: compress tick chunks by instrument, newest first inside each
-- segment, once they are older than the bars' refresh window (3 days), so that late ticks
-- still land in uncompressed chunks and bar refreshes never read compressed data.
ALTER TABLE ticks SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'instrument_key',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('ticks', compress_after => INTERVAL '7 days');

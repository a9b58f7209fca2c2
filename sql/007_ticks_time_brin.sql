-- The hypertable's default b-tree on (ts DESC) gives way to a BRIN index on ts.
--
-- Ticks arrive in time order, so a BRIN index (a few pages for a whole day's chunk) serves
-- the time-range scans that read ticks without naming an instrument: the bar rollup, the
-- continuous aggregates' refresh, `WHERE ts >= ...` in a user's query. The b-tree cost the
-- server about a fifth of its work per row written (measured in bench/: 97.6k ticks/s
-- committed end to end without it, 78.6k with it), and per-instrument queries never used it:
-- they go through ticks_instrument_ts. What it alone made fast, `max(ts)` or
-- `ORDER BY ts DESC LIMIT n` over every instrument, is better asked per instrument (the
-- newest tick of each subscribed key is one probe of ticks_instrument_ts).
DROP INDEX ticks_ts_idx;
CREATE INDEX ticks_ts_brin ON ticks USING brin (ts);

-- The ticks' two BRIN indexes, on ts and on inserted_at, become one over both columns.
--
-- The Apache rollup's search for late ticks asks for the rows written since its last pass
-- whose time is below its watermark (store/bars.py). With an index per column the planner
-- took the ts index alone, whose ranges below the watermark are the whole day so far, and
-- read all of them in every pass: a pass's cost grew with the day (2.6 s of server time at
-- 10M ticks, BENCHMARKS.md). One index over both columns tests both in each range, so such
-- a pass reads only the ranges written lately that hold a tick below the watermark, and a
-- query on either column alone is served as before (a BRIN index has no leading column).
-- On a store of months of ticks the new index is built by one sequential read of them all,
-- while writes to ticks wait: migrate before the market opens.
DROP INDEX ticks_ts_brin;
DROP INDEX ticks_inserted_at;
CREATE INDEX ticks_time_brin ON ticks USING brin (ts, inserted_at);

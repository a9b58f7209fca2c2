-- The Apache-edition rollup remembers the snapshot each pass started from, so that the next
-- pass treats as late only the ticks that pass could not have seen (store/bars.py). Without
-- it, every tick inserted in the time margin before a pass was taken for late again, and the
-- buckets of the minute just rolled up were aggregated afresh two or three times.
ALTER TABLE bar_rollup_state ADD COLUMN snapshot pg_snapshot;

-- Retention decides in Python now (store/retention.py), on both editions: a day's tick chunk
-- is dropped only after the day's Parquet files were read back and matched the database's
-- rows of that day, compared under a lock that stops writes to the chunk, in the transaction
-- that drops it. A function inside the database cannot read the files, so 015's check
-- (`tick_chunk_archived`, which compared a count with a table row) and the Community
-- edition's TimescaleDB job that ran it are removed; tickvault runs tick retention itself
-- (the ingest's daily schedule, `tickvault archive --retention`). Bar retention policies on
-- Community stay as they are.
DO $$
BEGIN
    PERFORM delete_job(job_id) FROM timescaledb_information.jobs
    WHERE proc_name = 'tick_retention_job' AND proc_schema = current_schema();
END
$$;
DROP PROCEDURE tick_retention_job(integer, jsonb);
DROP FUNCTION drop_old_tick_chunks(interval, boolean);
DROP FUNCTION tick_chunk_archived(timestamptz, timestamptz);

-- Why retention last found the day's archive unfit to stand for the database: files or
-- manifest missing or unreadable, or not holding the rows recorded here, or the database's
-- rows changed since. NULL when none was found. The next archive run writes such a day
-- again (store/archive.py's unarchived_days), and clears it.
ALTER TABLE tick_archive_days ADD COLUMN problem text;
-- verified_at is from now on set when retention drops a chunk holding ticks of the day,
-- after comparing them with the archive: from then on part of the day may be gone, and the
-- archive is the day's only whole copy.

-- What each run kept and why: {"YYYY-MM-DD": "reason"}, every day retention found it may
-- not drop (held_back_by is the oldest of them that stopped the run's drops).
ALTER TABLE tick_retention_runs ADD COLUMN kept jsonb NOT NULL DEFAULT '{}';

-- The tick chunks retention may consider, oldest first: those ending at least `keep` ago,
-- and on the Apache edition never past the bars' rollup watermark, so no minute loses its
-- bar with its ticks (Community's continuous aggregates refresh 3 days back, well inside the
-- retention tickvault accepts).
CREATE FUNCTION tick_chunks_past(keep interval)
RETURNS TABLE (chunk regclass, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql STABLE AS
$$
DECLARE
    target timestamptz := now() - keep;
BEGIN
    IF to_regprocedure('bar_watermark(text)') IS NOT NULL THEN
        EXECUTE 'SELECT least($1, bar_watermark(''ohlc_1m''), bar_watermark(''ohlc_5m''))'
            INTO target USING target;
    END IF;
    RETURN QUERY
        SELECT format('%I.%I', c.chunk_schema, c.chunk_name)::regclass,
               c.range_start, c.range_end
        FROM timescaledb_information.chunks c
        WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = 'ticks'
          AND c.range_end <= target
        ORDER BY c.range_start;
END
$$;

-- Drop one tick chunk, as the schema's owner (drop_chunks needs the owner), so the app's
-- role (deploy/app_role.py), which may already delete any tick, can run retention too; a
-- role that may not delete ticks may not drop them either. The caller has compared the chunk's days with the archive under its own locks first, in the
-- same transaction. The number of chunks dropped: 1, or 0 when `chunk` is not a chunk of
-- ticks.
CREATE FUNCTION drop_tick_chunk(chunk regclass)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS
$$
DECLARE
    bounds  record;
    dropped integer;
BEGIN
    IF NOT has_table_privilege(session_user, 'ticks', 'DELETE') THEN
        RAISE EXCEPTION 'permission denied: % may not delete ticks', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.range_start, c.range_end INTO bounds
    FROM timescaledb_information.chunks c
    WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = 'ticks'
      AND format('%I.%I', c.chunk_schema, c.chunk_name)::regclass = chunk;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO dropped
    FROM drop_chunks('ticks', older_than => bounds.range_end, newer_than => bounds.range_start);
    RETURN dropped;
END
$$;

-- The data lifecycle, on both editions: days of ticks archived to Parquet, and retention that
-- drops old tick chunks only once every day they hold is archived.
--
-- The retention functions and the Community job below are dropped again by
-- 017_retention_reads_archive.sql: their check compared a count with this table and never
-- read the files. Retention now reads each day's archive back in tickvault (store/retention.py).
--
-- A day is the IST trading date. A row here is written by store/archive.py only after the
-- Parquet files were written, read back and found to hold exactly the database's rows (the
-- same count and checksum computed on both sides), so it is the proof retention asks for.
CREATE TABLE tick_archive_days (
    day         date        PRIMARY KEY,  -- IST trading date
    row_count   bigint      NOT NULL,
    checksum    text        NOT NULL,     -- store.archive.Manifest.checksum
    directory   text        NOT NULL,     -- the day's directory, relative to the archive root
    archived_at timestamptz NOT NULL DEFAULT now(),
    -- When retention last found the database still holding exactly row_count ticks of the
    -- day; from then on, part of the day may be gone (a day spans two UTC chunks). From 017
    -- on: when retention dropped a chunk holding ticks of the day, after reading it back.
    verified_at timestamptz
);

-- One row per retention run, whoever ran it (tickvault's own job on Apache, the TimescaleDB
-- job on Community, `tickvault archive`'s caller; from 017 on always tickvault): what was
-- dropped and what held it back.
CREATE TABLE tick_retention_runs (
    ran_at           timestamptz PRIMARY KEY DEFAULT clock_timestamp(),
    keep             interval    NOT NULL,
    require_archived boolean     NOT NULL,
    cutoff           timestamptz,           -- chunks ending at or before it were dropped
    chunks_dropped   integer     NOT NULL,
    held_back_by     date                   -- the oldest day not archived (or changed since)
);

-- Whether the tick chunk [chunk_start, chunk_end) may go: every IST day it holds ticks of is
-- archived, and the database still held exactly the archived rows of each such day when
-- first checked. Marks the days it checked as verified.
CREATE FUNCTION tick_chunk_archived(chunk_start timestamptz, chunk_end timestamptz)
RETURNS date  -- NULL when the chunk may go, else the day that holds it back
LANGUAGE plpgsql AS
$$
DECLARE
    archived   tick_archive_days;
    held_day   date;
    day_start  timestamptz;
    day_end    timestamptz;
BEGIN
    FOR held_day IN
        SELECT generate_series((chunk_start AT TIME ZONE 'Asia/Kolkata')::date,
                               ((chunk_end - INTERVAL '1 microsecond')
                                   AT TIME ZONE 'Asia/Kolkata')::date,
                               INTERVAL '1 day')::date
    LOOP
        day_start := held_day::timestamp AT TIME ZONE 'Asia/Kolkata';
        day_end := (held_day + 1)::timestamp AT TIME ZONE 'Asia/Kolkata';
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM ticks
            WHERE ts >= greatest(day_start, chunk_start) AND ts < least(day_end, chunk_end));
        SELECT * INTO archived FROM tick_archive_days WHERE day = held_day;
        IF NOT FOUND THEN
            RETURN held_day;
        END IF;
        IF archived.verified_at IS NULL THEN
            IF (SELECT count(*) FROM ticks WHERE ts >= day_start AND ts < day_end)
                    <> archived.row_count THEN
                RETURN held_day;  -- ticks came or went since: archive the day again
            END IF;
            UPDATE tick_archive_days SET verified_at = now() WHERE day = held_day;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Drop the tick chunks that end at least `keep` ago, oldest first, stopping at the first one
-- that holds a day not archived when `require_archived`. On the Apache edition also never
-- past the bars' rollup watermark, so no minute loses its bar with its ticks (Community's
-- continuous aggregates refresh 3 days back, well inside the retention tickvault accepts).
CREATE FUNCTION drop_old_tick_chunks(keep interval, require_archived boolean)
RETURNS tick_retention_runs
LANGUAGE plpgsql AS
$$
DECLARE
    target  timestamptz := now() - keep;
    cutoff  timestamptz;
    held    date;
    chunk   record;
    dropped integer := 0;
    run     tick_retention_runs;
BEGIN
    IF to_regprocedure('bar_watermark(text)') IS NOT NULL THEN
        EXECUTE 'SELECT least($1, bar_watermark(''ohlc_1m''), bar_watermark(''ohlc_5m''))'
            INTO target USING target;
    END IF;
    FOR chunk IN
        SELECT c.range_start, c.range_end FROM timescaledb_information.chunks c
        WHERE c.hypertable_schema = current_schema() AND c.hypertable_name = 'ticks'
          AND c.range_end <= target
        ORDER BY c.range_start
    LOOP
        IF require_archived THEN
            held := tick_chunk_archived(chunk.range_start, chunk.range_end);
            EXIT WHEN held IS NOT NULL;
        END IF;
        cutoff := chunk.range_end;
    END LOOP;
    IF cutoff IS NOT NULL THEN
        SELECT count(*) INTO dropped FROM drop_chunks('ticks', older_than => cutoff);
    END IF;
    INSERT INTO tick_retention_runs (keep, require_archived, cutoff, chunks_dropped, held_back_by)
    VALUES (keep, require_archived, cutoff, dropped, held)
    RETURNING * INTO run;
    RETURN run;
END
$$;

-- What the Community edition's TimescaleDB job runs (store/retention.py adds it with the
-- configured interval as `drop_after`), so retention goes on while tickvault is stopped.
CREATE PROCEDURE tick_retention_job(job_id integer, config jsonb)
LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM drop_old_tick_chunks((config ->> 'drop_after')::interval,
                                 (config ->> 'require_archived')::boolean);
END
$$;

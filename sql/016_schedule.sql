-- The daily schedule's record (ingest/jobs/schedule/runner.py): one row per attempt of a step of a
-- trading day's phase. A step is done for the day when it has an attempt with outcome 'ok'
-- or 'failed' (given up after its retries); 'retrying' attempts are followed by another, so
-- an ingest restarted mid-retry carries on counting, and one restarted after a phase's time
-- runs the steps not done yet, once.
--
--     SELECT day, phase, step, attempt, outcome, result FROM schedule_runs
--     ORDER BY finished_at DESC LIMIT 20;
CREATE TABLE schedule_runs (
    day         date        NOT NULL,  -- the IST trading day the phase belongs to
    phase       text        NOT NULL CHECK (phase IN ('preopen', 'postclose')),
    step        text        NOT NULL,
    attempt     integer     NOT NULL CHECK (attempt >= 1),
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'retrying', 'failed')),
    result      text        NOT NULL,  -- the step's own short report, or its error
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (day, phase, step, attempt)
);

-- The status's "last run" of each step.
CREATE INDEX schedule_runs_step_finished ON schedule_runs (step, finished_at DESC);

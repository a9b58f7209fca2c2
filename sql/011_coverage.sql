-- When the store was actually receiving: one row per span of one feed connection, from the
-- first to the last frame it delivered while connected. The ingest opens a span at the first
-- frame after a connect and moves `ended_at` forward every few seconds (never per tick); a
-- new connect, or a restart, opens a new span. A session minute outside every span, for an
-- instrument subscribed then, is a gap (store/coverage.py, GET /api/v1/coverage).
CREATE TABLE coverage_spans (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection integer     NOT NULL,  -- the feed connection's index in the ingest
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    CHECK (ended_at >= started_at)
);

-- A day's spans: those that end after it starts (the table stays small: a few rows a day).
CREATE INDEX coverage_spans_ended_at ON coverage_spans (ended_at);

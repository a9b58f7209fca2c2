-- The spans that touch a day, found by what they cover: the index on ended_at alone (011)
-- finds the spans that end after a day starts, which for a day long past is every span
-- recorded since. Read by store/coverage.py's gaps with `&&`, whatever the table's length.
CREATE INDEX coverage_spans_during ON coverage_spans
    USING gist (tstzrange(started_at, ended_at, '[]'));

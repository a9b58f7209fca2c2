-- Signals: what custom handlers conclude from ticks ("INFY volume spike"), one row each
-- (ingest/signals.py emits them, store/signals.py writes and reads them).
--
-- A signal emitted by a handler in the ingest is keyed by where it came from: the journal
-- frame of the tick that caused it (journal_id, seq), the handler, and its index `n` among
-- that handler's signals from that frame. A crash makes the ingest replay journal frames
-- through the handlers again; the signals they emit again carry the same key, and the unique
-- index below refuses the ones already stored (ON CONFLICT DO NOTHING). A signal from a
-- notebook has a journal_id of its own ('notebook:' and a random id) and seq 0.
-- `ts` is the causing tick's time, so a replayed signal has the same one; the unique index
-- includes it because a hypertable's unique indexes must hold its time column.
CREATE TABLE signals (
    ts             timestamptz      NOT NULL,  -- the time of the tick that caused it
    symbol         text             NOT NULL,  -- trading symbol or index name
    instrument_key text             NOT NULL,
    name           text             NOT NULL,  -- what was concluded: 'volume_spike'
    value          double precision NOT NULL,
    side           text CHECK (side IN ('buy', 'sell')),
    fields         jsonb            NOT NULL DEFAULT '{}',
    handler        text             NOT NULL,  -- who emitted it
    journal_id     text             NOT NULL,
    seq            bigint           NOT NULL,
    n              integer          NOT NULL,
    emitted_at     timestamptz      NOT NULL DEFAULT now()
);

SELECT create_hypertable('signals', by_range('ts', INTERVAL '7 days'));

CREATE UNIQUE INDEX signals_origin ON signals (journal_id, seq, handler, n, ts);
CREATE INDEX signals_instrument_ts ON signals (instrument_key, ts DESC);
CREATE INDEX signals_name_ts ON signals (name, ts DESC);

-- How far the signals are complete: every custom handler has handled every tick of the
-- frames up to last_seq, and every signal it emitted from them is in `signals`. Written in
-- the same transaction as those signals. After a crash the handlers are given the frames
-- after it again (the journal keeps them until then), so no signal of a frame is lost
-- between its emit and its commit.
CREATE TABLE signal_progress (
    journal_id text        PRIMARY KEY,
    last_seq   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

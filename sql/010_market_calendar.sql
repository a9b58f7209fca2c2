-- The market calendar, cached from Upstox (`/v2/market/timings/{date}`, `/v2/market/holidays`)
-- and refreshed daily by the ingest, so coverage, backfill and the audit know which minutes of
-- a day were supposed to trade without asking Upstox again.
--
-- A row in market_days means "we know this exchange's day": its sessions are the rows of
-- market_sessions (none on a holiday without a special session). A day with no row here is
-- unknown, and store.calendar falls back to the regular weekday session.
CREATE TABLE market_days (
    trading_date  date NOT NULL,          -- the IST calendar day
    exchange      text NOT NULL,          -- NSE, NFO, BSE, BFO, CDS, BCD, MCX
    source        text NOT NULL CHECK (source IN ('timings', 'holidays')),
    holiday_type  text,                   -- TRADING_HOLIDAY, SPECIAL_TIMING, ...; NULL: a normal day
    description   text,
    fetched_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trading_date, exchange)
);

CREATE TABLE market_sessions (
    trading_date  date NOT NULL,
    exchange      text NOT NULL,
    start_at      timestamptz NOT NULL,   -- inclusive
    end_at        timestamptz NOT NULL,   -- exclusive
    PRIMARY KEY (trading_date, exchange, start_at),
    FOREIGN KEY (trading_date, exchange) REFERENCES market_days ON DELETE CASCADE,
    CHECK (end_at > start_at)
);

-- The live segment statuses of the feed's market_info frames, one row per change, so a quant
-- can tell a silent feed in a closed market from a stalled one.
CREATE TABLE market_segment_status (
    segment  text NOT NULL,               -- NSE_EQ, NSE_FO, NSE_INDEX, ...
    status   text NOT NULL CHECK (status IN ('PRE_OPEN_START', 'PRE_OPEN_END', 'NORMAL_OPEN',
                                             'NORMAL_CLOSE', 'CLOSING_START', 'CLOSING_END')),
    at       timestamptz NOT NULL,
    PRIMARY KEY (segment, at)
);

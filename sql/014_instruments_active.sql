-- Instruments that left Upstox's master, or expired, are kept and marked inactive: old ticks
-- reference them by key, and history must still resolve them (`tickvault instruments
-- refresh`, store/instrument_refresh.py, sets the mark; a plain `instruments load` marks the
-- file's instruments active).
ALTER TABLE instruments
    ADD COLUMN active boolean NOT NULL DEFAULT true,
    ADD COLUMN inactive_since timestamptz;

-- The F&O universe: stocks with a live future (store.instruments.fno_universe).
CREATE INDEX instruments_live_equity_futures ON instruments (underlying_key)
    WHERE active AND segment = 'NSE_FO' AND instrument_type = 'FUT'
          AND underlying_type = 'EQUITY';

-- The search lists live instruments before the ones kept for history: its listing (no text)
-- reads this index in that order instead of sorting the master.
DROP INDEX instruments_listing;
CREATE INDEX instruments_listing ON instruments ((NOT active), trading_symbol, instrument_key);

-- As sql/009's, with one more rule: among instruments answering to the same trading symbol or
-- index name, a live one wins over one kept for history (a stock listed again under a new
-- key). An instrument key is still taken as it is, live or not, and a symbol only inactive
-- instruments answer to still resolves: their ticks stay reachable.
CREATE OR REPLACE FUNCTION resolve_symbol(symbol text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS
$$
SELECT found.instrument_key
FROM (SELECT btrim(symbol, E' \t\n\r\f\x0b\x1c\x1d\x1e\x1f') AS name) AS wanted
CROSS JOIN LATERAL (
    SELECT instrument_key, segment, instrument_type, active, 0 AS by_symbol
    FROM instruments WHERE instrument_key = wanted.name
    UNION ALL
    SELECT instrument_key, segment, instrument_type, active, 1
    FROM instruments WHERE upper(trading_symbol) = upper(wanted.name)
    UNION ALL
    SELECT instrument_key, segment, instrument_type, active, 1
    FROM instruments WHERE segment = 'NSE_INDEX' AND upper(name) = upper(wanted.name)
) AS found
ORDER BY found.by_symbol,
         NOT found.active,
         CASE found.segment WHEN 'NSE_EQ' THEN 0 WHEN 'NSE_INDEX' THEN 1 ELSE 2 END,
         found.instrument_type NOT IN ('EQ', 'INDEX'),
         found.instrument_key
LIMIT 1
$$;

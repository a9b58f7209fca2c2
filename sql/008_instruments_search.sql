-- Indexes for the instrument search, GET /api/v1/instruments (store/instruments.py).
--
-- With a text, the search finds it anywhere in a trading symbol or a name, in any case:
-- `upper(trading_symbol) LIKE upper('%text%') OR upper(name) LIKE ...`. No b-tree serves a
-- match in the middle of a string, so every search read the whole master (80-230 ms at 150k
-- instruments); trigram indexes find the rows that share the text's trigrams, and LIKE
-- rechecks them. GIN rather than GiST: the master is read far more often than it is loaded
-- (they add about 2 s to loading 150k instruments). pg_trgm is a trusted extension from
-- PostgreSQL's contrib (Debian's postgresql-15, the timescale/timescaledb image), so the
-- database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX instruments_symbol_trgm ON instruments USING gin (upper(trading_symbol) gin_trgm_ops);
CREATE INDEX instruments_name_trgm ON instruments USING gin (upper(name) gin_trgm_ops);

-- Without a text, the search lists the master in symbol order, a page of at most 100: read
-- from this index, rather than by sorting the whole table for every page.
CREATE INDEX instruments_listing ON instruments (trading_symbol, instrument_key);

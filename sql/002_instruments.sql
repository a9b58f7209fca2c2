-- The Upstox instrument master. `instrument_key` is the identity: exchange tokens are reused
-- after expiry, so they are kept as data, never as a key. `raw` keeps the whole record so a
-- field Upstox adds later is not lost before we give it a column.
CREATE TABLE instruments (
    instrument_key    text PRIMARY KEY,
    trading_symbol    text NOT NULL,
    name              text,
    short_name        text,
    segment           text NOT NULL,
    exchange          text,
    instrument_type   text NOT NULL,
    security_type     text,
    isin              text,
    exchange_token    text,
    lot_size          integer,
    minimum_lot       integer,
    freeze_quantity   double precision,
    tick_size         double precision,  -- in paise, as Upstox publishes it (5.0 = Rs 0.05)
    expiry            timestamptz,
    strike_price      double precision,
    weekly            boolean,
    underlying_key    text,
    underlying_symbol text,
    underlying_type   text,
    asset_key         text,
    raw               jsonb NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX instruments_trading_symbol ON instruments (upper(trading_symbol));
CREATE INDEX instruments_segment_type ON instruments (segment, instrument_type);
CREATE INDEX instruments_underlying ON instruments (underlying_key);

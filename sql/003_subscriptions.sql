-- What the feed is, or should be, subscribed to. The ingest service reads this at start, so
-- a restart resumes the same universe in the same modes.
CREATE TABLE subscriptions (
    instrument_key text PRIMARY KEY,
    mode           text NOT NULL DEFAULT 'full'
                   CHECK (mode IN ('ltpc', 'full', 'option_greeks', 'full_d30')),
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'subscribed', 'failed', 'unsubscribed')),
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    subscribed_at  timestamptz
);

CREATE INDEX subscriptions_status ON subscriptions (status);

-- The site and billing: what a checkout intent offered at the moment the user clicked.

ALTER TABLE checkout_intents
    ADD COLUMN stripe_price_id text,
    ADD COLUMN mode text CHECK (mode IN ('payment', 'subscription', 'portal'));

-- Trial generations are found by their browser session when the visitor signs up.
CREATE INDEX generations_trial_session_idx ON generations (trial_session_hash) WHERE trial_session_hash IS NOT NULL;

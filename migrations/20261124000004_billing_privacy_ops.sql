-- Billing (Stripe), privacy machinery (trial fingerprints, exports, policy notices, e-mail) and fleet state.

-- One Stripe customer per user, created once and reused.
CREATE TABLE stripe_customers (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    customer_id  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every webhook event, recorded before it is processed (ON CONFLICT DO NOTHING on id makes redelivery harmless).
CREATE TABLE stripe_events (
    id            text PRIMARY KEY,
    type          text NOT NULL,
    -- Stripe's `created`, used to ignore events older than the state already mirrored.
    created       timestamptz NOT NULL,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    outcome       text
);
CREATE INDEX stripe_events_unprocessed_idx ON stripe_events (received_at) WHERE processed_at IS NULL;

-- A user's intent to pay; the worker turns it into a Checkout or portal session and stores the URL.
CREATE TABLE checkout_intents (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('pack', 'plan', 'portal')),
    product_id   text,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'failed')),
    stripe_session_id text UNIQUE,
    url          text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    stripe_subscription_id text PRIMARY KEY,
    user_id      uuid REFERENCES users (id) ON DELETE SET NULL,
    plan_id      text NOT NULL,
    status       text NOT NULL,
    current_period_end timestamptz,
    -- Stripe `created` of the event (or API read) this row mirrors; older events never overwrite it.
    source_created_at timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id);

-- Payment records, kept 7 years for tax and audit (policy §4). When the account is deleted, user_id is cleared
-- and `pseudonym` (a random id, unlinkable to the person) is all that remains; e-mail and name never live here.
CREATE TABLE payments (
    id                 uuid PRIMARY KEY,
    user_id            uuid REFERENCES users (id) ON DELETE SET NULL,
    pseudonym          text NOT NULL,
    stripe_customer_id text,
    -- The Stripe object that paid: checkout session or invoice id.
    stripe_object_id   text NOT NULL UNIQUE,
    product_id         text NOT NULL,
    amount_minor       bigint NOT NULL,
    currency           text NOT NULL CHECK (currency = lower(currency) AND length(currency) = 3),
    paid_at            timestamptz NOT NULL,
    refunded_minor     bigint NOT NULL DEFAULT 0,
    disputed_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_user_idx ON payments (user_id);
CREATE INDEX payments_paid_at_idx ON payments (paid_at);

-- Trial fingerprints (policy §1.4): HMAC-SHA256(pepper, ip ‖ user agent ‖ …). Never the IP itself.
-- Deleted after 24 hours by the hourly expiry job.
CREATE TABLE trial_fingerprints (
    fingerprint    bytea PRIMARY KEY CHECK (length(fingerprint) = 32),
    generation_id  uuid REFERENCES generations (id) ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trial_fingerprints_created_idx ON trial_fingerprints (created_at);

-- The keys for those hashes, rotated daily. A fingerprint is checked against the peppers of the last 24 h.
CREATE TABLE hash_peppers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret      bytea NOT NULL CHECK (length(secret) = 32),
    -- The day this pepper serves (UTC); one per day however many jobs race to create it.
    valid_on    date NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- GDPR export bundles (policy §5).
CREATE TABLE export_requests (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'ready', 'failed', 'expired')),
    object_key    text,
    byte_size     bigint,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    expires_at    timestamptz
);
-- At most one export in progress per user.
CREATE UNIQUE INDEX export_requests_one_running ON export_requests (user_id) WHERE status IN ('pending', 'running');

-- Privacy policy versions and the once-per-user notice of each (policy §9).
CREATE TABLE policy_versions (
    version       text PRIMARY KEY,
    published_at  timestamptz NOT NULL DEFAULT now(),
    effective_at  timestamptz NOT NULL,
    summary       text NOT NULL,
    CHECK (effective_at >= published_at + interval '30 days')
);

-- Every e-mail the system sends goes through here; a job delivers each row.
CREATE TABLE email_outbox (
    id              uuid PRIMARY KEY,
    -- Deduplicates sends: e.g. 'policy_notice:<version>:<user>' is mailed once however often a job runs.
    idempotency_key text NOT NULL UNIQUE,
    user_id         uuid REFERENCES users (id) ON DELETE CASCADE,
    to_address      text NOT NULL,
    template        text NOT NULL,
    subject         text NOT NULL,
    body_text       text NOT NULL,
    body_html       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text
);
CREATE INDEX email_outbox_unsent_idx ON email_outbox (created_at) WHERE sent_at IS NULL;

-- Fleet-wide rate limits and budgets (per e-mail address sign-ins, per-user generation rate, the kie.ai task
-- budget shared by every worker): a fixed window counter per key, updated atomically.
CREATE TABLE rate_limit_windows (
    key           text NOT NULL,
    window_start  timestamptz NOT NULL,
    count         integer NOT NULL,
    PRIMARY KEY (key, window_start)
);

-- Upstreams paused fleet-wide (kie.ai out of credits, bad key; an operator's pause).
CREATE TABLE upstream_pauses (
    upstream    text PRIMARY KEY,
    reason      text NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    -- When the automatic probe should next check whether the upstream works again.
    probe_after timestamptz
);

-- Queues an operator has paused: workers stop claiming from them until resumed.
CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL DEFAULT ''
);

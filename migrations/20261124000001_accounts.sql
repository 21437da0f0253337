-- Accounts, sign-in and sessions.
--
-- Privacy policy §1.1: we store e-mail, name and authentication tokens; no passwords exist anywhere.
-- Every secret a browser or API client holds (session id, sign-in token, API key) is stored only as its
-- SHA-256, so a database leak does not hand out working credentials.

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    -- Lower-cased on write; the unique index below makes one account per address.
    email           text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    display_name    text CHECK (length(display_name) <= 200),
    -- Google's stable subject identifier; accounts are keyed on it, never on the e-mail Google reports.
    google_sub      text UNIQUE,
    email_verified_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Set the moment a user confirms deletion: the account is unusable from then on, while the deletion job
    -- removes its data. The row itself is deleted by that job, so the address can sign up again later.
    deletion_requested_at timestamptz
);
CREATE UNIQUE INDEX users_email_key ON users (email);

-- E-mailed sign-in links and e-mail-change confirmations. Single use: consumed by one atomic UPDATE that sets
-- used_at where used_at IS NULL and expires_at > now().
CREATE TABLE sign_in_tokens (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    purpose     text NOT NULL CHECK (purpose IN ('sign_in', 'email_change')),
    email       text NOT NULL,
    user_id     uuid REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX sign_in_tokens_email_idx ON sign_in_tokens (email, created_at DESC);
CREATE INDEX sign_in_tokens_expires_idx ON sign_in_tokens (expires_at);

-- Browser sessions, for signed-in users and for no-signup trial visitors (user_id NULL).
CREATE TABLE sessions (
    id_hash             bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    user_id             uuid REFERENCES users (id) ON DELETE CASCADE,
    csrf_secret         bytea NOT NULL,
    -- Short-lived sign-in state (OIDC state, nonce, PKCE verifier), flash messages.
    data                jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    revoked_at          timestamptz
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expiry_idx ON sessions (LEAST(idle_expires_at, absolute_expires_at));

-- Keys for the JSON API. The key is shown once at creation; `prefix` (its first characters) lets a user tell
-- keys apart on the account page.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);

-- Cookie and analytics consent (policy §5, §6). Append-only history: the newest row per subject is in force.
CREATE TABLE consent_records (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       uuid REFERENCES users (id) ON DELETE CASCADE,
    session_hash  bytea,
    analytics     boolean NOT NULL,
    policy_version text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (user_id IS NOT NULL OR session_hash IS NOT NULL)
);
CREATE INDEX consent_records_user_idx ON consent_records (user_id, created_at DESC);

-- A record that an account was deleted (on request, or as a child's account) and nothing else about it.
CREATE TABLE account_deletions (
    id            uuid PRIMARY KEY,
    reason        text NOT NULL CHECK (reason IN ('user_request', 'child_account', 'operator')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);

-- Credits: one account per user and an append-only ledger. Credits move only by inserting ledger rows.
--
-- Invariants enforced here, in the database, not only in Rust:
--   * the balance never goes negative (CHECK on credit_accounts, maintained by the ledger trigger);
--   * every effect happens once: UNIQUE (kind, business_key), where business_key names its source
--     (a generation id, a Stripe checkout session, invoice, refund or dispute id);
--   * a reservation ends exactly once: at most one settle-or-refund row per reservation key;
--   * ledger rows are never updated; they are deleted only by the account-deletion job, which must say so by
--     setting `createimage2.ledger_delete = 'allowed'` in its transaction.

CREATE TABLE credit_accounts (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- Credits available to spend. Reservations are already subtracted.
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- Credits removed by a refund or chargeback that could not be clawed back because they were spent.
    -- While positive, new generations are refused (billing issue).
    shortfall   bigint NOT NULL DEFAULT 0 CHECK (shortfall >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_ledger (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN
                    ('grant', 'reserve', 'settle', 'refund', 'expire', 'clawback', 'freeze', 'release')),
    -- Signed change to the balance: grant/refund/release > 0, reserve/expire/clawback/freeze < 0, settle = 0
    -- (a settle turns a reservation into a charge; the credits already left the balance at reserve).
    amount        bigint NOT NULL,
    business_key  text NOT NULL CHECK (length(business_key) BETWEEN 1 AND 300),
    -- Free-form, non-personal context: product id, Stripe object ids, a reason.
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_ledger_effect_once UNIQUE (kind, business_key),
    CHECK (CASE kind
             WHEN 'settle' THEN amount = 0
             WHEN 'grant' THEN amount > 0
             WHEN 'refund' THEN amount > 0
             WHEN 'release' THEN amount > 0
             ELSE amount < 0
           END)
);
CREATE INDEX credit_ledger_user_idx ON credit_ledger (user_id, id DESC);
-- A reservation is resolved once: settled or refunded, never both, never twice.
CREATE UNIQUE INDEX credit_ledger_reservation_resolved_once ON credit_ledger (business_key)
    WHERE kind IN ('settle', 'refund');

CREATE FUNCTION credit_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The CHECK (balance >= 0) on credit_accounts rejects this statement, and so the ledger insert with it,
    -- when the row would overdraw the account.
    UPDATE credit_accounts
       SET balance = balance + NEW.amount, updated_at = now()
     WHERE user_id = NEW.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', NEW.user_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER credit_ledger_apply AFTER INSERT ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_apply();

CREATE FUNCTION credit_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('createimage2.ledger_delete', true) = 'allowed' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'credit_ledger is append-only (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only();

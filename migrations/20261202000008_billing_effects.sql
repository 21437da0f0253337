-- Billing effects: what each payment bought, and the refunds and disputes against it. Every effect on credits
-- is also a ledger row with a unique business key; these tables add what the ledger cannot say (how much of
-- a refund could not be clawed back because the credits were spent).

ALTER TABLE checkout_intents ADD COLUMN credits bigint CHECK (credits > 0);

ALTER TABLE payments
    ADD COLUMN kind text NOT NULL DEFAULT 'pack' CHECK (kind IN ('pack', 'plan')),
    ADD COLUMN credits bigint NOT NULL DEFAULT 0 CHECK (credits >= 0),
    -- Refunds and disputes arrive on the charge, which names its payment intent.
    ADD COLUMN stripe_payment_intent text;
CREATE UNIQUE INDEX payments_payment_intent_key ON payments (stripe_payment_intent)
    WHERE stripe_payment_intent IS NOT NULL;

CREATE TABLE payment_refunds (
    refund_id     text PRIMARY KEY,
    payment_id    uuid NOT NULL REFERENCES payments (id),
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    -- Credits the refund takes back, in proportion to the payment; `clawed_back` of them came off the balance,
    -- `shortfall` had been spent and is owed.
    credits       bigint NOT NULL CHECK (credits >= 0),
    clawed_back   bigint NOT NULL CHECK (clawed_back >= 0),
    shortfall     bigint NOT NULL CHECK (shortfall >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment_disputes (
    dispute_id    text PRIMARY KEY,
    payment_id    uuid NOT NULL REFERENCES payments (id),
    frozen        bigint NOT NULL CHECK (frozen >= 0),
    shortfall     bigint NOT NULL CHECK (shortfall >= 0),
    status        text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz
);

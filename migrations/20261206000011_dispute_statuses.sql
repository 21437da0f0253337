-- A closed dispute keeps the status Stripe closed it with: won, lost, warning_closed (an inquiry that never
-- became a chargeback) or prevented (Visa RDR). Each has its own credit effect (jobs/src/billing.rs).
ALTER TABLE payment_disputes DROP CONSTRAINT payment_disputes_status_check;
ALTER TABLE payment_disputes ADD CONSTRAINT payment_disputes_status_check
    CHECK (status IN ('open', 'won', 'lost', 'warning_closed', 'prevented'));

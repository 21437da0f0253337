-- no-transaction
-- `(user_id, id DESC)` is replaced by `(user_id, created_at DESC, id DESC)` (`…000020`), which serves its
-- other readers as well (a member's rows for an export or a deletion, the checkout notice's grant since the
-- intent).
DROP INDEX CONCURRENTLY IF EXISTS credit_ledger_user_idx;

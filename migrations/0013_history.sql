-- History: an account's transfers and entries newest first, and balances as of a past moment.
--
-- Each journal entry records the account's balance just after it (`balance_after_minor`), so an
-- entries page and a balance as of any moment are read from one entry, never summed over the
-- account's whole history.

ALTER TABLE journal_entries ADD COLUMN balance_after_minor BIGINT;

-- Existing entries get the running sum of their account's entries in entry order. The journal
-- refuses updates to anyone; this one fills a column the entries did not have.
ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_only_grow;
UPDATE journal_entries j
SET balance_after_minor = r.running
FROM (
    SELECT entry_id,
           SUM(amount_minor) OVER (PARTITION BY user_id, currency ORDER BY entry_id) AS running
    FROM journal_entries
) AS r
WHERE j.entry_id = r.entry_id;
ALTER TABLE journal_entries ENABLE TRIGGER journal_entries_only_grow;
ALTER TABLE journal_entries ALTER COLUMN balance_after_minor SET NOT NULL;
-- Users never overdraw; only the system account (user 0) goes below zero.
ALTER TABLE journal_entries
    ADD CONSTRAINT users_balance_after_not_negative CHECK (user_id = 0 OR balance_after_minor >= 0);

-- An entry's time is taken when it is written, after its transaction locked the account, so
-- one account's entries are in time order as they are in entry order (a transaction's start
-- time, the old default, is not: a transaction that waited for the lock started earlier).
ALTER TABLE journal_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();

-- `GET /accounts/{id}/entries` without a currency: a user's entries, newest first.
CREATE INDEX journal_entries_by_user ON journal_entries (user_id, entry_id);
-- `GET /accounts/{id}/balances?at=`: an account's last entry at or before a moment.
CREATE INDEX journal_entries_by_account_time ON journal_entries (user_id, currency, created_at, entry_id);

-- `GET /transfers?account=`: an account's transfers as sender and as receiver, newest first.
CREATE INDEX transfers_by_sender ON transfers (sender_id, created_at, transaction_id);
CREATE INDEX transfers_by_receiver ON transfers (receiver_id, created_at, transaction_id);

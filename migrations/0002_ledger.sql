-- The double-entry ledger. Every movement of money is a transfer with two journal entries
-- that sum to zero; deposits come from the system account (user 0, one per currency), so the
-- sum of all balances is always zero.

-- One row per transaction id: written when the settlement worker applies a transfer (or a
-- deposit is made), so the primary key is what makes applying twice impossible.
CREATE TABLE transfers (
    transaction_id UUID        PRIMARY KEY,
    kind           TEXT        NOT NULL,
    sender_id      BIGINT      NOT NULL,
    receiver_id    BIGINT      NOT NULL,
    amount_minor   BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    description    TEXT,
    status         TEXT        NOT NULL,
    reason         TEXT,
    -- when the host accepted the transfer (from the message)
    created_at     TIMESTAMPTZ NOT NULL,
    -- when the ledger applied or rejected it
    settled_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT kind_known CHECK (kind IN ('transfer', 'deposit')),
    CONSTRAINT status_known CHECK (status IN ('pending', 'completed', 'rejected')),
    CONSTRAINT rejected_has_reason CHECK ((status = 'rejected') = (reason IS NOT NULL))
);

CREATE TABLE journal_entries (
    entry_id       BIGSERIAL   PRIMARY KEY,
    transaction_id UUID        NOT NULL REFERENCES transfers (transaction_id),
    user_id        BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    -- negative for the sender, positive for the receiver
    amount_minor   BIGINT      NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, currency) REFERENCES accounts (user_id, currency),
    CONSTRAINT entry_moves_money CHECK (amount_minor <> 0)
);
CREATE INDEX journal_entries_by_transfer ON journal_entries (transaction_id);
CREATE INDEX journal_entries_by_account ON journal_entries (user_id, currency, entry_id);

-- Balances made before the ledger existed (deposits straight into accounts) become opening
-- deposits from the system account, so every balance is backed by journal entries.
CREATE TEMPORARY TABLE opening AS
SELECT gen_random_uuid() AS transaction_id, user_id, currency, balance_minor
FROM accounts
WHERE user_id > 0 AND balance_minor > 0;

INSERT INTO accounts (user_id, currency, balance_minor, version)
SELECT 0, currency, -SUM(balance_minor), 1 FROM opening GROUP BY currency
ON CONFLICT (user_id, currency) DO UPDATE
SET balance_minor = accounts.balance_minor + EXCLUDED.balance_minor, version = accounts.version + 1;

INSERT INTO transfers (transaction_id, kind, sender_id, receiver_id, amount_minor, currency, description, status, created_at)
SELECT transaction_id, 'deposit', 0, user_id, balance_minor, currency, 'opening balance', 'completed', now()
FROM opening;

INSERT INTO journal_entries (transaction_id, user_id, currency, amount_minor)
SELECT transaction_id, 0, currency, -balance_minor FROM opening
UNION ALL
SELECT transaction_id, user_id, currency, balance_minor FROM opening;

DROP TABLE opening;

-- Balances are rewritten on every settlement batch: leave room in each page so updates stay
-- on-page (HOT) and the primary key index does not bloat.
ALTER TABLE accounts SET (fillfactor = 50);

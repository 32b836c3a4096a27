-- Two-phase transfers and metadata.
--
-- A pending transfer reserves money on the ledger: the sender's `pending_debits_minor` and the
-- receiver's `pending_credits_minor` grow by its amount while neither balance moves. Posting
-- moves the posted amount (journal entries under the pending transfer's id) and releases the
-- reservation; voiding or expiry releases it. A user's spendable balance is
-- `balance_minor - pending_debits_minor`.

ALTER TABLE accounts
    ADD COLUMN pending_debits_minor BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN pending_credits_minor BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT pending_not_negative CHECK (pending_debits_minor >= 0 AND pending_credits_minor >= 0),
    -- Users never reserve more than they have; the system account makes no pending transfers.
    ADD CONSTRAINT users_reserve_within_balance CHECK (user_id = 0 OR balance_minor >= pending_debits_minor);

ALTER TABLE transfers
    ADD COLUMN metadata JSONB,
    -- A pending transfer's expiry; NULL for any other.
    ADD COLUMN expires_at TIMESTAMPTZ,
    -- How a pending transfer was resolved: the action that did it, when, and what it moved.
    ADD COLUMN resolved_by UUID,
    ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN posted_amount_minor BIGINT,
    DROP CONSTRAINT status_known,
    ADD CONSTRAINT status_known
        CHECK (status IN ('pending', 'completed', 'rejected', 'posted', 'voided', 'expired')),
    ADD CONSTRAINT two_phase_has_expiry
        CHECK ((status IN ('pending', 'posted', 'voided', 'expired')) = (expires_at IS NOT NULL)),
    ADD CONSTRAINT resolved_has_action
        CHECK ((status IN ('posted', 'voided', 'expired')) = (resolved_by IS NOT NULL)),
    ADD CONSTRAINT posted_within_amount
        CHECK ((status = 'posted') = (posted_amount_minor IS NOT NULL)
               AND (posted_amount_minor IS NULL OR posted_amount_minor BETWEEN 1 AND amount_minor));

-- The expiry pass: pending transfers by expiry.
CREATE INDEX transfers_pending_by_expiry ON transfers (expires_at) WHERE status = 'pending';

-- The one action accepted for each pending transfer (post, void or expire). The API inserts it
-- only while the transfer is pending and unexpired, before publishing the action's message; the
-- primary key makes a second action a conflict, and settlement applies only the action recorded
-- here, so a message on the log that names another action moves nothing.
CREATE TABLE transfer_actions (
    transaction_id UUID        PRIMARY KEY REFERENCES transfers (transaction_id),
    action_id      UUID        NOT NULL UNIQUE,
    action         TEXT        NOT NULL CHECK (action IN ('post', 'void', 'expire')),
    -- post: the amount posted; void and expire: the amount released
    amount_minor   BIGINT      NOT NULL CHECK (amount_minor > 0),
    -- when the host accepted the action
    created_at_ms  BIGINT      NOT NULL
);

-- Transfers accepted while Redis could not be reached: without a Redis hold there is no Redis
-- pending record either, so the host writes this row before producing, and
-- `GET /transfers/{id}` answers `pending` from it until settlement deletes it in the same
-- transaction that applies the transfer.
CREATE TABLE pending_transfers (
    transaction_id UUID        PRIMARY KEY,
    sender_id      BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    amount_minor   BIGINT      NOT NULL,
    -- the transfer-log message, as produced
    message        BYTEA       NOT NULL,
    accepted_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The reconciler looks for old rows.
CREATE INDEX pending_transfers_accepted_at ON pending_transfers (accepted_at);

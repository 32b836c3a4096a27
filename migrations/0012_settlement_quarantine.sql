-- Transfer-log messages settlement cannot apply: not a transfer (not JSON, the wrong shape) or
-- data the ledger refuses. Each is kept whole, written in the same transaction that moves
-- settlement's position past it, so one bad message never holds a partition back and is never
-- lost. An operator reads them (`transferd quarantine list`) and re-drives one once its cause
-- is fixed (`transferd quarantine retry`).
CREATE TABLE settlement_quarantine (
    quarantine_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic            TEXT        NOT NULL,
    log_generation   BIGINT      NOT NULL,
    partition        INT         NOT NULL,
    log_offset       BIGINT      NOT NULL,
    -- the message as the log holds it
    payload          BYTEA       NOT NULL,
    error            TEXT        NOT NULL,
    -- what could be read of it: the transfer's id and parties, for `GET /transfers/{id}`
    -- (rejected, reason unprocessable) and for releasing its hold
    transaction_id   UUID,
    sender_id        BIGINT,
    receiver_id      BIGINT,
    amount_minor     BIGINT,
    currency         TEXT,
    quarantined_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- set once the message was written to the dead-letter topic
    dead_lettered_at TIMESTAMPTZ,
    -- set when an operator re-drove it and the ledger applied it
    retried_at       TIMESTAMPTZ,
    CONSTRAINT one_row_per_message UNIQUE (topic, log_generation, partition, log_offset)
);
CREATE INDEX settlement_quarantine_by_transaction ON settlement_quarantine (transaction_id)
    WHERE transaction_id IS NOT NULL;

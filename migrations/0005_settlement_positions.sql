-- Where settlement stands in the transfer log, kept in the ledger itself: each batch's
-- ledger writes and the position after it commit in one transaction, so a batch is applied
-- exactly once whoever settles it next, and no consumer-group coordinator is needed to hand
-- a dead worker's partitions over (the settling worker holds a PostgreSQL advisory lock).
CREATE TABLE settlement_positions (
    -- the broker's (physical) topic name
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    -- the offset of the next message to settle
    next_offset BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition),
    CONSTRAINT partition_valid CHECK (partition >= 0),
    CONSTRAINT offset_valid CHECK (next_offset >= 0)
);

-- Settled transfers whose after-commit effects (balances into the cache, holds released,
-- events published) may not have run yet: written in the settlement transaction, deleted once
-- the effects are done. A worker that takes over runs what it finds here first.
CREATE TABLE settlement_effects (
    transaction_id UUID        PRIMARY KEY REFERENCES transfers (transaction_id),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

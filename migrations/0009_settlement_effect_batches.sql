-- A settled batch whose after-commit effects (balances into the cache, holds released, the
-- batch's event published) may not have run yet: one row per batch, written in the settlement
-- transaction and deleted once the effects are done, in place of a row per transfer (which
-- cost every transfer an insert, a foreign-key check, a delete and their index entries).
-- A worker that takes over runs the batches it finds here first, oldest first.
CREATE TABLE settlement_effect_batches (
    batch_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- distinct transfers, in the batch's message order; every one is in `transfers`
    transaction_ids UUID[]      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- TRANSFERD_SETTLEMENT_BATCH is at most 10,000 messages
    CONSTRAINT batch_size CHECK (cardinality(transaction_ids) BETWEEN 1 AND 10000)
);

-- What a worker of the previous version left outstanding becomes batches of the same bound.
INSERT INTO settlement_effect_batches (transaction_ids, created_at)
SELECT array_agg(transaction_id ORDER BY created_at, transaction_id), min(created_at)
FROM (
    SELECT transaction_id, created_at,
           (row_number() OVER (ORDER BY created_at, transaction_id) - 1) / 10000 AS chunk
    FROM settlement_effects
) AS outstanding
GROUP BY chunk
ORDER BY chunk;

DROP TABLE settlement_effects;

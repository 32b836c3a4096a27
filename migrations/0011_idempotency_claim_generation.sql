-- The claim generation of an idempotency key: 0 for its first request, one more each time a
-- retry takes the key over. An attempt acts on its key (publishes, releases a hold, stores or
-- gives up its answer) only while the generation is still the one it claimed, so an attempt
-- that outlived its lease cannot act for the retry that took the key from it.
ALTER TABLE idempotency_keys ADD COLUMN claim_generation BIGINT NOT NULL DEFAULT 0;

-- Idempotency keys (`Idempotency-Key` on POST /transfers and POST /admin/deposits): a key,
-- scoped to the caller, names one transaction id for good, so a retry of a request whose
-- outcome was unknown republishes the same transaction id and settlement applies it once.
-- A finished request's answer is kept and replayed. Rows are kept at least 24 hours
-- (TRANSFERD_IDEMPOTENCY_RETENTION_HOURS); the hold reconciler deletes older ones.
CREATE TABLE idempotency_keys (
    -- who may use the key: the caller's user id, "admin", or "anonymous"
    scope           TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    -- SHA-256 of the route and the request body as parsed JSON
    request_hash    BYTEA       NOT NULL,
    transaction_id  UUID        NOT NULL,
    -- the final answer, once there is one (NULL while in flight or after an unfinished try)
    response_status SMALLINT,
    response_body   JSONB,
    -- a request holds the key until then; after it, a retry may take the key over
    locked_until    TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key),
    CONSTRAINT key_length CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT answer_whole CHECK ((response_status IS NULL) = (response_body IS NULL))
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

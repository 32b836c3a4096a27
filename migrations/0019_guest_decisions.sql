-- The provenance of each transfer the guest decided: the decision as a conformance vector
-- (context, request, the answers the imports gave, and the outcome: every import call with
-- the exact message bytes, and the result), so it can be replayed under the version that made
-- it (`transferd replay`) and a candidate version can be backtested on it. Written off the
-- request path in batches; the first decision of a transaction id wins (a retry under the
-- same idempotency key decides again with the same id). Rows older than the retention are
-- deleted by serve.
CREATE TABLE guest_decisions (
    transaction_id UUID        PRIMARY KEY,
    decided_at     TIMESTAMPTZ NOT NULL,
    guest_version  TEXT        NOT NULL,
    wit_package    TEXT        NOT NULL,
    -- `json`, not `jsonb`: the text as written, since the order of a request's metadata
    -- entries is part of what the guest saw.
    vector         JSON        NOT NULL
);

CREATE INDEX guest_decisions_decided_at ON guest_decisions (decided_at);

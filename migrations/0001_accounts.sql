-- Accounts: one per (user id, currency), balances in integer minor units.
-- `version` grows by one on every change, so a cache can tell an older balance from a newer one.
CREATE TABLE accounts (
    user_id       BIGINT      NOT NULL,
    currency      TEXT        NOT NULL,
    balance_minor BIGINT      NOT NULL DEFAULT 0,
    version       BIGINT      NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, currency),
    CONSTRAINT currency_is_iso_4217_shaped CHECK (currency ~ '^[A-Z]{3}$'),
    -- user 0 is reserved for the system account that funds deposits; only it may go negative.
    CONSTRAINT user_id_not_negative CHECK (user_id >= 0),
    CONSTRAINT users_never_overdraw CHECK (user_id = 0 OR balance_minor >= 0),
    CONSTRAINT version_not_negative CHECK (version >= 0)
);

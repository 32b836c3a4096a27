-- Per-account spending limits, set by an operator (PUT /admin/accounts/{user_id}/limits) and
-- enforced by the guest, which reads them through WIT 0.3.0's `account-info`. Amounts in the
-- currency's minor units; NULL: no such limit. A row may exist before its account does.
CREATE TABLE account_limits (
    user_id          BIGINT      NOT NULL,
    currency         TEXT        NOT NULL,
    single_max_minor BIGINT,
    daily_max_minor  BIGINT,
    -- How far below zero the account may go. The ledger lets no user's balance go below zero
    -- (accounts.users_never_overdraw), so only 0 is accepted until it does.
    overdraft_minor  BIGINT      NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, currency),
    CONSTRAINT limits_currency_is_iso_4217_shaped CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT limits_user_id_positive CHECK (user_id > 0),
    CONSTRAINT limits_not_negative CHECK (
        (single_max_minor IS NULL OR single_max_minor >= 0)
        AND (daily_max_minor IS NULL OR daily_max_minor >= 0)),
    CONSTRAINT no_overdraft_yet CHECK (overdraft_minor = 0)
);

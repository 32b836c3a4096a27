-- The journal's references, checked once per statement instead of once per row.
--
-- The two foreign keys of `journal_entries` ran a trigger per inserted row, each an executor
-- started and stopped for a one-row lookup: a third of the settlement connection's CPU under
-- load, two entries per transfer. The same guarantees, set-based:
--
-- * every entry an INSERT adds names a transfer and an account the ledger has: one query over
--   the statement's new rows, after it;
-- * what the foreign keys also gave, that a referenced row never goes away or changes its
--   key: transfers and accounts are never deleted, truncated or re-keyed, and the journal
--   only grows (no UPDATE, DELETE or TRUNCATE of an entry). Nothing in transferd does any of
--   these; the triggers below refuse them to anyone.

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_transaction_id_fkey;
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_user_id_currency_fkey;

CREATE FUNCTION journal_entries_check_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing_transfers BIGINT;
    missing_accounts BIGINT;
BEGIN
    SELECT count(*) FILTER (WHERE t.transaction_id IS NULL),
           count(*) FILTER (WHERE a.user_id IS NULL)
    INTO missing_transfers, missing_accounts
    FROM new_entries e
    LEFT JOIN transfers t ON t.transaction_id = e.transaction_id
    LEFT JOIN accounts a ON a.user_id = e.user_id AND a.currency = e.currency;
    IF missing_transfers > 0 THEN
        RAISE EXCEPTION '% journal entries name a transfer the ledger does not have', missing_transfers
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF missing_accounts > 0 THEN
        RAISE EXCEPTION '% journal entries name an account the ledger does not have', missing_accounts
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER journal_entries_references
AFTER INSERT ON journal_entries
REFERENCING NEW TABLE AS new_entries
FOR EACH STATEMENT EXECUTE FUNCTION journal_entries_check_references();

CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% of % refused: the ledger keeps every transfer, account and entry it wrote',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

-- Statement-level and BEFORE: a refused statement changes nothing. `UPDATE OF` fires only for
-- statements that set those columns (settlement's balance updates do not).
CREATE TRIGGER transfers_keep_rows
BEFORE DELETE OR TRUNCATE OR UPDATE OF transaction_id ON transfers
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TRIGGER accounts_keep_rows
BEFORE DELETE OR TRUNCATE OR UPDATE OF user_id, currency ON accounts
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TRIGGER journal_entries_only_grow
BEFORE DELETE OR TRUNCATE OR UPDATE ON journal_entries
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

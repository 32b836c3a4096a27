-- The journal, hash-chained: every transaction that writes journal entries (a settlement batch,
-- a deposit) is one journal batch, and a batch's hash covers its entries and the hash of the
-- batch before it, so an entry edited, removed or added behind the ledger's back breaks the
-- chain where it happened (`transferd ledger verify` walks it).
--
-- A batch's hash is sha256(previous || e1 || e2 || ...): `previous` is the hash of the batch
-- before (32 zero bytes for the first), and each entry of the batch, in entry_id order, is
-- encoded as `journal_entry_bytes` below says. host/src/stores/journal_chain.rs writes the
-- same bytes; a test checks that both agree.

-- The canonical encoding of one entry: entry_id, transaction_id (16 bytes), user_id,
-- amount_minor, balance_after_minor, created_at in microseconds since the Unix epoch (all
-- integers 8 bytes, big-endian), then the currency's UTF-8 length (4 bytes, big-endian) and
-- its bytes.
CREATE FUNCTION journal_entry_bytes(
    entry_id BIGINT, transaction_id UUID, user_id BIGINT, amount_minor BIGINT,
    balance_after_minor BIGINT, created_at TIMESTAMPTZ, currency TEXT
) RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT int8send(entry_id) || uuid_send(transaction_id) || int8send(user_id)
        || int8send(amount_minor) || int8send(balance_after_minor)
        || int8send((extract(epoch FROM created_at) * 1000000)::bigint)
        || int4send(octet_length(convert_to(currency, 'UTF8'))) || convert_to(currency, 'UTF8')
$$;

CREATE TABLE journal_batches (
    -- 1, 2, 3, ... in commit order, with no gaps: a missing number is a batch removed.
    batch_id      BIGINT      PRIMARY KEY,
    previous_hash BYTEA,
    hash          BYTEA       NOT NULL,
    entry_count   BIGINT      NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT only_the_first_has_no_previous CHECK ((batch_id = 1) = (previous_hash IS NULL)),
    CONSTRAINT hashes_are_sha256 CHECK (
        octet_length(hash) = 32 AND coalesce(octet_length(previous_hash), 32) = 32),
    CONSTRAINT batches_hold_entries CHECK (entry_count > 0)
);

-- The last sealed batch: its row lock is what orders batches (every writer updates it after
-- locking its accounts, and holds it to its commit), and it says where the chain ends, so a
-- verifier notices batches removed from the end.
CREATE TABLE journal_chain_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT true,
    -- 0 before the first batch
    batch_id BIGINT  NOT NULL,
    hash     BYTEA,
    CONSTRAINT one_head CHECK (only_row)
);

ALTER TABLE journal_entries ADD COLUMN journal_batch BIGINT;

-- The entries written before the chain become its first batches, 10,000 entries each in
-- entry_id order, so no single hash input grows with the ledger. Setting their batch is the
-- one UPDATE of entries there is, made with the trigger that refuses it switched off inside this
-- migration's transaction only.
ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_only_grow;
UPDATE journal_entries e SET journal_batch = g.batch
FROM (SELECT entry_id, (row_number() OVER (ORDER BY entry_id) - 1) / 10000 + 1 AS batch
      FROM journal_entries) g
WHERE e.entry_id = g.entry_id;
ALTER TABLE journal_entries ENABLE TRIGGER journal_entries_only_grow;

ALTER TABLE journal_entries ALTER COLUMN journal_batch SET NOT NULL;
CREATE INDEX journal_entries_by_batch ON journal_entries (journal_batch, entry_id);

DO $$
DECLARE
    batch BIGINT;
    previous BYTEA;
    last_batch BIGINT := 0;
BEGIN
    FOR batch IN SELECT DISTINCT journal_batch FROM journal_entries ORDER BY journal_batch LOOP
        INSERT INTO journal_batches (batch_id, previous_hash, hash, entry_count)
        SELECT batch, previous,
               sha256(coalesce(previous, decode(repeat('00', 32), 'hex'))
                      || string_agg(journal_entry_bytes(entry_id, transaction_id, user_id,
                                                        amount_minor, balance_after_minor,
                                                        created_at, currency),
                                    ''::bytea ORDER BY entry_id)),
               count(*)
        FROM journal_entries WHERE journal_batch = batch
        RETURNING hash INTO previous;
        last_batch := batch;
    END LOOP;
    INSERT INTO journal_chain_head (batch_id, hash) VALUES (last_batch, previous);
END
$$;

-- Sealed batches and the head's row are kept as the entries are (migration 0010); the head's
-- columns are updated by every batch.
CREATE TRIGGER journal_batches_only_grow
BEFORE DELETE OR TRUNCATE OR UPDATE ON journal_batches
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TRIGGER journal_chain_head_kept
BEFORE DELETE OR TRUNCATE ON journal_chain_head
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

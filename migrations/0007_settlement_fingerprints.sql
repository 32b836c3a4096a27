-- The SHA-256 of the message just before each position (offset next_offset - 1): a worker
-- reads that message back before it settles from the position, so it can tell the log is the
-- one the position was taken in. A topic deleted and created again, or a broker that lost its
-- log, numbers a new log from 0, and starting it at the old position would skip messages.
-- NULL: not known (nothing settled in the partition since this column came).
ALTER TABLE settlement_positions ADD COLUMN last_payload_sha256 BYTEA;

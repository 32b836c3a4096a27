-- A topic that is created again (deleted, or lost with a broker's log) numbers its messages
-- from 0: whoever creates a topic that settlement has positions in first sets them back to 0
-- and moves the topic's generation on. A worker reads the generation before its positions
-- and names it with every batch; a batch read in an earlier generation is refused, so a
-- worker still reading the old log cannot move the position of the new one.
-- Every row of a topic carries the same generation.
ALTER TABLE settlement_positions ADD COLUMN log_generation BIGINT NOT NULL DEFAULT 0;

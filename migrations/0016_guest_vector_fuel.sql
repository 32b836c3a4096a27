-- The most fuel one invariant case used when the version was uploaded: how close it runs to
-- the fuel budget. NULL for a version a replica adopted from its guest file at start-up,
-- which ran no upload check.
ALTER TABLE guest_versions ADD COLUMN max_vector_fuel BIGINT
    CONSTRAINT max_vector_fuel_not_negative CHECK (max_vector_fuel >= 0);

-- The guest registry: every uploaded transfer-logic component, and who activated what when.
-- The active version is the one named by the latest activation.
CREATE TABLE guest_versions (
    version     TEXT        PRIMARY KEY,  -- sha256 of the bytes, hex
    bytes       BYTEA       NOT NULL,
    size_bytes  BIGINT      NOT NULL,
    uploaded_by TEXT        NOT NULL,
    uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    note        TEXT,
    CONSTRAINT version_is_sha256 CHECK (version ~ '^[0-9a-f]{64}$'),
    CONSTRAINT size_matches CHECK (size_bytes = octet_length(bytes))
);

CREATE TABLE guest_activations (
    activation_id BIGSERIAL   PRIMARY KEY,
    version       TEXT        NOT NULL REFERENCES guest_versions (version),
    action        TEXT        NOT NULL,
    activated_by  TEXT        NOT NULL,
    activated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT action_known CHECK (action IN ('activate', 'rollback'))
);

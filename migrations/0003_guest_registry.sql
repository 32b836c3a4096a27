-- The guest registry: every uploaded transfer-logic component, and who activated what when.
-- The active version is the one named by the latest 'activate' or 'rollback'. The candidate
-- (served to a share of requests as a canary, or run beside the active one in shadow) is the
-- one named by the latest row of any action, if that row is a 'canary' or 'shadow'.
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
    -- the share of requests a canary serves
    percent       SMALLINT,
    activated_by  TEXT        NOT NULL,
    activated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT action_known CHECK (action IN ('activate', 'rollback', 'canary', 'shadow', 'end-candidate')),
    CONSTRAINT canary_has_percent CHECK ((action = 'canary') = (percent IS NOT NULL)),
    CONSTRAINT percent_in_range CHECK (percent BETWEEN 0 AND 100)
);

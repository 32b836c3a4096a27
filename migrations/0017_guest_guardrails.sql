-- Guarded canaries and shadows. A 'canary' or 'shadow' row carries the limits each replica
-- judges the candidate by (`guardrails`, NULL: none) and, for a canary, how requests are
-- assigned to it (`assign`: by transaction id, or by sender account so one account sees one
-- version). An 'end-candidate' row written by a replica whose guardrail was crossed carries
-- the reason (which guardrail, what was observed, the limit, the replica).
ALTER TABLE guest_activations
    ADD COLUMN assign     TEXT,
    ADD COLUMN guardrails JSONB,
    ADD COLUMN reason     JSONB,
    ADD CONSTRAINT assign_known CHECK (assign IN ('transaction', 'sender')),
    ADD CONSTRAINT assign_only_on_canary CHECK (assign IS NULL OR action = 'canary'),
    ADD CONSTRAINT guardrails_only_on_candidates CHECK (guardrails IS NULL OR action IN ('canary', 'shadow')),
    ADD CONSTRAINT reason_only_on_end CHECK (reason IS NULL OR action = 'end-candidate');

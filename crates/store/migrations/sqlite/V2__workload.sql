ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE federation_rules (
    name TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    jwks_url TEXT,
    jwks TEXT,
    audience TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_match TEXT NOT NULL,
    claims TEXT NOT NULL,
    agent TEXT NOT NULL REFERENCES agents(name),
    max_ttl_secs INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX federation_rules_issuer ON federation_rules(issuer);

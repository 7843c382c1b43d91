ALTER TABLE owners ADD COLUMN password_hash TEXT;
ALTER TABLE agents ADD COLUMN may_impersonate BOOLEAN NOT NULL DEFAULT FALSE;
-- Clients may now exist without an agent (applications a person signs in to).
ALTER TABLE clients ALTER COLUMN agent DROP NOT NULL;
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '[]';
ALTER TABLE clients ADD COLUMN grant_types TEXT NOT NULL DEFAULT '[]';
ALTER TABLE clients ADD COLUMN client_name TEXT;
ALTER TABLE clients ADD COLUMN metadata TEXT;
UPDATE clients SET grant_types =
    '["client_credentials","urn:ietf:params:oauth:grant-type:jwt-bearer","urn:ietf:params:oauth:grant-type:token-exchange"]';
CREATE TABLE consents (
    owner TEXT NOT NULL REFERENCES owners(name) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (owner, client_id, resource)
);
CREATE TABLE auth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT
);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    issued_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE trusted_idps (
    name TEXT PRIMARY KEY,
    issuer TEXT NOT NULL UNIQUE,
    jwks_url TEXT,
    jwks TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE delegation_targets (
    agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
    audience TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    remote_client_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (agent, audience, resource)
);
